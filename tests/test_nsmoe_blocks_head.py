"""N-SMoE blocks and kernel head (smoe_core.tasks.nsmoe.blocks, .head): cut + stitch, the closed-form Cholesky of
(R S)(R S)^T, both gatings against dense formulas, and the exported models rendered by ``smoe render``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smoe_core.cli import main
from smoe_core.io import load_image
from smoe_core.model import SMoE
from smoe_core.render import render, render_many
from smoe_core.tasks.nsmoe import blocks as blk
from smoe_core.tasks.nsmoe import head as hd


# ---------------------------------------------------------------------- blocks
def test_block_starts_cover_the_side():
    assert blk.block_starts(32, 16, 2) == list(range(0, 17, 2))
    assert blk.block_starts(21, 16, 4) == [0, 4, 5]  # one more block flush with the border
    assert blk.block_starts(16, 16, 4) == [0]
    with pytest.raises(ValueError):
        blk.block_starts(15, 16, 2)
    assert blk.n_blocks((32, 32)) == 81 and blk.overlap(16, 2) == 14 and blk.overlap(16, blk.TEST_STRIDE) == 12


@pytest.mark.parametrize("shape,stride", [((32, 40), 2), ((21, 35), 4), ((16, 16), 3), ((30, 17), 16)])
def test_cut_and_stitch_of_the_identity_decoder_reproduce_the_image(shape, stride):
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, *shape, generator=gen, dtype=torch.float64)
    blocks, origins = blk.cut(img, 16, stride)
    assert blocks.shape == (2 * origins.shape[0], 3, 16, 16)
    # block i of image b is the image at its origin
    n = origins.shape[0]
    r, c = (int(v) for v in origins[n - 1])
    assert torch.equal(blocks[2 * n - 1], img[1, :, r:r + 16, c:c + 16])
    out, weight = blk.stitch(blocks, origins, shape, 1, return_weight=True)
    assert torch.allclose(out, img, atol=1e-12, rtol=0)
    assert weight.min() >= 1  # every pixel covered
    # at scale 2, a nearest-neighbour "decoder" gives the nearest-upsampled image
    up = F.interpolate(blocks, scale_factor=2, mode="nearest")
    out2, w2 = blk.stitch(up, origins, shape, 2, return_weight=True)
    assert torch.allclose(out2, F.interpolate(img, scale_factor=2, mode="nearest"), atol=1e-12, rtol=0)
    assert w2.shape == (2 * shape[0], 2 * shape[1]) and w2.min() >= 1


def test_stitch_averages_overlaps_and_is_differentiable():
    img = torch.zeros(1, 1, 18, 16)
    blocks, origins = blk.cut(img, 16, 2)  # two blocks, rows 0 and 2
    vals = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1).expand(2, 1, 16, 16).clone().requires_grad_()
    out, weight = blk.stitch(vals, origins, (18, 16), 1, return_weight=True)
    assert torch.allclose(out[0, 0, 0], torch.full((16,), 1.0))
    assert torch.allclose(out[0, 0, 17], torch.full((16,), 3.0))
    assert torch.allclose(out[0, 0, 5], torch.full((16,), 2.0)) and weight[5, 0] == 2
    out.sum().backward()
    assert torch.allclose(vals.grad[0, 0, 0], torch.ones(16))
    assert torch.allclose(vals.grad[0, 0, 5], torch.full((16,), 0.5))


# ---------------------------------------------------------------------- precision and Cholesky
def test_closed_form_cholesky_is_numpys_and_positive_definite():
    gen = torch.Generator().manual_seed(1)
    s1 = torch.exp(torch.randn(500, generator=gen, dtype=torch.float64) * 1.5)
    s2 = torch.exp(torch.randn(500, generator=gen, dtype=torch.float64) * 1.5)
    theta = torch.randn(500, generator=gen, dtype=torch.float64) * 4
    P = hd.precision_from_scales(s1, s2, theta)
    ch = hd.chol_from_scales(s1, s2, theta)
    L = np.linalg.cholesky(P.numpy())
    assert np.allclose(ch.numpy(), np.stack([L[:, 0, 0], L[:, 1, 0], L[:, 1, 1]], -1), rtol=1e-9, atol=1e-12)
    assert (np.linalg.eigvalsh(P.numpy()) > 0).all()
    # eigenvalues are s1^2, s2^2; the model's precision from the factor is P
    ev = np.sort(np.linalg.eigvalsh(P.numpy()), 1)
    assert np.allclose(ev, np.sort(torch.stack([s1 ** 2, s2 ** 2], 1).numpy(), 1), rtol=1e-9)
    m = SMoE(torch.zeros(500, 2, dtype=torch.float64), ch, torch.ones(500, dtype=torch.float64),
             torch.zeros(500, 1, dtype=torch.float64))
    assert torch.allclose(m.precision(), P, rtol=1e-10, atol=1e-12)


def _random_kernels(n=3, k=16, block=16, C=1, seed=0, dtype=torch.float64, spread=1.5, slope=None):
    """A head and random raw numbers around its initial grid; ``slope`` (per LR px) makes the experts linear,
    their slopes scaled to that size."""
    gen = torch.Generator().manual_seed(seed)
    head = hd.KernelHead(k, block, C, residual_experts=False, linear_experts=slope is not None)
    raw = head.initial_raw().to(dtype).reshape(1, -1).repeat(n, 1)
    raw = raw + spread * torch.randn(raw.shape, generator=gen, dtype=dtype)
    if slope is not None:
        per = raw.reshape(n, k, -1)
        per[..., hd.N_GEOMETRY + C:] *= slope / spread
    return head, raw


def test_head_keeps_centres_in_the_block_and_scales_in_range():
    head, raw = _random_kernels(n=50, spread=20.0)
    kern = head(raw)
    assert kern.mu.shape == (50, 16, 2) and kern.chol.shape == (50, 16, 3) and kern.experts.shape == (50, 16, 1)
    assert (kern.mu >= -0.5).all() and (kern.mu <= 15.5).all()  # the block's area (closed: sigmoid saturates)
    std = 1 / kern.scales
    assert (std >= head.std_min * (1 - 1e-9)).all() and (std <= head.std_max * (1 + 1e-9)).all()
    assert torch.allclose(kern.pi.sum(-1), torch.ones(50, dtype=raw.dtype))
    assert (torch.linalg.eigvalsh(kern.precision()) > 0).all()


def test_initial_raw_is_a_grid_of_round_kernels():
    for k, (rows, cols) in ((16, (4, 4)), (32, (4, 8)), (9, (3, 3))):
        head = hd.KernelHead(k, 16)
        assert hd.grid_shape(k) == (rows, cols)
        kern = head(head.initial_raw().reshape(1, -1), torch.zeros(1, 1, 16, 16))
        xs = sorted({round(float(v), 4) for v in kern.mu[0, :, 0]})
        ys = sorted({round(float(v), 4) for v in kern.mu[0, :, 1]})
        assert len(xs) == cols and len(ys) == rows
        assert np.allclose(np.diff(xs), 16 / cols, atol=1e-3)
        assert torch.allclose(kern.scales[..., 0], kern.scales[..., 1])
        assert torch.allclose(1 / kern.scales, torch.full_like(kern.scales, 0.5 * 16 / cols), rtol=1e-3)


def test_residual_experts_add_the_lr_value_at_the_centre():
    head = hd.KernelHead(16, 16, residual_experts=True)
    lr = torch.rand(2, 1, 16, 16)
    raw = head.initial_raw().reshape(1, -1).repeat(2, 1)
    kern = head(raw, lr)
    # the grid centres sit at 1.5 + 4 i: bilinear between pixels 1 and 2 (x) and rows 1 and 2 (y)
    expect = lr[:, 0, 1:3, 1:3].mean((-1, -2))
    assert torch.allclose(kern.experts[:, 0, 0], expect, atol=1e-6)
    with pytest.raises(ValueError):
        head(raw)


# ---------------------------------------------------------------------- decoding
def _dense_numpy(kern, scale, gating):
    """Both gatings from their formulas, one pixel at a time in numpy; constant experts, or linear ones
    e_j + S_j (x - mu_j) when the kernels have slopes."""
    mu, P, pi, ex = (t.detach().numpy() for t in (kern.mu, kern.precision(), kern.pi, kern.experts))
    sl = None if kern.slopes is None else kern.slopes.detach().numpy()
    S = int(round(kern.block * scale))
    out = np.zeros((mu.shape[0], ex.shape[2], S, S))
    for n in range(mu.shape[0]):
        for r in range(S):
            for c in range(S):
                x = np.array([(c + 0.5) / scale - 0.5, (r + 0.5) / scale - 0.5])
                d = x - mu[n]
                q = np.einsum("ki,kij,kj->k", d, P[n], d)
                lw = np.log(pi[n]) - 0.5 * q if gating == "smoe" else np.exp(-0.5 * q)
                w = np.exp(lw - lw.max())
                m = ex[n] if sl is None else ex[n] + np.einsum("kcj,kj->kc", sl[n], d)
                out[n, :, r, c] = (w / w.sum()) @ m
    return out


@pytest.mark.parametrize("scale", [2, 4])
def test_both_gatings_match_their_dense_formulas(scale):
    head, raw = _random_kernels(n=2, k=16, block=8, spread=1.0, seed=scale)
    kern = head(raw)
    smoe = hd.decode(kern, scale)
    assert smoe.shape == (2, 1, 8 * scale, 8 * scale) and smoe.dtype == torch.float64
    assert np.allclose(smoe.numpy(), _dense_numpy(kern, scale, "smoe"), atol=2e-5)
    assert torch.allclose(smoe, hd.decode_smoe_dense(kern, scale), atol=2e-5)
    auth = hd.decode(kern, scale, gating="authors")
    assert np.allclose(auth.numpy(), _dense_numpy(kern, scale, "authors"), atol=1e-12)
    with pytest.raises(ValueError):
        hd.decode(kern, scale, gating="log")


def test_authors_gating_caps_gate_ratios_at_e():
    """Two kernels, one far away: our gating gives the near one all the weight; theirs at most e : 1."""
    mu = torch.tensor([[[3.0, 3.0], [7.4, 7.4]]], dtype=torch.float64)
    chol = torch.tensor([[[4.0, 0.0, 4.0], [4.0, 0.0, 4.0]]], dtype=torch.float64)  # narrow kernels
    kern = hd.BlockKernels(mu, chol, torch.tensor([[0.5, 0.5]], dtype=torch.float64),
                           torch.tensor([[[0.0], [1.0]]], dtype=torch.float64), torch.full((1, 2, 2), 4.0),
                           torch.zeros(1, 2), 8)
    ours = hd.decode_smoe_dense(kern, 1)[0, 0, 3, 3]
    theirs = hd.decode_authors(kern, 1)[0, 0, 3, 3]
    assert ours < 1e-6
    assert math.isclose(float(theirs), 1 / (1 + math.e), rel_tol=1e-6)


def test_decode_is_one_tiled_render_call_equal_to_render_many(monkeypatch):
    """The tiled decode renders all blocks in one call on the stacked fields, bit for bit what render_many of one
    checked SMoE per block gives with one tile per block (constant and linear experts, x2 and x4)."""
    calls = []
    real = hd.render_tiled_batch

    def spy(mu, *a, **kw):
        calls.append(mu.shape[0])
        return real(mu, *a, **kw)

    monkeypatch.setattr(hd, "render_tiled_batch", spy)
    for scale in (2, 4):
        for make in (_random_kernels, _linear_kernels):
            head, raw = make(n=7, dtype=torch.float32, seed=scale)
            kern = head(raw)
            out = hd.decode(kern, scale)
            side = 16 * scale if make is _random_kernels else 8 * scale
            ref = render_many(kern.models(), scale=scale, tile=side)
            ref = ref[:, None] if ref.ndim == 3 else ref.permute(0, 3, 1, 2)
            assert torch.equal(out, ref)
    assert calls == [7, 7, 7, 7]
    kern.mu = kern.mu.clone()
    kern.mu[3, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        hd.decode(kern, 2)


# ---------------------------------------------------------------------- export
def test_exported_block_renders_as_the_block_decodes(tmp_path):
    head, raw = _random_kernels(n=3, dtype=torch.float32, seed=3)
    kern = head(raw)
    dec = hd.decode(kern, 2)
    model = hd.block_model(kern, 1)
    assert model.image_shape == (16, 16) and model.n_kernels == 16
    assert np.allclose(render(model, scale=2), dec[1, 0].numpy(), atol=1e-4)
    path = model.save(tmp_path / "block.npz")
    png = tmp_path / "block.png"
    assert main(["render", str(path), "--scale", "2", "--out", str(png)]) == 0
    img = load_image(png)
    assert img.shape == (32, 32)
    assert np.abs(img - np.clip(dec[1, 0].numpy(), 0, 1)).max() <= 0.5 / 255 + 1e-4


def test_merged_image_model_offsets_every_block(tmp_path):
    head = hd.KernelHead(16, 16, residual_experts=False)
    lr = torch.zeros(2, 1, 32, 48)
    blocks, origins = blk.cut(lr, 16, 16)  # 2 x 3 blocks, no overlap
    gen = torch.Generator().manual_seed(5)
    raw = head.initial_raw().reshape(1, -1).repeat(blocks.shape[0], 1)
    raw = raw + 0.3 * torch.randn(raw.shape, generator=gen)
    kern = head(raw)
    model = hd.image_model(kern, origins, (32, 48), image_index=1)
    assert model.n_kernels == 6 * 16 and model.image_shape == (32, 48)
    n = origins.shape[0]
    for j in range(n):
        r, c = (int(v) for v in origins[j])
        got = model.mu[j * 16:(j + 1) * 16]
        assert np.allclose(got, kern.mu[n + j].numpy() + [c, r], atol=1e-5)
    with pytest.raises(ValueError):
        hd.image_model(kern, origins, (32, 48), image_index=2)
    path = model.save(tmp_path / "image.npz")
    assert main(["render", str(path), "--scale", "2", "--out", str(tmp_path / "image.png")]) == 0
    assert load_image(tmp_path / "image.png").shape == (64, 96)
    # with no overlap and narrow, grid-placed kernels the merged render is close to the stitched decode away from
    # block borders
    stitched = blk.stitch(hd.decode(kern, 2), origins, (32, 48), 2)[1, 0].numpy()
    merged = render(model, scale=2)
    inner = np.zeros((64, 96), bool)
    for r in range(0, 64, 32):
        for c in range(0, 96, 32):
            inner[r + 8:r + 24, c + 8:c + 24] = True
    assert np.abs(merged - stitched)[inner].mean() < 0.05


# ---------------------------------------------------------------------- linear experts (our option)
def _linear_kernels(n=2, k=16, block=8, C=1, seed=0, dtype=torch.float64, spread=1.0, slope=0.3):
    return _random_kernels(n, k, block, C, seed, dtype, spread, slope=slope)


def test_linear_head_reads_slopes_and_starts_at_zero_slopes():
    head = hd.KernelHead(32, 16, 1, residual_experts=False, linear_experts=True)
    assert head.raw_size == 32 * 9 == hd.raw_size(32, 1, linear_experts=True)
    assert hd.raw_size(32, 3, linear_experts=True) == 32 * 15
    init = head.initial_raw()
    assert init.shape == (32, 9) and (init[:, 7:] == 0).all()
    raw = init.reshape(1, -1).clone()
    raw[0, 7 + 9 * 5], raw[0, 8 + 9 * 5] = 0.25, -0.5  # kernel 5: slope x, slope y
    kern = head(raw)
    assert kern.slopes.shape == (1, 32, 1, 2)
    assert kern.slopes[0, 5, 0].tolist() == [0.25, -0.5] and (kern.slopes[0, :5] == 0).all()
    with pytest.raises(ValueError, match="raw must have shape"):
        head(torch.zeros(1, 32 * 7))
    # zero slopes decode exactly as constant experts
    const = hd.KernelHead(32, 16, 1, residual_experts=False)
    torch.testing.assert_close(hd.decode(head(init.reshape(1, -1)), 2),
                               hd.decode(const(const.initial_raw().reshape(1, -1)), 2))


@pytest.mark.parametrize("C", [1, 2])
def test_linear_experts_match_their_dense_formulas(C):
    head, raw = _linear_kernels(C=C, seed=C)
    kern = head(raw)
    ours = hd.decode(kern, 2)
    assert ours.shape == (2, C, 16, 16)
    ref = _dense_numpy(kern, 2, "smoe")
    assert np.allclose(ours.numpy(), ref, atol=2e-5)
    assert np.allclose(hd.decode_smoe_dense(kern, 2).numpy(), ref, atol=1e-12)
    assert np.allclose(hd.decode(kern, 2, gating="authors").numpy(), _dense_numpy(kern, 2, "authors"),
                       atol=1e-12)


def test_linear_experts_decode_a_plane_exactly():
    """Every kernel's expert the same plane (value and slopes): whatever the gates, the decode is that plane."""
    head, raw = _linear_kernels(n=1, k=16, block=8, seed=4)
    kern = head(raw)
    a, gx, gy = 0.3, 0.02, -0.015
    mu = kern.mu[0]
    kern.experts = (a + gx * mu[:, 0] + gy * mu[:, 1])[None, :, None]
    kern.slopes = torch.tensor([gx, gy], dtype=raw.dtype).expand(1, 16, 1, 2)
    pts = hd.sample_points(8, 2, raw.dtype)
    plane = (a + gx * pts[:, 0] + gy * pts[:, 1]).reshape(16, 16)
    torch.testing.assert_close(hd.decode(kern, 2)[0, 0], plane, atol=1e-6, rtol=0)
    torch.testing.assert_close(hd.decode(kern, 2, gating="authors")[0, 0], plane, atol=1e-12, rtol=0)


def test_linear_experts_gradcheck_through_render_many():
    head, raw = _linear_kernels(n=1, k=4, block=4, seed=6)
    raw = raw.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: hd.decode(head(r), 2), (raw,), eps=1e-6, atol=1e-5)


def test_exported_linear_block_and_image_models_keep_the_slopes(tmp_path):
    head, raw = _linear_kernels(n=3, k=16, block=16, dtype=torch.float32, seed=7, slope=0.05)
    kern = head(raw)
    dec = hd.decode(kern, 2)
    model = hd.block_model(kern, 2)
    assert model.slopes.shape == (16, 1, 2)
    assert np.allclose(render(model, scale=2), dec[2, 0].numpy(), atol=1e-4)
    path = model.save(tmp_path / "block.npz")
    assert np.allclose(render(SMoE.load(path), scale=2), dec[2, 0].numpy(), atol=1e-4)
    merged = hd.image_model(kern, torch.tensor([[0, 0], [0, 16], [16, 0]]), (32, 32), image_index=0)
    assert merged.slopes.shape == (48, 1, 2)
    assert np.array_equal(merged.slopes[16:32], kern.slopes[1].detach().numpy())
