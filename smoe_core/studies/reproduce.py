"""``smoe reproduce``: runs the parameterized notebooks with papermill and collects their tables and figures
into ``results/<preset>/<notebook>/`` and ``results/REPORT.md`` (the smoke preset: ``results/smoke/REPORT.md``).

Presets:

- ``smoke``: every notebook on tiny crops, seconds each; part of the test suite.
- ``quick``: the whole comparison on the four images at reduced iterations (the README's main command).
- ``paper``: the papers' settings (hours; resumable: finished grid items are never recomputed).

A notebook runs into a temporary file that is renamed into place when it finishes, so an interrupted run leaves
the previous executed notebook (if any) untouched; its result tables are appended item by item
(:class:`smoe_core.studies.results.ResultsStore`), so a rerun resumes where it stopped.

``build="reproducible"`` (``smoe reproduce --build reproducible``) runs the notebooks in the reproducible
environment (:data:`smoe_core.render.build.REPRODUCIBLE_ENV`: the reproducible build of the compiled kernels,
PyTorch's baseline CPU kernels, MKL's compatible code path, one thread per process), set in this process's
environment for the run, so the notebook kernels and their Dask workers start in it; every row records its
build and PyTorch CPU capability (:data:`smoe_core.studies.results.META_COLUMNS`). Rows already in a table are
reused whatever build wrote them (their ``build`` column says which).

``seed`` (``smoe reproduce --seed N``) sets every notebook's ``seed`` parameter (default
:data:`DEFAULT_SEED`, every notebook's own default): other random starts (K-Means, S-SMoE's placements, the
random experts, training batches), to measure how far the numbers move with the seed
(:mod:`smoe_core.studies.reproducibility`). Finished rows are found by their configuration, not their seed, so
a run refuses a notebook folder that holds another seed's results (:func:`check_seed`): give such a run its own
``results_dir``.

A run holds the lock of its results folder from start to end (:func:`smoe_core.studies.results.results_lock`):
a second run on the same folder refuses at once, naming the pid holding it, or with ``wait=True``
(``smoe reproduce --wait``) waits for it. Images given as paths are passed to the notebooks as absolute paths
(a test image's packaged file by its name). A notebook that fails raises one RuntimeError naming the cell, the
error and the failed notebook kept for inspection. On Ctrl-C the kernel is shut down and its own messages (the
traceback of the interrupted cell) are not relayed.
"""
from __future__ import annotations

import contextlib
import json
import numbers
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from ..io import TEST_IMAGES as IO_TEST_IMAGES
from ..io import image_key, resolve_image_path
from ..render.build import BUILD_ENV, BUILD_MODES, REPRODUCIBLE_ENV
from .results import atomic_write_text, results_lock


def notebook_dir() -> Path:
    """The folder of the notebooks: the top-level ``notebooks/`` of a checkout, installed as the package-data
    package ``smoe_core.notebooks`` (pyproject.toml maps it), so it is found the same way from a checkout, an
    editable install and a regular ``pip install .``; ``$SMOE_NOTEBOOK_DIR`` overrides."""
    env = os.environ.get("SMOE_NOTEBOOK_DIR")
    if env:
        return Path(env)
    import importlib.resources

    try:
        return Path(str(importlib.resources.files("smoe_core.notebooks")))
    except ModuleNotFoundError:  # a checkout on sys.path without an install: the folder beside the package
        return Path(__file__).resolve().parents[2] / "notebooks"

TEST_IMAGES = list(IO_TEST_IMAGES)

#: notebook -> preset -> papermill parameters (merged over the notebook's own defaults).
PRESETS: dict[str, dict[str, dict]] = {}
#: notebook -> image names it knows besides the test images (``--images`` passes them on by name)
NOTEBOOK_IMAGES: dict[str, tuple[str, ...]] = {}


def register_notebook(name: str, presets: dict[str, dict], *, images=()) -> None:
    """Registers a notebook's presets; ``images``: names of its own images (e.g. the coding paper's ``lena``)
    that ``--images`` accepts for it besides the test images and paths."""
    PRESETS[name] = presets
    NOTEBOOK_IMAGES[name] = tuple(str(i).lower() for i in images)


register_notebook("compare_initializers", {
    # tiny centred crops, a handful of iterations: checks that every cell runs (part of the test suite)
    "smoke": dict(images=["peppers", "parrot"], crop=64, budgets={"peppers": 48, "parrot": 48}, iters=15,
                  rbf_initializers=["kmeans", "as_smoe"], matched_rivals=["authors_code_margin2"]),
    # the four images at full size, 200 iterations of global optimization (the README's main command), the grids
    # on two Dask workers (one thread each: the same numbers as serially, parallel.py; the run times of Figs. 9 and
    # 9c are then measured with two tasks side by side on the machine's two cores; the paper preset stays serial);
    # Fig. 7's RBF study runs Fig. 7's own start (least squares) on every image and the starts that only explain the
    # paper's gap (switch, rbf_local) on Peppers alone (on all four images they took about 150 s of the quick
    # preset's 30 minutes; the paper preset runs them on every image)
    "quick": dict(images=TEST_IMAGES, iters=200, grid_workers=2, rbf_explain_images=["peppers"]),
    # the papers' stopping rule (loss decrease below 1e-6), up to 5000 iterations
    "paper": dict(images=TEST_IMAGES, iters=5000, tol=1e-6, paper_protocol_final=True,
                  as_smoe_variants=["authors_code", "authors_code_margin1", "authors_code_margin2",
                                    "authors_code_margin3"],
                  matched_rivals=["authors_code_margin2", "authors_code_margin3"]),
})

register_notebook("as_smoe_segments", {
    # Table I's rise: all nine settings (segments.table1_settings) on the tiny crop: seconds
    "smoke": dict(images=["peppers"], crop=96, thresholds=[40, 50], epochs=[20, 40], workers_list=[0],
                  explain_seeds=[0], breakdown_workers=[1]),
    # Table I's rise: nine settings x 400 epochs on the four images' 1067 CBBs, one seed (5 minutes under load 8)
    "quick": dict(images=TEST_IMAGES, workers_list=[0, 2], explain_seeds=[0]),
    # three seeds per setting
    "paper": dict(images=TEST_IMAGES, workers_list=[0, 1, 2], explain_seeds=[0, 1, 2]),
})

register_notebook("r_smoe", {
    # one tiny crop, a few steps, 2-model fusion: checks that every cell runs (part of the test suite)
    "smoke": dict(images=["peppers"], crop=32, kernels=[16, 64], iters=5, speed_images=["peppers"], speed_crop=32,
                  speed_kernels=[64], speed_repeats=1, denoise_images=["peppers"], denoise_crop=32, sigmas=[25],
                  rgb_sigmas=[25], fusion_models=2, denoise_iters=5, sr_images=["peppers"], sr_crop=48, scales=[2],
                  sr_iters=5, figure_window=24),
    # the four images on centred crops, reduced steps; colour denoising at sigma 25 only (about 5 minutes)
    "quick": dict(images=TEST_IMAGES, crop=96, kernels=[24, 96, 384], iters=100, speed_images=["peppers"],
                  speed_crop=192, speed_kernels=[256, 1024, 4096], speed_repeats=2, denoise_images=TEST_IMAGES,
                  denoise_crop=128, sigmas=[15, 25, 50], rgb_sigmas=[25], sr_images=TEST_IMAGES, sr_crop=192,
                  sr_iters=300, grid_workers=2),
    # larger crops and pools, more steps, full-size speed/memory, denoising and super-resolution (hours)
    "paper": dict(images=TEST_IMAGES, crop=256, kernels=[64, 256, 1024, 4096], iters=500, speed_images=["peppers"],
                  speed_crop=None, speed_kernels=[500, 1000, 2000, 4000], speed_repeats=3,
                  denoise_images=TEST_IMAGES, denoise_crop=None, sigmas=[15, 25, 50], rgb_sigmas=[15, 25, 50],
                  sr_images=TEST_IMAGES, sr_crop=None, figure_window=128, grid_workers=2),
})


register_notebook("edge_aligned", {
    # a tiny crop, a few iterations: checks that every cell runs (part of the test suite)
    "smoke": dict(images=["peppers"], crop=96, budgets={"peppers": 80}, expert_iters=5, tile_iters=15,
                  finetune_iters=15),
    # the four images, Figs. 5/6 at three budgets (0.25x, 0.5x, 1x Table V's), stages capped at 200 iterations;
    # Fig. 5's grid on two Dask workers (one thread each), so Fig. 6's times are one-thread times measured with two
    # tasks side by side on the machine's two cores (the paper preset stays serial)
    "quick": dict(images=TEST_IMAGES, expert_iters=30, budget_factors=[0.25, 0.5, 1.0], tile_iters=200,
                  finetune_iters=200, tol=2e-5, grid_workers=2),
    # the papers' stopping rule (loss decrease below 1e-6), five budgets, AS-SMoE at three thresholds
    "paper": dict(images=TEST_IMAGES, expert_iters=100, budget_factors=[0.25, 0.5, 1.0, 1.5, 2.0],
                  as_smoe_d_th=[30, 40, 50], tile_iters=2000, finetune_iters=5000, tol=1e-6),
})


#: the coding paper's images (smoe_core/data/coding; the keys of smoe_core.studies.coding_paper.CODING_IMAGES,
#: not imported here to keep `smoe reproduce` from loading the codec at start)
CODING_IMAGES = ["lena", "barbara", "peppers", "baboon"]
#: sparsification steps of the coding notebook's paper preset: the paper's 50, continued at the same x spacing
PAPER_CONTINUED_STEPS = 60
#: the coding notebook's rate points: a snapshot when the kernel count first falls to or below each of these
#: fractions of the grid (geometric, 0.6 down to 0.035 in 10: equal ratios, so points about evenly spread in
#: log-rate; smoe_core.studies.coding_paper.geometric_fractions(0.6, 0.035, 10), written out here to keep
#: `smoe reproduce` from loading the codec at start). On 128 x 128 crops (1024 kernels, about 65 bits per
#: kernel) 0.35 of the grid is about 1.5 bpp and 0.035 about 0.15 bpp; the paper's Fig. 2 has 0.17 of the 512 x
#: 512 grid (K = 2717) at 0.6 bpp and 0.34 (K = 5496) at 1.12 bpp.
CODING_SNAPSHOT_FRACTIONS = [round(0.6 * (0.035 / 0.6) ** (i / 9), 4) for i in range(10)]

# Every coding preset sets every parameter of the SMoE rate points (schedule, schedule_overrides, snapshots,
# snapshot_kernel_fractions, min_kernel_fraction): the notebook's defaults are the paper preset's, and a preset
# that left one out would run with the paper's (a quick run once inherited the paper's x ramp up to 18.2 and lost
# all but 11 of its 1024 kernels by step 14).
register_notebook("coding", {
    # one 48 x 48 crop, the codec's smoke schedule with 8 steeper sparsification steps, stopped at 10% of the
    # grid (on Lena and Peppers: 141, ~40 and ~12 kernels after steps 4, 5, 6 of 144, so the snapshots at 99%
    # and 50% of the grid and the final model lie at about 4.8, 1.9 and 0.9 bpp; the codec's own 4 gentle steps
    # remove no kernel), a few JPEG qualities, one thread: checks that every cell runs (part of the test suite)
    "smoke": dict(images=["lena"], crop=48, prefilter_full_image=False, schedule="smoke",
                  schedule_overrides=dict(sparsify_steps=8, x_range=[0.3, 1.2], sparsify_pi_rate=0.03),
                  snapshots=[], snapshot_kernel_fractions=[0.99, 0.5], min_kernel_fraction=0.1,
                  jpeg_qualities=[2, 5, 10, 20, 50, 90], fig2_window=48, threads=1),
    # the four images on 128 x 128 centre crops (each filtered alone), the codec's quick schedule (x in [0.1, 3],
    # 50 steps of 40 iterations at the pi rate 5e-4) with 3000 pre-training iterations (the codec's 1500 gave
    # about 0.01-0.02 lower SSIM-611 at mid rates on Lena; 6000 little more) and the paper's 500 fine-tuning
    # iterations per point, pruned every 10 iterations so that a step that removes many kernels is cut into up to
    # 4 points; snapshots at the kernel fractions above (614, 448, ..., 36 of 1024 kernels); the path stops at 3%
    # of the grid (31 kernels). Measured: every image and training gives 11 points, 9 of them in 0.15-1.5 bpp; a
    # training takes about 50 s of CPU (about 5000 iterations at 6-7 ms); QAT and PTQ on two Dask workers
    "quick": dict(images=CODING_IMAGES, crop=128, prefilter_full_image=False, schedule="quick",
                  schedule_overrides=dict(pretrain_iters=3000, finetune_iters=500, prune_every=10), snapshots=[],
                  snapshot_kernel_fractions=CODING_SNAPSHOT_FRACTIONS, min_kernel_fraction=0.03, grid_workers=2),
    # the full images filtered whole, the codec's paper schedule (10k pre-training iterations, steps of 1000 at
    # the pi rate 2e-5, 500 fine-tuning iterations per point) with its x ramp continued past the paper's 50 steps
    # at the same spacing (x_k = 0.1 + k 14.9 / 49: the first 50 steps are the paper's) until the path stops at 3%
    # of the grid: on a 64 x 64 Lena crop the paper's 50 steps left 91% of the kernels after step 29, 49% after
    # step 40 and 12% after step 49 (about 0.4 bpp at 512 x 512), so the rates below need the continuation;
    # snapshots at the kernel fractions above (checked at every pruning, every 100 iterations). One iteration at
    # 512 x 512 (16384 kernels) took 65-90 ms of CPU on one core (`smoe bench --coding`) on one machine and
    # 186-200 ms on another of the same kind (idle, session 8); with the two trainings side by side each got about
    # half a core's speed (pre-training, 10k iterations, took 34 min of CPU per training). A training (10k + up to
    # 60k + 500 per point, about 76k iterations, cheaper as kernels are pruned) takes 2-4 CPU hours, an image
    # (QAT and PTQ, run side by side on two workers) more than one working session: run image by image
    # (--images lena); the trainings resume from their state files (README)
    "paper": dict(images=CODING_IMAGES, crop=None, prefilter_full_image=True, schedule="paper",
                  schedule_overrides=dict(sparsify_steps=PAPER_CONTINUED_STEPS,
                                          x_range=[0.1, 0.1 + (PAPER_CONTINUED_STEPS - 1) * 14.9 / 49]),
                  snapshots=[], snapshot_kernel_fractions=CODING_SNAPSHOT_FRACTIONS, min_kernel_fraction=0.03,
                  grid_workers=2),
}, images=CODING_IMAGES)


register_notebook("n_smoe", {
    # two test images, 64 px crops, a network trained here for 4 smoke steps (seconds): checks that every cell runs
    # (its numbers say nothing about N-SMoE; part of the test suite)
    "smoke": dict(tasks=["sr2", "sr4", "denoise", "blind"], images=["693_UNCR.dcm", "retina"], crop=64, sigmas=[25],
                  train_preset="smoke", smoe_iters=20, smoe_models=2, blind_draws=2, figure_window=32,
                  ceiling_tasks=["sr2"], ceiling_kernels=[16], ceiling_crops=2, ceiling_iters=5),
    # the shipped checkpoints (smoe nsmoe train --preset quick) on the five test images, 128 px centre crops, the
    # CLI's defaults for the fitted-SMoE baselines (smoe upscale: 500 iterations; smoe denoise --models 8), blind
    # restoration over 8 degradation draws per image; the grids on two Dask workers (one thread each, as serially)
    "quick": dict(tasks=["sr2", "sr4", "denoise", "blind"], images=None, crop=128, sigmas=[15, 25, 50],
                  checkpoint_dir=None, train_preset=None, smoe_iters=None, smoe_models=8, blind_draws=8,
                  figure_window=48, grid_workers=2,
                  ceiling_tasks=["sr2", "sr4"], ceiling_kernels=[16, 32], ceiling_bases=["none", "bicubic"],
                  ceiling_crops=16, ceiling_iters=400),
    # retrains every task with the paper preset (hours each on 2 cores; resumable) and tests on 512 px crops (blind:
    # 4 draws per image, the block encoder taking minutes per 512 px input)
    "paper": dict(tasks=["sr2", "sr4", "denoise", "blind"], images=None, crop=512, sigmas=[15, 25, 50],
                  train_preset="paper", smoe_iters=None, smoe_models=8, blind_draws=4, figure_window=96, grid_workers=2,
                  ceiling_tasks=["sr2", "sr4", "blind"], ceiling_kernels=[16, 32], ceiling_bases=["none", "bicubic"],
                  ceiling_crops=48, ceiling_iters=1000),
})

def available_notebooks() -> list[str]:
    return [n for n in PRESETS if (notebook_dir() / f"{n}.ipynb").is_file()]


def notebook_image(name_or_path, known=()) -> str:
    """How an image is handed to a notebook: a test image by its name (also when given by the path of its
    packaged file), a name in ``known`` (the notebook's own images, :data:`NOTEBOOK_IMAGES`) as it is, any
    other image by its absolute path (the notebook may run in another folder)."""
    if str(name_or_path).lower() in known and not Path(str(name_or_path)).is_file():
        return str(name_or_path).lower()
    path = resolve_image_path(name_or_path)  # FileNotFoundError for neither
    key = image_key(path)
    return key if key in IO_TEST_IMAGES else str(path.resolve())


#: every notebook's own default ``seed`` parameter (tests/test_notebooks.py checks it)
DEFAULT_SEED = 0


def check_seed(seed) -> int:
    """``seed`` as an int (None: :data:`DEFAULT_SEED`); ValueError for anything but a non-negative integer."""
    if seed is None:
        return DEFAULT_SEED
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**31:
        raise ValueError(f"seed must be an integer from 0 to 2**31 - 1, got {seed!r}")
    return int(seed)


def results_seed(folder) -> int | None:
    """The seed of the run that wrote a notebook's results ``folder`` (its manifest.json; None when there is
    none or it names none)."""
    p = Path(folder) / "manifest.json"
    if not p.is_file():
        return None
    try:
        seed = json.loads(p.read_text()).get("parameters", {}).get("seed")
    except (OSError, ValueError, AttributeError):
        return None
    return None if seed is None else int(seed)


def check_results_seed(folder, seed: int) -> None:
    """ValueError when ``folder`` holds results of a seed other than ``seed`` (module docstring)."""
    held = results_seed(folder)
    if held is not None and held != seed:
        raise ValueError(f"{folder} holds the results of seed {held}; a run with seed {seed} would be mixed into "
                         "them (finished rows are found by configuration, not seed): give it another results folder "
                         "(--results)")


def notebook_parameters(name: str, preset: str, *, results_dir, workers=None, scheduler=None,
                        images=None, seed=None) -> dict:
    """The papermill parameters of a notebook at a preset. ``images`` (test-image names or paths) replaces the
    preset's image list, to run a long preset in pieces: results of every piece land in the same tables (the
    grids are keyed by image), and a later full run only computes what is missing. Paths are made absolute
    (:func:`notebook_image`). ``seed``: the notebook's ``seed`` parameter (None: its default)."""
    if name not in PRESETS:
        raise ValueError(f"unknown notebook {name!r} (known: {', '.join(PRESETS)})")
    if preset not in PRESETS[name]:
        raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS[name])})")
    params = dict(PRESETS[name][preset])
    if images:
        params["images"] = [notebook_image(i, NOTEBOOK_IMAGES.get(name, ())) for i in images]
    params.update(preset=preset, results_dir=str(Path(results_dir).resolve()), workers=workers or 0,
                  scheduler=scheduler or "")
    if seed is not None:
        params["seed"] = check_seed(seed)
    return params


def run_notebook(name: str, preset: str, *, results_dir="results", workers=None, scheduler=None,
                 progress: bool = True, images=None, seed=None) -> Path:
    """Executes ``notebooks/<name>.ipynb`` with the preset's parameters; returns the executed notebook's path."""
    import papermill

    src = notebook_dir() / f"{name}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"no notebook {src}")
    out_dir = Path(results_dir) / preset / name
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.ipynb"
    tmp = out_dir / f".{name}.{os.getpid()}.tmp.ipynb"
    params = notebook_parameters(name, preset, results_dir=results_dir, workers=workers, scheduler=scheduler,
                                 images=images, seed=seed)
    check_results_seed(out_dir, check_seed(seed))
    failed = out_dir / f"{name}.failed.ipynb"
    relay = _StderrRelay()
    try:
        with relay.muted_on_sigint():
            papermill.execute_notebook(str(src), str(tmp), parameters=params, progress_bar=progress,
                                       cwd=os.getcwd(), kernel_name="python3", log_output=False,
                                       kernel_manager_class=_kernel_manager_class(relay))
        os.replace(tmp, out)
    except papermill.PapermillExecutionError as exc:
        raise RuntimeError(f"notebook {name} failed in cell {exc.exec_count}: {exc.ename}: "
                           f"{' '.join(str(exc.evalue).split())} (see {failed})") from None
    finally:
        if tmp.exists():
            # keep the failed execution next to the results for inspection, under a name that says so
            os.replace(tmp, failed)
    return out


class _StderrRelay:
    """Copies the kernel's stderr to ours, until Ctrl-C: the kernel is then interrupted and shut down, and what
    it says about that (a ZMQError traceback from the interrupted cell's reply) is not relayed."""

    def __init__(self):
        self.muted = threading.Event()

    def attach(self, stream) -> None:
        threading.Thread(target=self._pump, args=(stream,), daemon=True, name="kernel-stderr").start()

    def _pump(self, stream) -> None:
        try:
            fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            fd = 2
        while True:  # drains the pipe to its end whatever happens to our stderr (a full pipe would block the kernel)
            try:
                chunk = os.read(stream.fileno(), 65536)
            except OSError:
                return
            if not chunk:
                return
            while chunk and not self.muted.is_set():
                try:
                    chunk = chunk[os.write(fd, chunk):]
                except OSError:
                    break

    def muted_on_sigint(self):
        """A context in which SIGINT mutes the relay, then raises KeyboardInterrupt as usual."""
        import contextlib

        @contextlib.contextmanager
        def ctx():
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = signal.getsignal(signal.SIGINT)
            watchdog = [None]

            def on_sigint(signum, frame):
                if previous == signal.SIG_IGN:
                    return
                self.muted.set()
                if watchdog[0] is None:
                    watchdog[0] = interrupt_watchdog(INTERRUPT_GRACE_SECONDS)
                if callable(previous):
                    return previous(signum, frame)  # Python's default handler raises KeyboardInterrupt
                raise KeyboardInterrupt

            signal.signal(signal.SIGINT, on_sigint)
            try:
                yield
            finally:
                signal.signal(signal.SIGINT, previous)
                if watchdog[0] is not None:  # the interrupt got out of the notebook run: no forced exit
                    watchdog[0].cancel()

        return ctx()


#: after Ctrl-C, the seconds the notebook run may take to stop its kernel before the process ends itself
INTERRUPT_GRACE_SECONDS = 20.0


def interrupt_watchdog(seconds: float) -> threading.Timer:
    """A started daemon timer that, unless cancelled, prints ``smoe: error: interrupted`` and ends the process with
    status 130 after ``seconds``: a KeyboardInterrupt raised inside papermill / nbclient's event loop can hang in
    the kernel's clean-up (seen as an intermittent test timeout), and Ctrl-C must always end the run. The lock of
    the results folder is an OS lock, released with the process; the kernel received the same SIGINT."""
    def force_exit():
        try:
            sys.stderr.write("smoe: error: interrupted\n")
            sys.stderr.flush()
        finally:
            os._exit(130)

    timer = threading.Timer(float(seconds), force_exit)
    timer.daemon = True
    timer.start()
    return timer


def _kernel_manager_class(relay: _StderrRelay):
    """jupyter_client's kernel manager, launching the kernel with its stderr relayed by ``relay``."""
    from jupyter_client.manager import AsyncKernelManager

    class RelayedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kw["stderr"] = subprocess.PIPE
            await super()._async_launch_kernel(kernel_cmd, **kw)
            relay.attach(self.provisioner.process.stderr)

    return RelayedKernelManager


#: the presets results/REPORT.md reports; the smoke preset's runs (the test suite's, and results/smoke, the
#: fixture of tests/test_reproducibility.py) get their own report, results/smoke/REPORT.md
REPORT_PRESETS = ("quick", "paper")


def build_report(results_dir="results", presets=REPORT_PRESETS, out=None) -> Path:
    """``out`` (default ``<results_dir>/REPORT.md``): every notebook's ``report.md`` fragment of ``presets``,
    preset by preset, with their links made relative to ``out``'s folder."""
    results_dir = Path(results_dir)
    out = Path(out) if out is not None else results_dir / "REPORT.md"
    parts = ["# Reproduction report\n",
             "Our numbers beside the published ones, written by `smoe reproduce`; each section comes from one "
             "notebook run (its executed notebook, CSV tables and figures are in the same folder).\n"]
    for preset in presets:
        frags = sorted((results_dir / preset).glob("*/report.md"))
        if not frags:
            continue
        parts.append(f"\n## Preset `{preset}`\n")
        for frag in frags:
            rel = Path(os.path.relpath(frag.parent, out.parent))
            text = frag.read_text()
            parts.append(text.replace("](./", f"]({rel.as_posix()}/"))
    # python -m smoe_core.studies.reproducibility spread --out results/reproducibility[/<name>]: one fragment per
    # kind of perturbation, the top-level one first, then the folders by name
    spread_dir = results_dir / "reproducibility"
    spreads = [spread_dir / "report.md", *sorted(spread_dir.glob("*/report.md"))]
    if presets == REPORT_PRESETS:
        parts += ["\n" + f.read_text() for f in spreads if f.is_file()]
    return atomic_write_text(out, "\n".join(parts))


def build_environment_variables(build: str | None) -> dict:
    """The environment variables a run in build mode ``build`` sets: :data:`smoe_core.render.build.
    REPRODUCIBLE_ENV` for "reproducible", ``SMOE_BUILD=fast`` for "fast", nothing for None (the environment as
    it is)."""
    if build is None:
        return {}
    if build not in BUILD_MODES:
        raise ValueError(f"build must be one of {', '.join(BUILD_MODES)}, got {build!r}")
    return dict(REPRODUCIBLE_ENV) if build == "reproducible" else {BUILD_ENV: "fast"}


@contextlib.contextmanager
def build_environment(build: str | None):
    """Sets :func:`build_environment_variables` in this process's environment for the ``with`` block (the
    processes started in it inherit them), then restores the previous values."""
    env = build_environment_variables(build)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def reproduce(preset: str = "quick", *, only=None, results_dir="results", workers=None, scheduler=None,
              progress: bool = True, images=None, wait: bool = False, build: str | None = None,
              seed=None) -> Path:
    """Runs the notebooks (all, or ``only``) at ``preset`` and rebuilds results/REPORT.md; returns its path.
    ``images`` replaces the presets' image lists (:func:`notebook_parameters`). ``build``: "reproducible" runs
    the notebooks in the reproducible environment, "fast" in the fast build, None as the environment is
    (module docstring). The run holds the lock of ``results_dir`` (module docstring):
    :class:`~smoe_core.studies.results.ResultsInUse` when another run holds it, unless ``wait``. ``seed``: every
    notebook's seed (module docstring); a notebook folder holding another seed's results is refused before any
    notebook runs."""
    if preset not in ("smoke", "quick", "paper"):
        raise ValueError(f"unknown preset {preset!r} (known: smoke, quick, paper)")
    build_environment_variables(build)  # an unknown build refused before any work
    names = available_notebooks()
    if only:
        only = [only] if isinstance(only, str) else list(only)
        unknown = [n for n in only if n not in PRESETS]
        if unknown:
            raise ValueError(f"unknown notebook(s) {unknown} (known: {', '.join(PRESETS)})")
        names = [n for n in names if n in only]
    if not names:
        raise FileNotFoundError(f"no notebooks to run in {notebook_dir()}")
    if images:  # a clear error before any notebook starts; relative paths made absolute here
        known = {i for n in names for i in NOTEBOOK_IMAGES.get(n, ())}
        images = [notebook_image(i, known) for i in images]
        for n in names:
            foreign = [i for i in images if i in known and i not in NOTEBOOK_IMAGES.get(n, ()) and i not in TEST_IMAGES]
            if foreign:
                owners = ", ".join(m for m in names if set(foreign) & set(NOTEBOOK_IMAGES.get(m, ())))
                raise FileNotFoundError(f"notebook {n} does not know the image(s) {foreign} (they belong to "
                                        f"{owners}"
                                        "; run them with --only)")

    seed_value = check_seed(seed)
    for n in names:
        check_results_seed(Path(results_dir) / preset / n, seed_value)

    def waiting(holder):
        print(f"waiting for results folder {results_dir}, in use by another run ({holder})", file=sys.stderr,
              flush=True)

    with results_lock(results_dir, wait=wait, on_wait=waiting), build_environment(build):
        for name in names:
            t0 = time.perf_counter()
            before = _duplicate_counts(Path(results_dir) / preset / name)
            run_notebook(name, preset, results_dir=results_dir, workers=workers, scheduler=scheduler,
                         progress=progress, images=images, seed=seed)
            _report_repairs(Path(results_dir) / preset / name, before)
            if progress:
                print(f"{name} ({preset}): {time.perf_counter() - t0:.0f} s")
        if preset == "smoke":
            return build_report(results_dir, ("smoke",), out=Path(results_dir) / "smoke" / "REPORT.md")
        return build_report(results_dir)


def _duplicate_counts(folder: Path) -> dict[Path, int]:
    """Rows in each ``*.duplicates.csv`` of a notebook's folder (the rows its tables have set aside)."""
    out = {}
    for p in folder.glob("*.duplicates.csv"):
        try:
            with open(p) as f:
                out[p] = max(0, sum(1 for _ in f) - 1)
        except OSError:
            pass
    return out


def _report_repairs(folder: Path, before: dict[Path, int]) -> None:
    """Warns about the duplicate rows the notebook's run removed from its tables (kept in the .duplicates.csv)."""
    for p, n in sorted(_duplicate_counts(folder).items()):
        moved = n - before.get(p, 0)
        if moved > 0:
            table = p.with_name(p.name[:-len(".duplicates.csv")] + ".csv")
            warnings.warn(f"{table}: {moved} duplicate row(s) removed (the latest row of each configuration kept; "
                          f"the removed rows are in {p.name})", stacklevel=2)
