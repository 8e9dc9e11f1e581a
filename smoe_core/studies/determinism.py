"""What our numbers depend on besides the code and the seed: the build of the compiled kernels, PyTorch's CPU
kernels and glibc's libm; and what the reproducible build costs.

Runs repeated on one machine are bit-identical; on another CPU they are not (issue 12: AS-SMoE initializations
and every global optimization moved, up to 0.78 dB). The sources of the difference:

- **Our C++ kernels** (:mod:`smoe_core.render.cpu`): the fast build (``-march=native -ffast-math``) generates
  different arithmetic for different CPUs (vector width of the reassociated sums, FMA contraction, libmvec's vector
  exp). The reproducible build (``SMOE_BUILD=reproducible``) does not: baseline instruction set, IEEE operations
  in source order, its own exp.
- **glibc's libm**: ``expf``, ``exp`` and ``log`` (not ``logf``) have FMA variants that glibc picks at load time
  on CPUs with FMA and AVX2; they round differently from the SSE2 variants for a few inputs (``expf``: one float
  of the 1.1e9 in [-88, 0] differs by one ulp, measured with ``GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-FMA``).
  The reproducible build therefore computes its float exp itself (``exp_portable`` in
  raw_kernels/smoe_tile_cpu.cpp) and calls libm only for ``logf`` (the same in both variants) and, in the
  float64 path that only gradient checks use, ``exp``.
- **PyTorch's CPU kernels**: ATen compiles its vectorized kernels for several instruction sets and picks one per
  CPU (``torch.backends.cpu.get_cpu_capability()``; ``ATEN_CPU_CAPABILITY=default|avx2|avx512`` overrides);
  the capabilities differ in their vector exp / log (SLEEF) and FMA use, and AVX-512 in its reduction width.
  MKL (matrix products: the dense renderer, K-Means) dispatches per CPU too (``MKL_CBWR`` pins a code path),
  and PyTorch splits reductions by its thread count.

:func:`fingerprint` runs a small piece of the pipeline (a grid-initialized global optimization on the tiled
renderer, an AS-SMoE initialization) and hashes every bit of its output; :func:`agreement_table` runs
fingerprints in fresh processes under given environments (build mode, ``ATEN_CPU_CAPABILITY``,
``GLIBC_TUNABLES``, ``MKL_CBWR``; the fast build can also be compiled for another ``-march``, standing in for
another CPU), and :func:`agreement_matrix` / :func:`agreement_groups` say which configurations give identical
bits.
:func:`build_speed_table` measures the cost of the reproducible build with ``time.process_time`` on one thread
(in fresh processes, interleaved, median of the repeats: CPU time, not wall time, because the machine may be
shared). Command line: ``python -m smoe_core.studies.determinism agreement --out
results/determinism/agreement.csv`` (also writes ``agreement_groups.csv``) and ``... speed-table --out
results/determinism/build_speed.csv``; README "Reproducible builds" has the measured tables.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..render.build import NO_FMA_LIBM, REPRODUCIBLE_ENV
from .results import atomic_write_csv

#: what :func:`fingerprint` can run
KINDS = ("fit", "as_smoe")
#: environment variables that change the arithmetic (recorded with every fingerprint)
#: (the variables the reproducible environment pins)
NUMERIC_ENV = tuple(REPRODUCIBLE_ENV)
#: the marker line of a child's JSON answer
MARKER = "SMOE_DETERMINISM "


def digest(*arrays) -> str:
    """sha256 (first 16 hex digits) of the bytes of ``arrays`` (their dtypes and shapes included)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def model_digest(model, history: pd.DataFrame | None = None) -> str:
    """:func:`digest` of every field of ``model`` (and of the loss column of ``history``)."""
    m = model.numpy()
    loss = None if history is None or not len(history) else history["loss"].to_numpy(np.float64)
    return digest(m.mu, m.chol, m.pi, m.experts, m.slopes, loss)


def environment() -> dict:
    """What this process computes with: the build mode, PyTorch's CPU capability
    (:func:`smoe_core.studies.results.numeric_environment`), the numeric environment variables, torch's thread
    count and the CPU model."""
    import torch

    from .results import cpu_identity, numeric_environment

    cpu = cpu_identity().get("model_name") or "unknown"
    return dict(**numeric_environment(), torch_threads=torch.get_num_threads(), cpu_model=cpu,
                **{k.lower(): os.environ.get(k, "") for k in NUMERIC_ENV})


def fingerprint(kind: str, *, image: str = "peppers", crop: int = 256, kernels: int = 1024, iters: int = 200,
                d_th: float = 40, epochs: int = 300, seed: int = 0) -> dict:
    """Runs one piece of the pipeline and hashes its output bit for bit.

    ``"fit"``: the grid initialization of ``kernels`` kernels on the centred ``crop`` of ``image``, then
    :func:`smoe_core.fit` for ``iters`` iterations on the tiled renderer (the CPU build in force; no early stop)
    with the quick preset's sparsity and pi learning rate (kernels are pruned on the way). ``"as_smoe"``: the
    AS-SMoE initialization of that crop (MDBSCAN at ``d_th``, Algorithm 1 for ``epochs`` epochs, export).
    Returns kind, digest (:func:`model_digest`), psnr_db, kernels, iterations and cpu_seconds."""
    from ..init import get_initializer
    from ..metrics import psnr
    from ..render import render
    from ..training import fit
    from .common import load_case

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    img = load_case(image, crop)
    t0 = time.process_time()
    if kind == "fit":
        model, _ = get_initializer("grid")(img, kernels)
        model, hist = fit(img, model, iters=iters, tol=0.0, sparsity=1e-6, lr={"pi": 1e-2}, seed=seed,
                          backend="tiled", progress=False)
        iterations = len(hist)
    else:
        model, _ = get_initializer("as_smoe")(img, None, d_th=d_th, epochs=epochs, seed=seed, progress=False)
        hist, iterations = None, 0
    seconds = time.process_time() - t0
    return dict(kind=kind, digest=model_digest(model, hist), psnr_db=psnr(render(model), img),
                kernels=model.n_kernels, iterations=iterations, cpu_seconds=seconds)


def _child_env(env: dict | None, threads: int = 1) -> dict:
    out = {k: v for k, v in os.environ.items() if k not in NUMERIC_ENV}
    out.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out.update({k: str(v) for k, v in (env or {}).items() if v is not None and v != ""})
    package_parent = str(Path(__file__).resolve().parents[2])  # the child imports this very smoe_core
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    return out


def run_child(command: list[str], env: dict | None = None, *, threads: int = 1, timeout: float = 3600) -> dict:
    """Runs ``python -m smoe_core.studies.determinism <command>`` in a fresh process with ``env`` over this
    process's environment (the numeric variables of :data:`NUMERIC_ENV` cleared first) and returns its JSON
    answer."""
    proc = subprocess.run([sys.executable, "-m", "smoe_core.studies.determinism", *command], capture_output=True,
                          text=True, env=_child_env(env, threads), timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} under {env} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(lines[-1][len(MARKER):])


def default_configs() -> dict[str, tuple[dict, str | None, int]]:
    """name -> (environment, -march of the fast build or None, threads): both builds under each of PyTorch's CPU
    capabilities this CPU has; the reproducible environment (:data:`smoe_core.render.build.REPRODUCIBLE_ENV`)
    alone, with one of its pins released each (libm's own FMA variants instead of SSE2, numpy's AVX2 / AVX-512
    loops, OpenBLAS's SkylakeX kernels as on an Intel AVX-512 CPU) and on two threads; the
    reproducible build under the top capability with libm's SSE2 variants; and the fast build compiled for two
    other x86-64 targets (AVX2 + FMA, ``x86-64-v3``; AVX-512, ``skylake-avx512``): another CPU's
    ``-march=native``; and the reproducible build's source compiled with ``-march=native`` (whether its values
    depend on the instruction set at all)."""
    import torch

    caps = ["default", "avx2", "avx512"]
    top = torch.backends.cpu.get_cpu_capability().lower()
    caps = caps[:caps.index(top) + 1] if top in caps else ["default"]
    out: dict[str, tuple[dict, str | None, int]] = {}
    for build in ("fast", "reproducible"):
        for cap in caps:
            out[f"{build}/{cap}"] = (dict(SMOE_BUILD=build, ATEN_CPU_CAPABILITY=cap), None, 1)
    out["reproducible env"] = (dict(REPRODUCIBLE_ENV), None, 1)
    out["reproducible env/libm-fma"] = (dict(REPRODUCIBLE_ENV, GLIBC_TUNABLES=""), None, 1)
    out["reproducible env/numpy-simd"] = (dict(REPRODUCIBLE_ENV, NPY_ENABLE_CPU_FEATURES=""), None, 1)
    out["reproducible env/openblas-skylakex"] = (dict(REPRODUCIBLE_ENV, OPENBLAS_CORETYPE="SkylakeX"), None, 1)
    out["reproducible env/2 threads"] = (dict(REPRODUCIBLE_ENV, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2"), None, 2)
    out[f"reproducible/{top}/libm-sse2"] = (dict(SMOE_BUILD="reproducible", ATEN_CPU_CAPABILITY=top,
                                                GLIBC_TUNABLES=NO_FMA_LIBM), None, 1)
    for march in ("x86-64-v3", "skylake-avx512"):
        out[f"fast(-march={march})/{top}"] = (dict(SMOE_BUILD="fast", ATEN_CPU_CAPABILITY=top), march, 1)
    out["reproducible env/compiled -march=native"] = (dict(REPRODUCIBLE_ENV), "native", 1)
    return out


def agreement_table(configs: dict | None = None, kinds=KINDS, **fingerprint_kw) -> pd.DataFrame:
    """One row per (configuration, kind): the fingerprint (:func:`fingerprint`) of a fresh one-thread process
    under the configuration's environment (:func:`default_configs`), with that process's :func:`environment`."""
    configs = default_configs() if configs is None else configs
    rows = []
    for name, (env, march, threads) in configs.items():
        cmd = ["fingerprint", *kinds, "--kw", json.dumps(fingerprint_kw)] + (["--march", march] if march else [])
        ans = run_child(cmd, env, threads=threads)
        for fp in ans["fingerprints"]:
            rows.append(dict(config=name, march=march or "", **fp, **ans["environment"]))
    return pd.DataFrame(rows)


def agreement_matrix(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Configurations x configurations: True where their ``kind`` fingerprints are bit-identical."""
    d = table[table["kind"] == kind].set_index("config")["digest"]
    return pd.DataFrame({b: {a: bool(d[a] == d[b]) for a in d.index} for b in d.index}).loc[d.index, d.index]


def agreement_groups(table: pd.DataFrame) -> pd.DataFrame:
    """Per kind, the configurations grouped by identical output (group 1 is the first configuration's)."""
    rows = []
    for kind, g in table.groupby("kind", sort=False):
        order = list(dict.fromkeys(g["digest"]))
        for dg in order:
            sub = g[g["digest"] == dg]
            rows.append(dict(kind=kind, group=order.index(dg) + 1, digest=dg, psnr_db=sub["psnr_db"].iloc[0],
                             kernels=int(sub["kernels"].iloc[0]), configs=", ".join(sub["config"])))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- speed
def time_passes(image: str = "peppers", kernels: int = 1222, passes: int = 20, fit_iters: int = 30) -> dict:
    """CPU seconds (``time.process_time``, this process, the thread count in force) of ``passes`` training passes
    (tiled render on the CPU build in force, MSE, backward) of the grid model of ``kernels`` kernels on the whole
    ``image``, and of a :func:`smoe_core.fit` of ``fit_iters`` iterations from it; each after one warm-up."""
    import torch

    from ..init import get_initializer
    from ..io import load_image
    from ..render import render
    from ..training import fit

    img = load_image(image)
    base, _ = get_initializer("grid")(img, kernels)
    target = torch.from_numpy(img)
    m = base.torch(requires_grad=True)

    def one():
        for t in m.fields().values():
            if t is not None:
                t.grad = None
        ((render(m, backend="cpu") - target) ** 2).mean().backward()

    one()
    t0 = time.process_time()
    for _ in range(passes):
        one()
    pass_s = (time.process_time() - t0) / passes
    fit(img, base, iters=2, tol=0.0, progress=False, backend="cpu")
    t0 = time.process_time()
    fit(img, base, iters=fit_iters, tol=0.0, progress=False, backend="cpu")
    fit_s = (time.process_time() - t0) / fit_iters
    return dict(pass_cpu_ms=1e3 * pass_s, fit_iteration_cpu_ms=1e3 * fit_s, kernels=base.n_kernels,
                height=img.shape[0], width=img.shape[1])


def build_speed_table(configs: dict | None = None, repeats: int = 3, **kw) -> pd.DataFrame:
    """CPU time per training pass and per fit iteration of each configuration (name -> environment; default: the
    fast build, the reproducible build alone, and the whole reproducible environment), one
    fresh one-thread process per (repeat, configuration), the configurations interleaved within each repeat;
    one row per configuration with the median over ``repeats`` and every repeat's value."""
    configs = configs or {"fast": dict(SMOE_BUILD="fast"), "reproducible build": dict(SMOE_BUILD="reproducible"),
                          "reproducible env": dict(REPRODUCIBLE_ENV)}
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    for _ in range(int(repeats)):
        for name, env in configs.items():
            runs[name].append(run_child(["speed", "--kw", json.dumps(kw)], env))
    rows = []
    for name, rs in runs.items():
        env = rs[0]["environment"]
        row = dict(config=name, build=env["build"], cpu_capability=env["cpu_capability"], repeats=len(rs),
                   kernels=rs[0]["speed"]["kernels"], size=f"{rs[0]['speed']['height']}x{rs[0]['speed']['width']}")
        for col in ("pass_cpu_ms", "fit_iteration_cpu_ms"):
            vals = [r["speed"][col] for r in rs]
            row[col] = statistics.median(vals)
            row[f"{col}_all"] = " ".join(f"{v:.2f}" for v in vals)
        rows.append(row)
    df = pd.DataFrame(rows)
    base = df.iloc[0]
    for col in ("pass_cpu_ms", "fit_iteration_cpu_ms"):
        df[f"{col.rsplit('_', 2)[0]}_vs_{base['config']}"] = df[col] / base[col]
    return df


def with_provenance(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the package version, git commit and date of this run on every row."""
    import datetime as dt

    from ..version import __version__
    from .results import git_commit

    return df.assign(package_version=__version__, git_commit=git_commit(),
                     date=dt.datetime.now().isoformat(timespec="seconds"))


# ---------------------------------------------------------------------- command line (the children)
def _use_march(march: str) -> None:
    """Compiles this process's builds for ``-march=<march>`` (the fast build instead of ``native``: another CPU's
    native build; the reproducible build instead of the baseline: the same source for another instruction set),
    each under its own cache key (the flags are part of it)."""
    from ..render import cpu

    cpu.FAST_FLAGS = [f"-march={march}" if f == "-march=native" else f for f in cpu.FAST_FLAGS]
    cpu.REPRODUCIBLE_FLAGS = cpu.REPRODUCIBLE_FLAGS + [f"-march={march}"]  # the last -march wins


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m smoe_core.studies.determinism", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fingerprint", help="(child) print the fingerprints of KINDS as JSON")
    f.add_argument("kinds", nargs="+", choices=KINDS)
    f.add_argument("--kw", default="{}", help="keyword arguments of fingerprint() as JSON")
    f.add_argument("--march", default=None, help="compile the fast build for this -march instead of native")
    s = sub.add_parser("speed", help="(child) print time_passes() as JSON")
    s.add_argument("--kw", default="{}")
    a = sub.add_parser("agreement", help="the agreement table of default_configs(), written to --out")
    a.add_argument("--out", required=True)
    b = sub.add_parser("speed-table", help="build_speed_table(), written to --out")
    b.add_argument("--out", required=True)
    b.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.cmd == "fingerprint":
        if args.march:
            _use_march(args.march)
        kw = json.loads(args.kw)
        fps = [fingerprint(k, **kw) for k in args.kinds]
        print(MARKER + json.dumps(dict(fingerprints=fps, environment=environment())))
    elif args.cmd == "speed":
        print(MARKER + json.dumps(dict(speed=time_passes(**json.loads(args.kw)), environment=environment())))
    elif args.cmd == "agreement":
        df = with_provenance(agreement_table())
        atomic_write_csv(df, Path(args.out))
        groups = with_provenance(agreement_groups(df))
        atomic_write_csv(groups, Path(args.out).with_name(Path(args.out).stem + "_groups.csv"))
        print(groups.drop(columns=["package_version", "git_commit", "date"]).to_string(index=False))
    else:
        df = with_provenance(build_speed_table(repeats=args.repeats))
        atomic_write_csv(df, Path(args.out))
        print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
