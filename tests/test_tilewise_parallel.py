"""Tile-wise training and merging (edge-aligned paper Fig. 4) and Dask execution (identical to serial)."""
import numpy as np
import pytest

from smoe_core import SMoE, metrics, render
from smoe_core.init import (INITIALIZERS, InitResult, get_initializer, grid, register_initializer,
                            unregister_initializer)
from smoe_core.parallel import run_tasks
from smoe_core.tasks.tilewise import fit_tilewise, merge_models, split_budget, tile_rectangles


def test_tile_rectangles_cover_the_image_once():
    for kw in (dict(tiles=(3, 4)), dict(tile_size=37)):
        rects = tile_rectangles((100, 130), **kw)
        cover = np.zeros((100, 130), int)
        for y0, y1, x0, x1 in rects:
            cover[y0:y1, x0:x1] += 1
        assert (cover == 1).all()
    with pytest.raises(ValueError):
        tile_rectangles((10, 10), tiles=(0, 2))


def test_split_budget_sums_exactly():
    assert sum(split_budget(1000, [3, 3, 2, 7])) == 1000
    assert split_budget(10, [1, 1]) == [5, 5]


def test_merge_translates_centres_exactly():
    """Two tile models rendered on their tiles equal the merged model rendered on the whole image, away from
    the seam (where the other tile's kernels join the gating)."""
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (32, 64)).astype(np.float32)
    left, right = grid(img[:, :32], 16).model, grid(img[:, 32:], 16).model
    merged = merge_models([left, right], [(0, 0), (32, 0)], (32, 64))
    np.testing.assert_allclose(merged.mu[16:], right.mu + [32, 0])
    full = render(merged)
    np.testing.assert_allclose(full[:, :20], render(left)[:, :20], atol=1e-4)
    np.testing.assert_allclose(full[:, 44:], render(right)[:, 12:], atol=1e-4)


def _square(x):
    return x * x


def test_run_tasks_serial_and_dask_agree():
    assert run_tasks(_square, range(6), progress=False) == [0, 1, 4, 9, 16, 25]
    assert run_tasks(_square, range(6), workers=2, progress=False) == [0, 1, 4, 9, 16, 25]


def _malloc_trim_threshold(_):
    import os

    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_our_clusters_keep_glibcs_malloc_trim_threshold(monkeypatch):
    """Dask's workers get MALLOC_TRIM_THRESHOLD_=65536 unless told otherwise (1.6-1.8x slower tasks here:
    smoe_core.parallel's docstring); run_tasks' and local_cluster's workers do not, unless asked."""
    from dask.distributed import Client

    from smoe_core.parallel import local_cluster

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert run_tasks(_malloc_trim_threshold, range(2), workers=2, progress=False) == [None, None]
    for trim, expected in ((False, None), (True, "65536")):
        cluster = local_cluster(1, dask_malloc_trim=trim)
        try:
            with Client(cluster) as client:
                assert client.submit(_malloc_trim_threshold, 0).result() == expected
        finally:
            cluster.close()
    with pytest.raises(ValueError, match="workers must be >= 1"):
        local_cluster(0)


def smooth_image(H=48, W=64):
    yy, xx = np.mgrid[0:H, 0:W]
    return np.clip(0.5 + 0.3 * np.sin(xx / 6.0 + yy / 9.0) + 0.15 * (xx > W / 2), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def dask_client():
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_as_smoe_serial_equals_dask(dask_client):
    """Algorithm 1 split into chunks on two Dask workers gives the serial run's model exactly."""
    from smoe_core.init import as_smoe

    img = smooth_image(48, 64)
    labels = np.ones((48, 64), np.int32)
    labels[:, 32:] = 2
    labels[30:, :20] = 3
    kw = dict(labels=labels, epochs=40, checkpoint=20, max_kernels=20, progress=False, seed=1)
    a, rec_a = as_smoe(img, **kw)
    b, rec_b = as_smoe(img, scheduler=dask_client, **kw)
    for k in ("mu", "chol", "pi", "experts"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert rec_a["n_segments"] == 3


def test_tilewise_serial_equals_dask_and_improves(dask_client):
    img = smooth_image()
    kw = dict(tiles=(2, 2), tile_iters=30, finetune_iters=20, sparsity=0.5, prune_below=0.05, progress=False,
              lr={"pi": 2e-2})
    a, rec_a = fit_tilewise(img, 64, **kw)
    b, rec_b = fit_tilewise(img, 64, scheduler=dask_client, **kw)
    for k in ("mu", "chol", "pi", "experts"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert rec_a["n_tiles"] == 4 and len(rec_a["tiles"]) == 4
    assert rec_a["merged_kernels"] <= 64
    # the merged model's kernels sit inside their tiles
    assert (a.mu[:, 0] > -5).all() and (a.mu[:, 0] < 69).all()
    init_psnr = metrics.psnr(render(grid(img, 64).model), img)
    assert metrics.psnr(render(a), img) > init_psnr + 2


def test_user_initializer_registers_and_runs_tilewise():
    def centre_kernel(image, n_kernels, **kw):
        H, W = image.shape[:2]
        m = SMoE(np.array([[W / 2, H / 2]], np.float32), np.array([[0.1, 0.0, 0.1]], np.float32),
                 np.ones(1, np.float32), np.array([[float(image.mean())]], np.float32), image_shape=(H, W))
        return InitResult(m, dict(method="centre", seconds=0.0, n_kernels=1))

    register_initializer("centre_test", centre_kernel, overwrite=True)
    assert get_initializer("centre_test") is centre_kernel and "centre_test" in INITIALIZERS
    with pytest.raises(ValueError, match="exists"):
        register_initializer("grid", centre_kernel)
    with pytest.raises(ValueError, match="unknown initializer"):
        get_initializer("nope")
    model, rec = fit_tilewise(smooth_image(32, 32), 4, initializer="centre_test", tiles=(2, 2), tile_iters=2,
                              finetune_iters=1, progress=False)
    assert model.n_kernels == 4
    unregister_initializer("centre_test")
    assert "centre_test" not in INITIALIZERS


def test_a_user_initializer_reaches_the_dask_workers(dask_client):
    """A Dask worker is a fresh process that knows only the built-in initializers: an initializer registered here
    (as the compare_initializers notebook registers its own ``wide_grid``; a closure, so a worker cannot import it)
    travels with the tasks (smoe_core.init.carry_initializers via smoe_core.parallel.add_worker_context) and the
    tile fits on Dask equal the serial ones."""
    halve = 2.0

    def narrow_grid(image, n_kernels, **kw):
        model, record = grid(image, n_kernels)
        return InitResult(model.replace(chol=model.chol * halve), dict(record, method="narrow_grid"))

    assert INITIALIZERS.user_infos() == ()
    register_initializer("narrow_grid_test", narrow_grid)
    try:
        assert [i.name for i in INITIALIZERS.user_infos()] == ["narrow_grid_test"]
        kw = dict(initializer="narrow_grid_test", tiles=(2, 2), tile_iters=3, finetune_iters=1, progress=False)
        a, _ = fit_tilewise(smooth_image(32, 32), 16, **kw)
        b, _ = fit_tilewise(smooth_image(32, 32), 16, scheduler=dask_client, **kw)
        for k in ("mu", "chol", "pi", "experts"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
        # the workers ran the registered function, not the built-in grid
        c, _ = fit_tilewise(smooth_image(32, 32), 16, **dict(kw, initializer="grid"))
        assert not np.array_equal(a.chol, c.chol)
    finally:
        unregister_initializer("narrow_grid_test")
    assert INITIALIZERS.user_infos() == ()


def test_worker_context_takes_callables_once():
    from smoe_core.init import carry_initializers
    from smoe_core.parallel import WORKER_CONTEXT, add_worker_context

    with pytest.raises(TypeError, match="wrap must be callable"):
        add_worker_context(3)
    before = list(WORKER_CONTEXT)
    add_worker_context(carry_initializers)  # registered by smoe_core.init already: no second entry
    assert WORKER_CONTEXT == before and WORKER_CONTEXT.count(carry_initializers) == 1


def _blas_and_torch_threads(_):
    import torch
    from threadpoolctl import threadpool_info

    return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}), torch.get_num_threads()


def _lsqr_weights(model_and_image):
    """scipy's LSQR on the RBF design matrix, as smoe_core.init.rbf_weights.rbf_least_squares solves it, in
    float64 (rbf_least_squares returns float32, which hides the last bits on a well-conditioned system)."""
    from scipy.sparse.linalg import lsqr

    from smoe_core.init.rbf_weights import kernel_design_matrix

    model, img = model_and_image
    return lsqr(kernel_design_matrix(model, img.shape), img.ravel().astype(np.float64), damp=1e-3, iter_lim=500)[0]


def _rbf_weights(n_blas, threads_per_task=1):
    """The RBF least-squares weights (scipy's LSQR) of a fixed model and a 160 x 160 image (vectors long enough
    for OpenBLAS to split them), with ``n_blas`` BLAS threads around the task."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(3)
    img = rng.uniform(0, 1, (160, 160)).astype(np.float32)
    with threadpool_limits(n_blas, "blas"):
        return run_tasks(_lsqr_weights, [(grid(img, 400).model, img)], progress=False,
                         threads_per_task=threads_per_task)[0]


def test_tasks_pin_blas_threads_so_lsqr_does_not_depend_on_the_core_count():
    """OpenBLAS splits dot products and norms by its thread count; LSQR's weights moved by 4e-6 between one
    and two BLAS threads (smoe_core.parallel's docstring). A task runs with BLAS and torch held to
    threads_per_task, so the weights are the same whatever the caller's BLAS setting."""
    from threadpoolctl import threadpool_info, threadpool_limits

    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    if not blas:
        pytest.skip("no BLAS library that threadpoolctl controls is loaded")
    with threadpool_limits(2, "blas"):
        assert run_tasks(_blas_and_torch_threads, [0], progress=False, threads_per_task=1) == [([1], 1)]
        assert run_tasks(_blas_and_torch_threads, [0], progress=False, threads_per_task=2) == [([2], 2)]
    np.testing.assert_array_equal(_rbf_weights(1), _rbf_weights(2))
    # the pin is what makes them equal: left alone (threads_per_task=None), the two settings differ
    unpinned = _rbf_weights(1, None), _rbf_weights(2, None)
    assert not np.array_equal(*unpinned)
