"""The two builds of the compiled tiled renderer (smoe_core.render.build, smoe_core.render.cpu): which flags each
mode gets, that their libraries never share a cache entry, that the reproducible build computes the tiled renderer
(forward and backward against the pure-PyTorch reference; its own exp against float64 numpy), that its values do
not depend on the instruction set it is compiled for, and that runs record the build they used."""
import os

import numpy as np
import pytest
import torch

from smoe_core import render
from smoe_core.render import build, cpu
from tests.conftest import random_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: flags that let the compiler change computed values (reassociate, contract, assume no NaN / inf, approximate)
VALUE_CHANGING = ("-ffast-math", "-Ofast", "-funsafe-math-optimizations", "-fassociative-math",
                  "-freciprocal-math", "-ffinite-math-only", "-ffp-contract=fast", "-march=native")


@pytest.fixture
def reproducible(monkeypatch):
    monkeypatch.setenv("SMOE_BUILD", "reproducible")
    assert build.build_mode() == "reproducible"


def test_build_mode_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("SMOE_BUILD", raising=False)
    assert build.build_mode() == "fast"
    monkeypatch.setenv("SMOE_BUILD", "")
    assert build.build_mode() == "fast"
    monkeypatch.setenv("SMOE_BUILD", " Reproducible ")
    assert build.build_mode() == "reproducible"
    monkeypatch.setenv("SMOE_BUILD", "native")
    with pytest.raises(ValueError, match=r"\$SMOE_BUILD must be one of fast, reproducible, got 'native'"):
        build.build_mode()
    with pytest.raises(ValueError, match="build mode must be one of"):
        cpu.flags("portable")


def test_set_build_mode_sets_the_environment_for_child_processes(monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("SMOE_BUILD", raising=False)
    assert build.set_build_mode("reproducible") == "fast"
    try:
        out = subprocess.run([sys.executable, "-c", "from smoe_core.render.build import build_mode; print(build_mode())"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == "reproducible"
    finally:
        os.environ.pop("SMOE_BUILD", None)


def test_flags_of_each_mode():
    fast, rep = cpu.flags("fast"), cpu.flags("reproducible")
    assert "-march=native" in fast and "-ffast-math" in fast
    assert not set(VALUE_CHANGING) & set(rep), rep
    assert "-ffp-contract=off" in rep and "-fno-fast-math" in rep and "-DSMOE_REPRODUCIBLE" in rep
    # what the reproducible flags add to IEEE semantics must not change values: only traps and errno
    extra = {f for f in rep if f.startswith("-f")} - {"-fno-fast-math", "-ffp-contract=off", "-fopenmp", "-fPIC"}
    assert extra <= {"-fno-trapping-math", "-fno-math-errno"}, extra
    import platform

    if platform.machine().lower() in ("x86_64", "amd64"):
        assert [f for f in rep if f.startswith("-march")] == ["-march=x86-64"]


def test_the_two_builds_never_share_a_cache_entry(monkeypatch):
    a, b = cpu.build("fast"), cpu.build("reproducible")
    assert a != b and a.is_file() and b.is_file()
    assert a.name.startswith("smoe_tile_cpu_") and b.name.startswith("smoe_tile_cpu_reproducible_")
    assert cpu.build("reproducible") == b  # cached: the same entry again
    # the mode in force picks the library
    monkeypatch.setenv("SMOE_BUILD", "reproducible")
    lib_r = cpu.load()
    monkeypatch.setenv("SMOE_BUILD", "fast")
    lib_f = cpu.load()
    assert lib_r is cpu.load("reproducible") and lib_f is cpu.load("fast") and lib_r is not lib_f
    assert os.path.samefile(lib_r._name, b) and os.path.samefile(lib_f._name, a)


@pytest.mark.parametrize("C,linear,rbf", [(1, False, False), (3, False, False), (3, True, False), (1, False, True),
                                          (2, True, True)])
def test_reproducible_build_matches_the_torch_reference(reproducible, C, linear, rbf):
    """Forward (float32, float64) and every gradient of the reproducible build against the pure-PyTorch
    reference of the tiled kernel, with edge tiles and a scale."""
    m = random_model(K=50, H=30, W=37, C=C, linear=linear, rbf=rbf, seed=20 + C)
    for dtype, tol in ((torch.float32, dict(atol=2e-6, rtol=2e-6)), (torch.float64, dict(atol=1e-12, rtol=1e-10))):
        t = m.torch(dtype=dtype)
        torch.testing.assert_close(render(t, backend="cpu", scale=1.3), render(t, backend="torch", scale=1.3), **tol)
    tm = m.torch(requires_grad=True)
    w = torch.randn(30, 37, C, generator=torch.Generator().manual_seed(C)).squeeze(-1)
    grads = {}
    for backend in ("cpu", "torch"):
        for v in tm.fields().values():
            if v is not None:
                v.grad = None
        (render(tm, backend=backend) * w).sum().backward()
        grads[backend] = {k: v.grad.clone() for k, v in tm.fields().items() if v is not None}
    for k, g in grads["cpu"].items():
        ref = grads["torch"][k]
        assert float((g - ref).abs().max()) <= 1e-5 * float(ref.abs().max()) + 1e-6, k


def test_reproducible_build_gradcheck(reproducible):
    m = random_model(K=10, H=9, W=11, C=2, linear=True, seed=3).torch(requires_grad=True, dtype=torch.float64)
    names = [k for k, v in m.fields().items() if v is not None]

    def f(*args):
        return render(m.replace(**dict(zip(names, args))), backend="cpu", tile=8)

    assert torch.autograd.gradcheck(f, tuple(getattr(m, k) for k in names), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mode", ["fast", "reproducible"])
def test_exp_of_each_build_against_float64(monkeypatch, mode):
    """One RBF kernel with expert 1 renders exp(log pi - q/2) at every pixel: the build's float exp (the
    reproducible build's own polynomial, the fast build's libmvec) against numpy's float64 exp of the same float32
    arguments (a11 = a22 = 1/2 and half-pixel offsets make q exact in float32, so both builds get the argument
    the reference gets), over arguments from -130 to +40: within 4 float32 ulps, and exactly 0 below the cut
    (-87)."""
    from smoe_core import SMoE
    from smoe_core.render import log_pi

    monkeypatch.setenv("SMOE_BUILD", mode)
    H, W = 40, 64
    pi = np.float32(np.exp(40.0))
    m = SMoE(np.array([[31.5, 19.5]], np.float32), np.array([[0.5, 0.0, 0.5]], np.float32), np.array([pi]),
             np.ones((1, 1), np.float32), rbf=True, image_shape=(H, W))
    out = render(m, backend="cpu", cutoff=1e3).astype(np.float64)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    q = (np.float32(0.5) * (xx - np.float32(31.5))) ** 2 + (np.float32(0.5) * (yy - np.float32(19.5))) ** 2
    logpi = np.float32(log_pi(torch.tensor([pi])).item())
    arg = (logpi - np.float32(0.5) * q).astype(np.float32)
    ref = np.exp(arg.astype(np.float64))
    live = arg > -87.0
    assert arg.min() < -120.0 and arg.max() > 39.9 and live.sum() > 1000
    rel = np.abs(out[live] - ref[live]) / ref[live]
    assert rel.max() < 4 * 2.0 ** -23, rel.max()
    assert np.all(out[arg < -87.5] == 0.0)


def test_reproducible_values_do_not_depend_on_the_instruction_set():
    """The reproducible source compiled for this CPU's whole instruction set (-march=native: AVX2 / AVX-512
    vectors) gives the same bits as the baseline build, on a short grid-initialized fit and an AS-SMoE
    initialization, each run in a fresh process in the reproducible environment (smoe_core.studies.determinism)."""
    from smoe_core.render.build import REPRODUCIBLE_ENV
    from smoe_core.studies.determinism import run_child

    kw = '{"crop": 64, "kernels": 64, "iters": 15, "epochs": 60}'
    base = run_child(["fingerprint", "fit", "as_smoe", "--kw", kw], dict(REPRODUCIBLE_ENV))
    native = run_child(["fingerprint", "fit", "as_smoe", "--kw", kw, "--march", "native"], dict(REPRODUCIBLE_ENV))
    assert base["environment"]["build"] == "reproducible" and base["environment"]["cpu_capability"] == "DEFAULT"
    for a, b in zip(base["fingerprints"], native["fingerprints"]):
        assert a["kind"] == b["kind"] and a["iterations"] == b["iterations"]
        assert a["digest"] == b["digest"], a["kind"]
    assert base["fingerprints"][0]["iterations"] == 15 and base["fingerprints"][0]["psnr_db"] > 15


def test_results_record_the_build(tmp_path, monkeypatch):
    from smoe_core.studies.results import META_COLUMNS, ResultsStore

    monkeypatch.setenv("SMOE_BUILD", "reproducible")
    store = ResultsStore(tmp_path, "nb", "smoke")
    df = store.add_rows("t", [dict(a=1)])
    assert {"build", "cpu_capability"} <= set(META_COLUMNS)
    assert df["build"].tolist() == ["reproducible"]
    assert df["cpu_capability"].tolist() == [torch.backends.cpu.get_cpu_capability()]


def test_reproduce_sets_and_restores_the_build_environment(monkeypatch):
    from smoe_core.cli import build_parser
    from smoe_core.render.build import REPRODUCIBLE_ENV
    from smoe_core.studies.reproduce import build_environment, reproduce

    monkeypatch.delenv("SMOE_BUILD", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    with build_environment("reproducible") as env:
        assert env == REPRODUCIBLE_ENV
        assert all(os.environ[k] == v for k, v in REPRODUCIBLE_ENV.items())
    assert "SMOE_BUILD" not in os.environ and os.environ["ATEN_CPU_CAPABILITY"] == "avx2"
    with build_environment(None):
        assert "SMOE_BUILD" not in os.environ
    with pytest.raises(ValueError, match="build must be one of"):
        reproduce("smoke", build="native")
    args = build_parser().parse_args(["reproduce", "--preset", "smoke", "--build", "reproducible"])
    assert args.build == "reproducible"
