"""Command-line interface: ``smoe fit | render | info | bench``.

- ``smoe fit IMAGE --kernels N --init grid``: initialize, fit, save the model (.npz), its render (.png) and,
  optionally, the training history (.csv).
- ``smoe render MODEL.npz --scale S --out image.png``: render at any scale (native super-resolution).
- ``smoe info MODEL.npz``: what a model file holds.
- ``smoe bench``: forward + backward timings of the tiled and dense renderers, or (``--coding``) one training
  iteration of the coding paper's setting (:mod:`smoe_core.studies.bench`).
- ``smoe denoise NOISY.png --out clean.png``: multi-model fusion denoising (:mod:`smoe_core.tasks.denoise`).
- ``smoe upscale IMAGE.png --scale S --out big.png``: fit and render at S (:mod:`smoe_core.tasks.superres`).
- ``smoe nsmoe train | export | upscale | denoise``: N-SMoE ([N-SMoE]): train the network with checkpoints and
  ``--resume`` (:mod:`smoe_core.tasks.nsmoe.train`), and super-resolve or denoise with a trained checkpoint
  (:mod:`smoe_core.tasks.nsmoe.infer`; 16-bit in, 16-bit out).

Errors from bad input (missing or unreadable files, invalid models, bad options, sizes beyond the bounds of
:mod:`smoe_core.limits`: more kernels than pixels, more memory than is available) print one line
``smoe: error: ...`` on stderr and exit with status 2; failures while running (divergence, out of memory,
I/O errors on output, a failed notebook, a results folder in use by another ``smoe reproduce``) exit with
status 1; Ctrl-C prints ``smoe: error: interrupted`` and exits with status 130; a closed standard output (``smoe
info m.npz | head -1``) ends the command quietly with status 141, as a command killed by SIGPIPE. Outputs are
written to temporary files and moved into place only once everything succeeded, so a failed run never clobbers
an existing file.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .lazy import lazy_exports

PROG = "smoe"

# ---------------------------------------------------------------------- initializer registry
# smoe_core.init (the registry of initializers, ``--init``'s choices) is imported when first needed: with it come
# scipy, pandas and the segmentation, seconds of start-up that ``smoe decode`` and ``smoe info`` do not need.
__getattr__, __dir__ = lazy_exports(__package__, globals(), {  # cli.INITIALIZERS, ... (PEP 562)
    name: f".init:{name}" for name in ("EXPERT_RULES", "INITIALIZERS", "register_initializer")})


class _LazyChoices:
    """argparse ``choices`` read from a module's attribute on first use (a membership test at parse time, or the
    help's ``%(choices)s``), so building the parser imports nothing heavy (smoe_core.init, the N-SMoE trainer)."""

    def __init__(self, module: str, name: str, sort: bool = False):
        self.module, self.name, self.sort = module, name, sort

    def _values(self) -> list:
        import importlib

        value = getattr(importlib.import_module(self.module, __package__), self.name)
        return sorted(value) if self.sort else list(value)

    def __contains__(self, item) -> bool:
        return item in self._values()

    def __iter__(self):
        return iter(self._values())


# ---------------------------------------------------------------------- argument types
def _number(text: str, kind, what: str):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


def _bounded(kind, what: str, ok):
    """An argparse type: ``kind(text)``, finite, and ``ok(value)``, else "expected <what>"."""
    def parse(text: str):
        v = _number(text, kind, what)
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


positive_int = _bounded(int, "a positive integer", lambda v: v >= 1)
nonnegative_int = _bounded(int, "an integer >= 0", lambda v: v >= 0)
positive_float = _bounded(float, "a positive number", lambda v: v > 0)
nonnegative_float = _bounded(float, "a number >= 0", lambda v: v >= 0)


# ---------------------------------------------------------------------- helpers
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tiff")
MAX_OUTPUT_PIXELS = 2**28  # a render larger than this is almost surely a mistyped --scale
#: ``smoe info`` counts the kernels per tile for image shapes up to the largest image smoe_core loads
from .io import MAX_PIXELS as MAX_INFO_PIXELS  # noqa: E402


def _check_output_path(path, suffixes, what: str) -> Path:
    """Validates an output path before any work: suffix, not a folder, its folder creatable and writable."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory")
    parent = path.parent
    while not parent.exists():  # the nearest existing ancestor must be a writable folder
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create the folder for {what} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {what} {path}: {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK) and not os.access(path.parent, os.W_OK):
        raise PermissionError(f"cannot overwrite {what} {path}")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


class _Staged:
    """Outputs written to temporary names in their target folders, moved into place together by ``commit``."""

    def __init__(self):
        self.items: list[tuple[Path, Path]] = []

    def tmp(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.stem}.{os.getpid()}.{len(self.items)}.tmp{final.suffix}")
        self.items.append((tmp, final))
        return tmp

    def commit(self) -> None:
        for tmp, final in self.items:
            os.replace(tmp, final)
        self.items = []

    def discard(self) -> None:
        for tmp, _ in self.items:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        self.items = []


def load_model(path):
    """SMoE.load with every way a file can fail to be a model turned into FileNotFoundError / ValueError."""
    from .model import SMoE

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a model file")
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
                raise ValueError(f"{path} is not an SMoE model file (not an .npz archive)")
    try:
        return SMoE.load(path)
    except FileNotFoundError:
        raise
    except ValueError as exc:  # SMoE.check's messages ("mu contains NaN ...") do not name the file
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: {exc}") from exc
    except (zipfile.BadZipFile, EOFError, KeyError, IndexError, TypeError, OSError) as exc:
        msg = str(exc) or type(exc).__name__
        raise ValueError(f"{path} is not an SMoE model file ({msg})") from exc


def _load_image(name_or_path, color: bool):
    from .io import load_image

    img = load_image(name_or_path, color=color)
    if min(img.shape[:2]) < 1:
        raise ValueError(f"{name_or_path} is an empty image")
    return img


def _color_name(img) -> str:
    return "gray" if img.ndim == 2 else f"{img.shape[2]} channels"


def _fmt(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}g}"


# ---------------------------------------------------------------------- fit
def fit_init_kwargs(args) -> dict:
    """The initializer's keyword arguments from ``smoe fit``'s options, with clear errors for options that do
    not apply. Segmenting initializers (S-SMoE, AS-SMoE) get ``labels``: MDBSCAN at ``--d-th`` on the
    image file's colours (authors' variant, as in the notebooks; :func:`smoe_core.studies.common.segmentation_labels`)
    unless ``--tiles`` is given (then each tile is segmented by the initializer itself)."""
    from .init import INITIALIZERS

    init = args.init
    info = INITIALIZERS.info(init)
    kw: dict = {}
    if args.experts is not None:
        if not info.expert_rules:
            radial = [n for n in INITIALIZERS if INITIALIZERS.info(n).expert_rules]
            raise ValueError(f"--experts applies to {', '.join(radial)}, not to --init {init}")
        if args.experts not in info.expert_rules:
            raise ValueError(f"--experts for --init {init} must be one of {', '.join(info.expert_rules)}")
        kw["experts"] = args.experts
    if args.d_th is not None and not info.segments:
        raise ValueError(f"--d-th applies to {', '.join(INITIALIZERS.names(segments=True))}, not to --init {init}")
    if (args.workers or args.scheduler) and not info.parallel and not args.tiles:
        raise ValueError(f"--workers/--scheduler apply to --init {', '.join(INITIALIZERS.names(parallel=True))} "
                         "(per-segment work) or to --tiles")
    kw.update(info.seed_kwargs(args.seed))
    if info.segments:
        d_th = 40.0 if args.d_th is None else args.d_th
        if args.tiles:
            kw["d_th"] = d_th
        else:
            from .studies.common import segmentation_labels

            kw["labels"] = segmentation_labels(args.image, d_th)
    if info.parallel:
        kw["progress"] = not args.no_progress
        if not args.tiles:
            kw.update(workers=args.workers, scheduler=args.scheduler)
    return kw


def cmd_fit(args) -> int:
    from .init import INITIALIZERS
    from .io import resolve_image_path, save_image
    from .metrics import psnr, ssim
    from .render import render
    from .training import PARAMS, fit

    if args.init not in INITIALIZERS:  # registry changed after the parser was built
        raise ValueError(f"unknown initializer {args.init!r} (choose from {', '.join(sorted(INITIALIZERS))})")
    src = resolve_image_path(args.image)
    stem = src.stem
    out = Path(args.out) if args.out else Path("results") / "fit" / f"{stem}_{args.init}_{args.kernels}.npz"
    out = _check_output_path(out, (".npz",), "--out")
    png = out.with_suffix(".png")
    _check_output_path(png, (".png",), "the rendered image")
    history = _check_output_path(args.history, (".csv",), "--history") if args.history else None
    if _same_file(png, src) or _same_file(out, src) or (history is not None and _same_file(history, src)):
        raise ValueError(f"an output would overwrite the input image {src}; choose another --out/--history")
    if history is not None and (_same_file(history, out) or _same_file(history, png)):
        raise ValueError("--history must differ from the model and its rendered image")

    image = _load_image(args.image, args.color)
    H, W = image.shape[:2]
    if INITIALIZERS.info(args.init).budget(args.kernels) is not None:  # AS-SMoE picks its own count
        from .limits import check_kernels, check_memory
        from .training import fit_bytes

        check_kernels(args.kernels, (H, W), "--kernels")
        C = 1 if image.ndim == 2 else image.shape[2]
        check_memory(fit_bytes((H, W), C, args.kernels), f"fitting {args.kernels} kernels to a {H} x {W} image")
    init_kw = fit_init_kwargs(args)
    lr = {k: getattr(args, f"lr_{k}") for k in PARAMS if getattr(args, f"lr_{k}", None) is not None}
    t0 = time.perf_counter()
    if args.tiles:
        from .tasks.tilewise import fit_tilewise

        if args.seconds is not None:
            raise ValueError("--seconds is not supported with --tiles; use --tile-iters and --iters")
        model, record = fit_tilewise(
            image, args.kernels, initializer=args.init, init_kwargs=init_kw, tiles=tuple(args.tiles),
            tile_iters=args.tile_iters, sparsity=args.sparsity,
            finetune_iters=500 if args.iters is None else args.iters,
            lr=lr or None, backend=args.backend, tol=1e-6 if args.tol is None else args.tol, seed=args.seed,
            workers=args.workers, scheduler=args.scheduler, progress=not args.no_progress)
        model0, hist = record["merged_model"], record["history"]
        model0.check()
        init_seconds = record["tile_seconds"]
        init_label = f"{args.init}, {record['n_tiles']} tiles trained and merged"
    else:
        model0, init_record = INITIALIZERS[args.init](image, args.kernels, **init_kw)
        model0.check()
        init_seconds, init_label = init_record.get("seconds", float("nan")), args.init
        kwargs = dict(loss=args.loss, sparsity=args.sparsity, backend=args.backend, seed=args.seed,
                      progress=not args.no_progress)
        optional = dict(iters=args.iters, seconds=args.seconds, tol=args.tol, lr=lr or None)
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        t0 = time.perf_counter()
        model, hist = fit(image, model0, **kwargs)
    elapsed = time.perf_counter() - t0
    init_render = render(model0, backend=args.backend)
    p0, s0 = psnr(init_render, image), ssim(init_render, image)
    rendered = render(model, backend=args.backend)
    p1, s1 = psnr(rendered, image), ssim(rendered, image)

    staged = _Staged()
    try:
        model.save(staged.tmp(out))
        save_image(staged.tmp(png), rendered)
        if history is not None:
            hist.to_csv(staged.tmp(history), index=False)
        staged.commit()
    finally:
        staged.discard()

    print(f"image: {args.image} ({H} x {W}, {_color_name(image)})")
    print(f"init: {init_label} ({init_seconds:.1f} s)")
    print(f"PSNR: {p1:.2f} dB (init {p0:.2f} dB)")
    print(f"SSIM: {s1:.4f} (init {s0:.4f})")
    print(f"kernels: {model0.n_kernels} -> {model.n_kernels}")
    print(f"iterations: {len(hist)}")
    print(f"seconds: {elapsed:.1f}")
    print(f"model: {out}")
    print(f"render: {png}")
    if history is not None:
        print(f"history: {history}")
    return 0


# ---------------------------------------------------------------------- render
def cmd_render(args) -> int:
    from .io import save_image
    from .render import output_shape, render

    out = _check_output_path(args.out, IMAGE_SUFFIXES, "--out")
    model = load_model(args.model)
    if args.shape is not None:
        shape = tuple(args.shape)
    elif model.image_shape is not None:
        shape = model.image_shape
    else:
        raise ValueError(f"{args.model} does not record its image shape; give --shape H W")
    H, W = output_shape(shape, args.scale)
    if H * W > MAX_OUTPUT_PIXELS:
        raise ValueError(f"--scale {args.scale:g} gives a {H} x {W} image, more than {MAX_OUTPUT_PIXELS} pixels")
    if model.color_space == "yuv":
        print(f"{PROG}: note: the model is in the yuv colour space; the image holds its Y, U, V channels as stored",
              file=sys.stderr)
    img = render(model, shape, backend=args.backend, scale=args.scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(out, img)
    print(f"rendered {model.n_kernels} kernels at scale {args.scale:g}: {H} x {W} -> {out}")
    return 0


# ---------------------------------------------------------------------- info
def model_stats(model) -> dict:
    """Summary numbers of a model (numpy): pi range, kernel sizes, tile-list lengths (not for image shapes of
    more than :data:`MAX_INFO_PIXELS` pixels: nothing is allocated in proportion to the image)."""
    from .render import tile_lists

    m = model.numpy()
    a11, a22 = m.chol[:, 0].astype(np.float64), m.chol[:, 2].astype(np.float64)
    # det(P) = (a11 a22)^2, so det(Sigma)^(1/4) = det(P)^(-1/4) = 1/sqrt(|a11 a22|): the geometric-mean std. dev.
    with np.errstate(divide="ignore"):
        sigma_geo = 1.0 / np.sqrt(np.abs(a11 * a22))
    P = m.precision().astype(np.float64)
    try:
        eig = np.linalg.eigvalsh(P)  # precision eigenvalues; covariance eigenvalues are their inverses
        with np.errstate(divide="ignore"):
            axes = 1.0 / np.sqrt(eig)
    except np.linalg.LinAlgError:
        axes = np.full((m.n_kernels, 2), np.nan)
    stats = dict(
        pi_min=float(m.pi.min()), pi_max=float(m.pi.max()), pi_mean=float(m.pi.mean()),
        experts_min=float(m.experts.min()), experts_max=float(m.experts.max()),
        sigma_mean=float(np.mean(sigma_geo)), sigma_median=float(np.median(sigma_geo)),
        sigma_axis_min=float(np.min(axes)), sigma_axis_max=float(np.max(axes)),
        tiles=None,
    )
    if m.image_shape is not None and m.image_shape[0] * m.image_shape[1] > MAX_INFO_PIXELS:
        stats.update(tiles="skipped")  # the lists would take memory in proportion to the image's area
    elif m.image_shape is not None:
        counts = tile_lists(m).counts.to(dtype=__import__("torch").float64)
        stats.update(tiles=int(counts.numel()), list_mean=float(counts.mean()), list_min=int(counts.min()),
                     list_max=int(counts.max()))
    return stats


def _is_bitstream(path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"SMoE"


def cmd_info(args) -> int:
    if _is_bitstream(args.model):
        return info_bitstream(Path(args.model))
    model = load_model(args.model)
    st = model_stats(model)
    print(f"file: {args.model}")
    print(f"kernels: {model.n_kernels}")
    print(f"channels: {model.n_channels}")
    print(f"colour space: {model.color_space}")
    shape = "unknown" if model.image_shape is None else f"{model.image_shape[0]} x {model.image_shape[1]} (H x W)"
    print(f"image shape: {shape}")
    print(f"rbf: {'yes' if model.rbf else 'no'}")
    print(f"linear experts: {'yes' if model.linear else 'no'}")
    print(f"pi: min {_fmt(st['pi_min'])}, max {_fmt(st['pi_max'])}, mean {_fmt(st['pi_mean'])}")
    print(f"experts: min {_fmt(st['experts_min'])}, max {_fmt(st['experts_max'])}")
    print(f"kernel sigma (px): mean {st['sigma_mean']:.3f} (det(P)^-1/4), median {st['sigma_median']:.3f}, "
          f"axes {st['sigma_axis_min']:.3f} .. {st['sigma_axis_max']:.3f}")
    if st["tiles"] is None:
        print("kernels per 16x16 tile: unknown (no image shape)")
    elif st["tiles"] == "skipped":
        print(f"kernels per 16x16 tile: not computed (the image shape has more than {MAX_INFO_PIXELS} pixels, "
              "smoe_core.io.MAX_PIXELS)")
    else:
        print(f"kernels per 16x16 tile: mean {st['list_mean']:.2f} (min {st['list_min']}, max {st['list_max']}, "
              f"{st['tiles']} tiles)")
    return 0


# ---------------------------------------------------------------------- bench
def cmd_bench(args) -> int:
    from .studies.bench import format_table, run_benchmark, run_coding_benchmark
    from .studies.results import atomic_write_csv

    if args.coding:
        out = _check_output_path(args.out or str(Path("results") / "bench" / "bench_coding.csv"), (".csv",), "--out")
        df = run_coding_benchmark(args.height or 512, args.width or 512, repeats=args.repeats,
                                  quantize=not args.no_quantize)
        atomic_write_csv(df, out)
        r = df.iloc[0]
        print(f"smoe_core {r.package_version}, torch {r.torch_version}, {r.threads} threads, {r.image} {r.height} x "
              f"{r.width}, {r.kernels} kernels (grid), YUV, fake quantization {'on' if r.quantize else 'off'}; one "
              f"training iteration (forward + SSIM-611 + backward + Adam step), {r.repeats} timed after "
              f"{r.warmup} warm-up; tiled ran the {r.backend_resolved!r} build; load average {r.load_avg_1min:.1f}")
        print(f"process time per iteration: best {r.best_cpu_ms:.1f} ms, median {r.median_cpu_ms:.1f} ms; wall time: "
              f"best {r.best_wall_ms:.1f} ms, median {r.median_wall_ms:.1f} ms")
        print(f"wrote {out}")
        return 0
    if args.no_quantize:
        raise ValueError("--no-quantize goes with --coding")
    out = _check_output_path(args.out or str(Path("results") / "bench" / "bench.csv"), (".csv",), "--out")
    df = run_benchmark(args.height or 512, args.width or 768, args.kernels, repeats=args.repeats,
                       dense=not args.no_dense, progress=not args.no_progress)
    atomic_write_csv(df, out)
    r = df.iloc[0]
    tiled = df[df.backend == "tiled"]
    resolved = tiled.backend_resolved.iloc[0] if len(tiled) else "-"
    print(f"smoe_core {r.package_version}, torch {r.torch_version}, {r.threads} threads, {r.image} "
          f"{args.height} x {args.width}; forward+backward, best of {args.repeats} after a warm-up "
          f"(once when the warm-up took > 5 s); tiled ran the {resolved!r} build; "
          f"load average {df.load_avg_1min.min():.1f}-{df.load_avg_1min.max():.1f}")
    print(format_table(df))
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------- reproduce
def cmd_reproduce(args) -> int:
    from .studies.reproduce import reproduce

    if args.workers and args.scheduler:
        raise ValueError("give --workers or --scheduler, not both")
    # reproduce() resolves --images (relative paths made absolute) and refuses a missing one before any work
    report = reproduce(args.preset, only=args.only, results_dir=args.results, workers=args.workers or None,
                       scheduler=args.scheduler, progress=not args.no_progress, images=args.images, wait=args.wait,
                       build=args.build, seed=args.seed)
    print(f"report: {report}")
    return 0


# ---------------------------------------------------------------------- denoise and upscale
def _image_in_out(args):
    """Validates IMAGE and --out of denoise/upscale before any work; returns (source path, output path)."""
    from .io import resolve_image_path

    src = resolve_image_path(args.image)
    out = _check_output_path(args.out, IMAGE_SUFFIXES, "--out")
    if _same_file(out, src):
        raise ValueError(f"--out would overwrite the input image {src}; choose another --out")
    return src, out


def _save_staged(out: Path, image) -> None:
    from .io import save_image

    staged = _Staged()
    try:
        save_image(staged.tmp(out), image)
        staged.commit()
    finally:
        staged.discard()


def cmd_denoise(args) -> int:
    from .tasks.denoise import MAX_MODELS, default_kernels, denoise

    if not 1 <= args.models <= MAX_MODELS:
        raise ValueError(f"--models must be from 1 to {MAX_MODELS}, got {args.models}")
    _, out = _image_in_out(args)
    noisy = _load_image(args.image, args.color)
    H, W = noisy.shape[:2]
    kernels = args.kernels if args.kernels is not None else default_kernels((H, W))
    if args.kernels is not None:
        from .limits import check_kernels

        check_kernels(args.kernels, (H, W), "--kernels")
    clean, record = denoise(noisy, models=args.models, n_kernels=kernels, iters=args.iters, seed=args.seed,
                            border=args.border, workers=args.workers, scheduler=args.scheduler,
                            progress=not args.no_progress)
    _save_staged(out, clean)
    print(f"image: {args.image} ({H} x {W}, {_color_name(noisy)})")
    print(f"models: {record['models']} (shifts {record['shifts'][0]} .. {record['shifts'][-1]}, "
          f"border {record['border']})")
    print(f"kernels per model: {record['n_kernels']}, iterations: {record['iters']}")
    print(f"seconds: {record['seconds']:.1f}")
    print(f"denoised: {out}")
    return 0


def cmd_upscale(args) -> int:
    from .render import output_shape
    from .tasks.superres import upscale

    _, out = _image_in_out(args)
    image = _load_image(args.image, args.color)
    H, W = image.shape[:2]
    h2, w2 = output_shape((H, W), args.scale)
    if h2 * w2 > MAX_OUTPUT_PIXELS:
        raise ValueError(f"--scale {args.scale:g} gives a {h2} x {w2} image, more than {MAX_OUTPUT_PIXELS} pixels")
    if args.kernels is not None:
        from .limits import check_kernels

        check_kernels(args.kernels, (H, W), "--kernels")
    big, record = upscale(image, args.scale, n_kernels=args.kernels, iters=args.iters, seed=args.seed,
                          progress=not args.no_progress)
    _save_staged(out, big)
    print(f"image: {args.image} ({H} x {W}, {_color_name(image)})")
    print(f"kernels: {record['kernels_init']} -> {record['kernels']}, iterations: {record['iterations']}, "
          f"fit PSNR {record['psnr_fit']:.2f} dB")
    print(f"scale {args.scale:g}: {h2} x {w2}")
    print(f"seconds: {record['seconds']:.1f}")
    print(f"upscaled: {out}")
    return 0


# ---------------------------------------------------------------------- N-SMoE ([N-SMoE])
NSMOE_COMMANDS = ("train", "export", "upscale", "denoise")


def _check_output_dir(path, what: str) -> Path:
    """Validates an output folder before any work: not a file, creatable and writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create {what} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {what} {path}: {parent} is not writable")
    return path


def _nsmoe_data_installed() -> None:
    """N-SMoE trains on pydicom-data's images: a missing package is a failure to run (status 1), with the fix."""
    try:
        import data_store  # noqa: F401  (pydicom-data)
        import pydicom  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"N-SMoE training needs its data packages ({exc.name} is missing): "
                           "pip install 'smoe-core[nsmoe]' (pydicom==3.0.2, pydicom-data==1.0.0)") from None


def _train_command(task: str) -> str:
    return f"smoe nsmoe train --preset quick --task {task}"


def cmd_nsmoe(args) -> int:
    raise ValueError(f"give an nsmoe command: {', '.join(NSMOE_COMMANDS)} (smoe nsmoe --help)")


def cmd_nsmoe_train(args) -> int:
    from .tasks.nsmoe import checkpoint as ckpt
    from .tasks.nsmoe.train import encoder_overrides, history_path, make_config, train

    overrides = encoder_overrides(args.task, args.preset, args.encoder)
    suffix = f"_{args.encoder}" if overrides else ""
    out = Path(args.out) if args.out else Path("results") / "nsmoe" / f"{args.task}_{args.preset}{suffix}"
    out = _check_output_dir(out, "--out")
    path = out / f"{args.task}.ckpt"
    seed = args.seed
    if args.resume:
        if not path.is_file():
            raise FileNotFoundError(f"nothing to resume: {path} does not exist (start the run without --resume)")
        state = ckpt.load(path)
        old = state.meta.get("config", {})
        if seed is None:
            seed = int(old.get("seed", 0))
        for name, value in (("--preset", args.preset), ("--seed", seed)):
            key = name.lstrip("-")
            if old.get(key) != value:
                raise ValueError(f"{path} is a run of {key} {old.get(key)}, not {value}: resume it with "
                                 f"{name} {old.get(key)}")
    elif path.exists():
        state = ckpt.load(path)
        raise ValueError(f"{out} already holds a run of {args.task} (step {state.step} of "
                         f"{state.meta.get('total_steps')}): pass --resume to continue it, or choose another --out")
    cfg = make_config(args.task, args.preset, 0 if seed is None else seed, **overrides)
    _nsmoe_data_installed()
    result = train(cfg, out, resume=args.resume, stop_at=args.stop_at, progress=not args.no_progress)
    what = {"sr2": "x2, bicubic", "sr4": "x4, bicubic", "denoise": "scale 1, Gaussian noise sigma 5-50",
            "blind": "x2, BSRGAN-plus degradations"}[cfg.task]
    base = "bicubic" if cfg.scale > 1 else "noisy input"
    print(f"task: {cfg.task} ({what}), preset {cfg.preset}, seed {cfg.seed}")
    print(f"steps: {result.step} of {result.steps} (this session {result.seconds:.1f} s)")
    if result.val_psnr is not None:
        print(f"validation PSNR: {result.val_psnr:.2f} dB ({base} {result.baseline_psnr:.2f} dB; {cfg.val_crops} "
              f"crops of the validation split)")
    print(f"checkpoint: {result.checkpoint} ({result.checkpoint.stat().st_size / 2**20:.1f} MB)")
    print(f"history: {history_path(out, cfg.task)}")
    if not result.finished:
        print(f"stopped at step {result.step}: continue with smoe nsmoe train --preset {cfg.preset} --task "
              f"{cfg.task} --out {out} --resume")
    return 0


def cmd_nsmoe_export(args) -> int:
    from .tasks.nsmoe import checkpoint as ckpt

    src = Path(args.checkpoint)
    out = _check_output_path(args.out, (".ckpt",), "--out")
    path = ckpt.export_weights(src, out)
    state = ckpt.load(path)
    print(f"exported: {src} ({src.stat().st_size / 2**20:.1f} MB) -> {path} ({path.stat().st_size / 2**20:.1f} MB, "
          f"{state.meta['task']}, step {state.step} of {state.meta.get('total_steps')}, weights only)")
    return 0


def _nsmoe_checkpoint(args, task: str):
    """The network of --checkpoint, or of the shipped checkpoint of ``task`` (absent: one line naming the training
    command that writes it; untrained weights are never run)."""
    from .tasks.nsmoe import checkpoint as ckpt
    from .tasks.nsmoe.infer import load_network

    if args.checkpoint is not None:
        return load_network(args.checkpoint)
    path = ckpt.default_path(task)
    if not path.is_file():
        raise FileNotFoundError(f"no trained N-SMoE checkpoint for {task}: {path} is not there (none ships with "
                                f"this smoe yet); train one with `{_train_command(task)}`, which writes "
                                f"results/nsmoe/{task}_quick/{task}.ckpt, and pass it with --checkpoint")
    return load_network(path)


def _nsmoe_outputs(args):
    """Validates IMAGE, --out (.png) and --export-kernels (.npz) before any work."""
    src, out = _image_in_out(args)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out} must end in .png (8-bit in, 8-bit out; 16-bit in, 16-bit out)")
    export = None
    if args.export_kernels is not None:
        export = _check_output_path(args.export_kernels, (".npz",), "--export-kernels")
        if _same_file(export, src) or _same_file(export, out) or export.resolve() == out.resolve():
            raise ValueError("--export-kernels must differ from the input image and --out")
    return src, out, export


def _nsmoe_run(args, loaded, src: Path, out: Path, export) -> int:
    from .io import bit_depth, save_image
    from .tasks.nsmoe.infer import restore

    image = _load_image(args.image, color=False)
    bits = bit_depth(src)
    H, W = image.shape
    s = loaded.scale
    if H * s * W * s > MAX_OUTPUT_PIXELS:
        raise ValueError(f"{args.image} at x{s} gives a {H * s} x {W * s} image, more than {MAX_OUTPUT_PIXELS} pixels")
    t0 = time.perf_counter()
    stride = loaded.net.config.test_stride if args.stride is None else args.stride
    if not 1 <= stride <= loaded.net.config.block:
        raise ValueError(f"--stride must be from 1 to the block size {loaded.net.config.block}, got {stride}")
    result, model = restore(loaded.net, image, stride=stride, chunk=args.chunk, export=export is not None,
                            progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    staged = _Staged()
    try:
        save_image(staged.tmp(out), np.clip(result, 0.0, 1.0), bits=bits)
        if model is not None:
            model.save(staged.tmp(export))
        staged.commit()
    finally:
        staged.discard()
    meta = loaded.checkpoint.meta
    print(f"image: {args.image} ({H} x {W}, gray, {bits}-bit)")
    print(f"checkpoint: {loaded.checkpoint.path} ({meta['task']}, preset {meta.get('preset')}, step {meta['step']} of "
          f"{meta.get('total_steps')})")
    print(f"output: {result.shape[0]} x {result.shape[1]}, {bits}-bit -> {out} (blocks at stride {stride})")
    if model is not None:
        base = loaded.net.config.base
        print(f"kernels: {model.n_kernels} -> {export}"
              + (f" (the residual over the input's {base} upscale, which its render must be added to)"
                 if base != "none" else ""))
    print(f"seconds: {seconds:.1f}")
    return 0


def cmd_nsmoe_upscale(args) -> int:
    src, out, export = _nsmoe_outputs(args)
    task = "blind" if args.blind else f"sr{args.scale}"
    loaded = _nsmoe_checkpoint(args, task)
    where = loaded.checkpoint.path
    if loaded.task == "denoise" or loaded.scale == 1:
        raise ValueError(f"{where} is a denoising checkpoint; use smoe nsmoe denoise")
    if loaded.scale != args.scale:
        raise ValueError(f"{where} is a x{loaded.scale} checkpoint ({loaded.task}), not x{args.scale}")
    if args.blind and loaded.task != "blind":
        raise ValueError(f"--blind needs a checkpoint of the blind task; {where} is {loaded.task}")
    return _nsmoe_run(args, loaded, src, out, export)


def cmd_nsmoe_denoise(args) -> int:
    src, out, export = _nsmoe_outputs(args)
    loaded = _nsmoe_checkpoint(args, "denoise")
    where = loaded.checkpoint.path
    if loaded.scale != 1 or loaded.task != "denoise":
        raise ValueError(f"{where} is a {loaded.task} checkpoint (x{loaded.scale}), not a denoising one")
    lo, hi = loaded.checkpoint.meta.get("noise_range") or (0.0, 255.0)
    if args.sigma is not None and not lo <= args.sigma <= hi:
        raise ValueError(f"--sigma {args.sigma:g} is outside the noise levels {where} was trained on (sigma "
                         f"{lo:g} to {hi:g}); give --blind to denoise the image anyway")
    return _nsmoe_run(args, loaded, src, out, export)


# ---------------------------------------------------------------------- coding ([QSMoE])
def read_bitstream(path: Path) -> bytes:
    """The bytes of a ``.smoe`` file, bounded before reading (ValueError / FileNotFoundError naming it)."""
    from .tasks.coding.bitstream import MAX_GRID_KERNELS

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an SMoE bitstream")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    limit = 64 * MAX_GRID_KERNELS + 4096  # far above what the largest grid can code to
    if path.stat().st_size > limit:
        raise ValueError(f"{path} is {path.stat().st_size} bytes, more than an SMoE bitstream can hold")
    return path.read_bytes()


def cmd_encode(args) -> int:
    from .io import resolve_image_path
    from .tasks.coding.codec import encode_image

    src = resolve_image_path(args.image)
    out = _check_output_path(args.out, (".smoe",), "--out")
    if _same_file(out, src):
        raise ValueError(f"--out would overwrite the input image {src}; choose another --out")
    image = _load_image(args.image, color=True)
    H, W = image.shape[:2]
    if min(H, W) < 8:
        raise ValueError(f"{args.image} is {H} x {W}: the codec's grid needs at least 8 x 8 pixels")
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="encode", unit="it", dynamic_ncols=True, file=sys.stderr)

    def tick(row):
        bar.update(1)
        if row["iteration"] % 10 == 0:
            bar.set_postfix(phase=row["phase"], kernels=row["n_kernels"], ssim611=f"{row['ssim611']:.4f}",
                            refresh=False)

    try:
        data, rec = encode_image(image, preset=args.preset, kernels=args.kernels, lam=args.lam, iters=args.iters,
                                 seconds=args.seconds, callback=tick if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    staged = _Staged()
    try:
        staged.tmp(out).write_bytes(data)
        staged.commit()
    finally:
        staged.discard()
    print(f"image: {args.image} ({H} x {W}, RGB)")
    print(f"kernels: {rec['kernels']}")
    print(f"bytes: {rec['bytes']} ({8 * rec['bytes'] / rec['kernels']:.1f} bits per kernel)")
    print(f"bpp: {rec['bpp']:.4f}")
    print(f"PSNR: {rec['psnr']:.2f} dB (RGB, decoded image)")
    print(f"SSIM-611: {rec['ssim611']:.4f}")
    print(f"seconds: {rec['seconds']:.1f} (training, preset {args.preset})")
    print(f"file: {out}")
    return 0


def cmd_decode(args) -> int:
    from .tasks.coding.codec import decode_image

    src = Path(args.file)
    out = _check_output_path(args.out, IMAGE_SUFFIXES, "--out")
    if _same_file(out, src):
        raise ValueError("--out would overwrite the bitstream; choose another --out")
    data = read_bitstream(src)
    try:
        image, info = decode_image(data)
    except ValueError as exc:
        raise ValueError(f"{src}: {exc}") from None
    _save_staged(out, image)
    H, W = info["image_shape"]
    print(f"file: {src} ({len(data)} bytes, {8 * len(data) / (H * W):.4f} bpp)")
    print(f"image: {H} x {W}, {info['n_active']} kernels")
    print(f"decoded: {out}")
    return 0


def info_bitstream(path: Path) -> int:
    from .tasks.coding.bitstream import describe

    data = read_bitstream(path)
    try:
        d = describe(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    H, W = d["image_shape"]
    print(f"file: {path} (SMoE bitstream, format {d['version']})")
    print(f"image shape: {H} x {W} (H x W), colour space {d['color_space']}")
    print(f"grid: {d['grid'][0]} x {d['grid'][1]}, active kernels: {d['n_active']}")
    print("bits: " + ", ".join(f"{k} {v}" for k, v in d["bits"].items()))
    print(f"bytes: {d['file_bytes']} (header {d['header_bytes']}, payload {d['payload_bytes']}); "
          f"{d['bits_per_pixel']:.4f} bpp, {d['bits_per_kernel']:.1f} bits per kernel")
    print(f"flags: {d['flags']['model']} ({d['flags']['bits']:.0f} bits)")
    for name, s in d["streams"].items():
        extra = f", the paper's rule: {s['paper_choice']}" if s.get("paper_choice") else ""
        print(f"stream {name}: {s['model']}{extra}")
    return 0


# ---------------------------------------------------------------------- parser and entry point
class _Parser(argparse.ArgumentParser):
    """Reports usage errors of every subcommand as ``smoe: error: ...`` (argparse says ``smoe fit: error:``)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    from .render import BACKENDS

    parser = _Parser(prog=PROG, description="Steered Mixture-of-Experts image regression.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("fit", help="initialize and fit a model to an image")
    p.add_argument("image", metavar="IMAGE",
                   help="an image file or a test image name (barbara, flower, parrot, peppers)")
    p.add_argument("--kernels", type=positive_int, required=True, metavar="N", help="kernel budget")
    p.add_argument("--init", choices=_LazyChoices(".init", "INITIALIZERS", sort=True), default="grid", metavar="NAME",
                   help="initializer: %(choices)s (default: grid)")
    p.add_argument("--color", action="store_true", help="fit the RGB image (default: gray)")
    p.add_argument("--iters", type=nonnegative_int, default=None, metavar="N",
                   help="maximum iterations (default: fit's default)")
    p.add_argument("--seconds", type=positive_float, default=None, metavar="S", help="time budget in seconds")
    for name in ("mu", "chol", "pi", "experts", "slopes"):
        p.add_argument(f"--lr-{name}", dest=f"lr_{name}", type=nonnegative_float, default=None, metavar="LR",
                       help=f"learning rate of {name} (0 freezes it)")
    p.add_argument("--sparsity", type=nonnegative_float, default=0.0, metavar="L", help="L1 weight on pi")
    p.add_argument("--tol", type=nonnegative_float, default=None, help="stopping tolerance (0 disables)")
    p.add_argument("--loss", choices=("mse", "ssim"), default="mse")
    p.add_argument("--backend", choices=BACKENDS, default="tiled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="MODEL.npz",
                   help="model file (default: results/fit/<image>_<init>_<N>.npz); the render goes next to it (.png)")
    p.add_argument("--history", default=None, metavar="HISTORY.csv", help="also write the training history")
    p.add_argument("--d-th", dest="d_th", type=positive_float, default=None, metavar="D",
                   help="MDBSCAN threshold on 0-255 intensities for s_smoe/as_smoe (default 40)")
    p.add_argument("--experts", choices=_LazyChoices(".init", "EXPERT_RULES"), default=None, metavar="RULE",
                   help="expert rule of grid/kmeans/s_smoe: %(choices)s (default mean; random is the paper "
                        "protocol of Table V)")
    p.add_argument("--tiles", type=positive_int, nargs=2, default=None, metavar=("NX", "NY"),
                   help="tile-wise training: NX x NY tiles initialized and trained apart, merged, fine-tuned "
                        "(--iters fine-tuning iterations, default 500)")
    p.add_argument("--tile-iters", type=nonnegative_int, default=500, metavar="N",
                   help="iterations per tile with --tiles (default 500)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="Dask workers (local cluster) for as_smoe's segments or --tiles")
    where.add_argument("--scheduler", default=None, metavar="ADDR", help="a running Dask scheduler's address")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("render", help="render a model at any scale")
    p.add_argument("model", metavar="MODEL.npz")
    p.add_argument("--scale", type=positive_float, default=1.0, metavar="S", help="output scale (default 1)")
    p.add_argument("--shape", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
                   help="native image shape (default: the model's)")
    p.add_argument("--backend", choices=BACKENDS, default="tiled")
    p.add_argument("--out", required=True, metavar="IMAGE.png")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("info", help="describe a model file (.npz) or an SMoE bitstream (.smoe)")
    p.add_argument("model", metavar="MODEL.npz|FILE.smoe")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="time the tiled and dense renderers (forward + backward), or (--coding) one "
                                     "training iteration of the coding paper's setting")
    p.add_argument("--height", type=positive_int, default=None, help="default 512")
    p.add_argument("--width", type=positive_int, default=None, help="default 768 (--coding: 512)")
    p.add_argument("--kernels", type=positive_int, nargs="+", default=[500, 1000, 2000, 4000], metavar="K")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--no-dense", action="store_true", help="time the tiled renderer only")
    p.add_argument("--coding", action="store_true",
                   help="time one training iteration of [QSMoE] instead: colour Lena, the paper's grid of W/4 x H/4 "
                        "kernels (16384 on 512 x 512), YUV, fake quantization, forward + SSIM-611 + backward + Adam "
                        "step; process and wall time")
    p.add_argument("--no-quantize", action="store_true", help="--coding without fake quantization")
    p.add_argument("--out", default=None, metavar="BENCH.csv",
                   help="default results/bench/bench.csv (--coding: results/bench/bench_coding.csv)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("denoise", help="denoise an image by fusing SMoE models fitted to shifted copies")
    p.add_argument("image", metavar="NOISY", help="the noisy image file")
    p.add_argument("--out", required=True, metavar="CLEAN.png", help="the denoised image")
    p.add_argument("--models", type=positive_int, default=8, metavar="S",
                   help="models fused, 1..64 (default 8; 1 = a single model)")
    p.add_argument("--kernels", type=positive_int, default=None, metavar="N",
                   help="kernels per model (default: one per 64 pixels)")
    p.add_argument("--iters", type=nonnegative_int, default=None, metavar="N",
                   help="iterations per model (default 300)")
    p.add_argument("--color", action="store_true", help="denoise the RGB image (default: gray)")
    p.add_argument("--border", choices=("reflect", "crop", "roll"), default="reflect",
                   help="how shifted frames are filled at the borders (default reflect)")
    p.add_argument("--seed", type=int, default=0)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="fit the models on a local Dask cluster of N processes")
    where.add_argument("--scheduler", default=None, metavar="ADDR", help="fit the models on the Dask scheduler at ADDR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_denoise)

    p = sub.add_parser("upscale", help="super-resolve an image: fit a model and render it at --scale")
    p.add_argument("image", metavar="IMAGE", help="an image file or a test image name")
    p.add_argument("--scale", type=positive_float, required=True, metavar="S", help="output scale (any S > 0)")
    p.add_argument("--out", required=True, metavar="BIG.png", help="the upscaled image")
    p.add_argument("--kernels", type=positive_int, default=None, metavar="N",
                   help="kernels (default: one per 4 pixels)")
    p.add_argument("--iters", type=nonnegative_int, default=None, metavar="N", help="maximum iterations (default 500)")
    p.add_argument("--color", action="store_true", help="upscale the RGB image (default: gray)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("encode", help="code an RGB image as an SMoE bitstream ([QSMoE]: quantization-aware "
                                      "training, entropy coding)")
    p.add_argument("image", metavar="IMAGE", help="an image file or a test image name (coded in colour)")
    p.add_argument("--out", required=True, metavar="FILE.smoe", help="the bitstream to write")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--kernels", type=positive_int, default=None, metavar="N",
                      help="stop sparsification at N kernels or fewer (default: a sixth of the grid)")
    rate.add_argument("--lambda", dest="lam", type=nonnegative_float,
                      default=None, metavar="X", help="constant sparsity weight lambda_S for every step")
    p.add_argument("--iters", type=nonnegative_int, default=None, metavar="N",
                   help="pre-training iterations (default: the preset's)")
    p.add_argument("--seconds", type=positive_float,
                   default=None, metavar="S", help="pre-training time budget")
    p.add_argument("--preset", choices=("quick", "paper", "smoke"), default="quick",
                   help="iteration counts (quick: minutes; paper: the paper's schedule, hours)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode an SMoE bitstream to an image")
    p.add_argument("file", metavar="FILE.smoe")
    p.add_argument("--out", required=True, metavar="OUT.png")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("reproduce", help="run the papers' notebooks (papermill) and write results/REPORT.md")
    p.add_argument("--preset", choices=("smoke", "quick", "paper"), default="quick")
    p.add_argument("--only", nargs="+", default=None, metavar="NOTEBOOK", help="run only these notebooks")
    p.add_argument("--images", nargs="+", default=None, metavar="IMAGE",
                   help="replace the preset's images (test-image names, a notebook's own image names such as the "
                        "coding notebook's lena, barbara, peppers, baboon, or paths): run a long preset in pieces")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N", help="Dask workers (local cluster)")
    p.add_argument("--scheduler", default=None, metavar="ADDR", help="address of a running Dask scheduler")
    p.add_argument("--results", default="results", metavar="DIR", help="results folder (default: results)")
    p.add_argument("--build", choices=("fast", "reproducible"), default=None,
                   help="reproducible: the same numbers on every machine with the same CPU model and software (the "
                        "compiled kernels without -march=native and fast-math, PyTorch's baseline CPU kernels, one "
                        "thread per process; slower; across CPU models MKL's vector math still differs: README "
                        "'Reproducible builds'); fast: this CPU's fastest build; default: $SMOE_BUILD (fast when "
                        "unset)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="every notebook's seed (default 0): other random starts, to see how far the numbers move "
                        "with the seed; a results folder holding another seed's results is refused (use --results)")
    p.add_argument("--wait", action="store_true",
                   help="if another smoe reproduce is using the results folder, wait for it to finish (default: "
                        "refuse at once)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("nsmoe", help="N-SMoE ([N-SMoE]): train the network; super-resolve or denoise with a "
                                     "trained checkpoint")
    p.set_defaults(func=cmd_nsmoe)
    nsub = p.add_subparsers(dest="nsmoe_command", metavar="NSMOE_COMMAND")
    q = nsub.add_parser("train", help="train N-SMoE on the fixed training split, with checkpoints (--resume)")
    q.add_argument("--preset", choices=_LazyChoices(".tasks.nsmoe.train", "PRESET_NAMES"), required=True,
                   metavar="PRESET",
                   help="%(choices)s: smoke (seconds), quick (under an hour on 2 cores), paper (hours)")
    q.add_argument("--task", choices=_LazyChoices(".tasks.nsmoe.train", "TASKS"), default="sr2", metavar="TASK",
                   help="sr2 / sr4 (bicubic), denoise (Gaussian sigma 5-50), blind (x2, BSRGAN-plus chain); "
                        "default sr2")
    q.add_argument("--out", default=None, metavar="DIR",
                   help="run folder: <task>.ckpt and <task>.history.csv (default results/nsmoe/<task>_<preset>)")
    q.add_argument("--encoder", choices=("block", "shared"), default=None,
                   help="block: the authors' encoder, each block on its own (the default of denoise and blind); "
                        "shared: one fully convolutional trunk, pooled per kernel cell (our variant; the default of "
                        "sr2 and sr4)")
    q.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    q.add_argument("--seed", type=nonnegative_int, default=None, metavar="N",
                   help="seed of the weights, crops and degradations (default 0; on --resume, the run's)")
    q.add_argument("--stop-at", dest="stop_at", type=positive_int, default=None, metavar="STEP",
                   help="write a checkpoint and stop after this step (continue with --resume)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_nsmoe_train)

    q = nsub.add_parser("export", help="write a run's checkpoint without its optimizer state (the shipped form: "
                                       "inference only, about a third of the size)")
    q.add_argument("checkpoint", metavar="RUN.ckpt", help="a checkpoint written by smoe nsmoe train")
    q.add_argument("--out", required=True, metavar="FILE.ckpt",
                   help="the weights-only checkpoint to write (e.g. smoe_core/data/nsmoe/sr2.ckpt)")
    q.set_defaults(func=cmd_nsmoe_export)

    for name in ("upscale", "denoise"):
        if name == "upscale":
            q = nsub.add_parser(name, help="super-resolve a gray image x2 / x4 with a trained N-SMoE checkpoint")
        else:
            q = nsub.add_parser(name, help="denoise a gray image with a trained N-SMoE checkpoint")
        q.add_argument("image", metavar="IMAGE", help="an image file (read as gray; 8- or 16-bit)")
        if name == "upscale":
            q.add_argument("--scale", type=int, choices=(2, 4), required=True, help="2 or 4")
            q.add_argument("--blind", action="store_true",
                           help="the image has unknown degradations (blur, noise, JPEG): use the blind checkpoint "
                                "(x2)")
        else:
            level = q.add_mutually_exclusive_group(required=True)
            level.add_argument("--sigma", type=nonnegative_float, default=None, metavar="S",
                               help="the image's noise level (0-255 scale), checked against the checkpoint's "
                                    "training range")
            level.add_argument("--blind", action="store_true", help="the noise level is unknown")
        q.add_argument("--out", required=True, metavar="OUT.png", help="the result (16-bit if the input is)")
        q.add_argument("--checkpoint", default=None, metavar="FILE",
                       help="a checkpoint from smoe nsmoe train (default: the shipped one, "
                            "smoe_core/data/nsmoe/<task>.ckpt)")
        q.add_argument("--export-kernels", dest="export_kernels", default=None, metavar="MODEL.npz",
                       help="also write the predicted kernels as an SMoE model file (smoe render MODEL.npz --scale S)")
        q.add_argument("--stride", type=positive_int, default=None, metavar="N",
                       help="LR pixels between the blocks' corners, 1 to the block size (default: the network's test "
                            "stride, 4 as the authors' tests (overlap 12), 8 for the super-resolution networks); "
                            "the run time scales with 1 / stride^2")
        q.add_argument("--chunk", type=positive_int, default=None, metavar="N",
                       help="blocks encoded at a time (bounds memory: about 0.4 GB at x4 with the authors' block "
                            "encoder; default 64, 512 with the shared encoder)")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")
        q.set_defaults(func=cmd_nsmoe_upscale if name == "upscale" else cmd_nsmoe_denoise)
    return parser


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg


def _error(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (``smoe info m.npz | head -1``)."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _silence_stdout() -> None:
    """Points standard output at /dev/null, so that the interpreter's flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, already reported)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if getattr(args, "func", None) is None:
        parser.print_usage(sys.stderr)
        _error("give a command: fit, render, info, bench, denoise, upscale, encode, decode, reproduce or nsmoe")
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            rc = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return rc
        except BrokenPipeError as exc:
            if not _stdout_closed():
                _error(_one_line(exc))
                return 1
            _silence_stdout()
            return 141
        except KeyboardInterrupt:
            # a notebook cut short leaves nbclient tasks whose "exception was never retrieved" asyncio would
            # log with a traceback when they are collected: the one line below says it all
            logging.getLogger("asyncio").disabled = True
            _error("interrupted")
            return 130
        except ModuleNotFoundError as exc:  # an optional dependency (extras: studies, parallel, gpu)
            _error(f"{_one_line(exc)}: install the optional dependencies, e.g. pip install 'smoe-core[studies]'")
            return 1
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, ValueError) as exc:
            _error(_one_line(exc))
            return 2
        except (OSError, RuntimeError, ArithmeticError, MemoryError) as exc:
            _error(_one_line(exc))
            return 1


if __name__ == "__main__":
    sys.exit(main())
