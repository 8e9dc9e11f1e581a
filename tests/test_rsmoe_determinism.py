"""A denoising row (restoration.run_denoise_item) is a deterministic function of its grid item: the same numbers when
computed twice, with any torch / BM3D thread count, serially or on Dask workers (the ``seconds`` column aside).

The quick preset's denoising table used to differ from run to run in some BM3D rows (by up to 1e-6 dB in PSNR):
the bm3d package's default profile runs a multi-threaded aggregation whose result depends on the order its
threads finish and on their number."""
import numpy as np
import pandas as pd
import pytest

from smoe_core.studies import r_smoe_restoration as restoration
from smoe_core.parallel import run_tasks, torch_threads

pytest.importorskip("bm3d")

VALUE_COLUMNS = ["method", "models", "psnr", "ssim", "note"]  # everything but the timing


def _items():
    kw = dict(crop=48, models=2, iters=3, baselines=["bm3d", "nlm", "tv"], seed=0)
    return (restoration.denoise_items(["peppers"], [25], channels=["gray"], **kw)
            + restoration.denoise_items(["peppers"], [25], channels=["rgb"], **kw))


def _table(results) -> pd.DataFrame:
    return pd.concat([pd.DataFrame(rows)[VALUE_COLUMNS] for rows in results], ignore_index=True)


def _assert_identical(a: pd.DataFrame, b: pd.DataFrame):
    assert list(a["method"]) == list(b["method"]) and list(a["note"]) == list(b["note"])
    for col in ("models", "psnr", "ssim"):  # bit for bit, not approximately
        np.testing.assert_array_equal(a[col].to_numpy(float), b[col].to_numpy(float), err_msg=col)


def test_denoise_row_independent_of_repeats_and_thread_counts(monkeypatch):
    import bm3d

    items = _items()
    runs = []
    # torch threads and the bm3d package's default thread count (0 = one per CPU) both varied
    for torch_n, bm3d_default in ((1, 1), (2, 2), (2, 0)):
        monkeypatch.setattr(bm3d.BM3DProfile, "num_threads", bm3d_default)
        with torch_threads(torch_n):
            runs.append(_table([restoration.run_denoise_item(it) for it in items]))
    assert set(runs[0]["method"]) >= {"noisy", "smoe S=1", "smoe S=2", "bm3d", "nlm", "tv"}
    assert runs[0]["psnr"].notna().all()
    for other in runs[1:]:
        _assert_identical(runs[0], other)


def test_denoise_row_serial_equals_dask_workers():
    pytest.importorskip("dask.distributed")
    items = _items()
    serial = _table(run_tasks(restoration.run_denoise_item, items, progress=False))
    on_dask = _table(run_tasks(restoration.run_denoise_item, items, workers=2, progress=False))
    _assert_identical(serial, on_dask)


def test_noise_seed_depends_on_the_image_alone():
    """A piecewise run (``smoe reproduce --images peppers``) adds the same noise to Peppers as the full run:
    the noise seed comes from the image's name, not from its position in the list."""
    from smoe_core.tasks import denoise as dn

    assert [dn.image_number(n) for n in ("barbara", "flower", "parrot", "peppers")] == [0, 1, 2, 3]
    from smoe_core.io import resolve_image_path

    assert dn.image_number(resolve_image_path("peppers")) == 3  # the packaged file keeps its test-image number
    assert dn.image_number("/some/where/Peppers.png") >= 4  # a user's file named like a test image does not
    own = dn.image_number("/data/my_scan.tif")
    assert own >= 4 and own == dn.image_number("/data/my_scan.tif")  # stable for one path
    assert dn.noise_seed(7, "parrot", 25) == 7 + 2000 + 25
    alone = restoration.denoise_items(["peppers"], sigmas=(25,), channels=("gray",))
    full = restoration.denoise_items(["barbara", "flower", "parrot", "peppers"], sigmas=(25,), channels=("gray",))
    crop = dict(crop=32, models=1, iters=1, baselines=[])
    row_alone = restoration.run_denoise_item(dict(alone[0], **crop))
    row_full = restoration.run_denoise_item(dict([it for it in full if it["image"] == "peppers"][0], **crop))
    assert row_alone[0]["method"] == "noisy" and row_alone[0]["psnr"] == row_full[0]["psnr"]
