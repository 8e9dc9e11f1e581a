"""The N-SMoE network (smoe_core.tasks.nsmoe.encoder, .model): parameter budget, the resizer, gradients through the
encoder and render_many, kernel constraints, output shapes, and a short seeded training run that lowers the loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smoe_core.tasks.nsmoe import blocks as blk
from smoe_core.tasks.nsmoe.encoder import MAX_PARAMETERS, Encoder, LaplacianResizer, count_parameters
from smoe_core.tasks.nsmoe.head import raw_size
from smoe_core.tasks.nsmoe.model import NSMoE, pixel_loss, train_steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(n_kernels=4, block=4, width=8, mults=(1, 2, 4), heads=2, groups=4, attention_res=(4, 2),
            resizer_layers=3)


def test_default_encoders_are_compact():
    for scale in (2, 4):
        for k in (16, 32):
            net = NSMoE(scale=scale, n_kernels=k)
            n = net.n_parameters
            assert 0.9e6 < n < 1.3e6, (scale, k, n)  # ~1M by default
            assert net.encoder.out_features == raw_size(k) == 7 * k
    with pytest.raises(ValueError):
        Encoder(width=96, res_blocks=2)  # over the 5M bound
    assert count_parameters(Encoder(width=64)) < MAX_PARAMETERS


def test_resizer_starts_near_bilinear_and_passes_band_pass_terms():
    torch.manual_seed(0)
    rs = LaplacianResizer(2, n_layers=4)
    x = torch.rand(2, 1, 16, 16)
    base = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        rs.weights.zero_()
        assert torch.allclose(rs(x), base)  # tanh(0) = 0: plain bilinear
        rs.weights.fill_(1.0)
        flat = torch.full((1, 1, 16, 16), 0.4)
        assert torch.allclose(rs(flat), torch.full((1, 1, 32, 32), 0.4), atol=1e-6)  # no band-pass content
        assert not torch.allclose(rs(x), base)
    with pytest.raises(ValueError):
        LaplacianResizer(2, n_layers=9)


def assert_gradcheck_input_and_stem(net):
    """gradcheck of a float64 network's output with respect to a 6 x 6 LR input and to the weight of its first
    layer (through the whole encoder)."""
    lr = torch.rand(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: net(x), (lr,), eps=1e-6, atol=1e-5, rtol=1e-3)
    w = net.encoder.stem.weight

    def f(weight):
        return torch.func.functional_call(net, {"encoder.stem.weight": weight}, (lr.detach(),))

    assert torch.autograd.gradcheck(f, (w.detach().clone().requires_grad_(),), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_gradcheck_through_encoder_and_render_many():
    torch.manual_seed(0)
    net = NSMoE(scale=2, stride=2, **TINY).double()
    with torch.no_grad():  # leave the zero-started layers' zeros: random small weights everywhere but the head bias
        for name, p in net.named_parameters():
            if name != "encoder.out_bias":
                p.normal_(0, 0.2)
    assert_gradcheck_input_and_stem(net)


@pytest.mark.parametrize("gating", ["smoe", "authors"])
def test_output_shape_kernels_in_blocks_and_positive_definite(gating):
    torch.manual_seed(1)
    net = NSMoE(scale=2, gating=gating, **TINY)
    with torch.no_grad():
        net.encoder.out.weight.normal_(0, 3.0)  # push the head's outputs far from their start
    lr = torch.rand(2, 1, 9, 7)
    out = net(lr)
    assert out.shape == (2, 1, 18, 14) and torch.isfinite(out).all()
    assert net(lr, stride=3).shape == (2, 1, 18, 14)
    kern, origins = net.kernels(lr)
    assert kern.n_blocks == 2 * origins.shape[0] == 2 * blk.n_blocks((9, 7), 4, 2)
    assert (kern.mu >= -0.5).all() and (kern.mu <= 3.5).all()
    P = kern.precision()
    assert (torch.linalg.eigvalsh(P.double()) > 0).all()
    a = kern.chol
    assert torch.allclose(torch.stack([a[..., 0] ** 2, a[..., 0] * a[..., 1]], -1), P[..., 0, :], rtol=1e-4, atol=1e-5)


def test_x4_and_one_block_images():
    net = NSMoE(scale=4, **TINY)
    out = net(torch.rand(3, 1, 4, 4))
    assert out.shape == (3, 1, 16, 16)
    with pytest.raises(ValueError):
        NSMoE(scale=2, gating="log")


def test_initial_network_interpolates_a_smooth_image():
    """The head's start (a kernel grid with residual experts, 16 kernels per 16 x 16 block) already carries the
    image: well under half the error of its mean."""
    net = NSMoE(scale=2)
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    hr = (0.5 + 0.3 * torch.sin(x / 6) * torch.cos(y / 7))[None, None]
    lr = F.avg_pool2d(hr, 2)
    with torch.no_grad():
        out = net(lr, stride=blk.TEST_STRIDE)
    assert out.shape == hr.shape and F.l1_loss(out, hr) < 0.5 * F.l1_loss(torch.full_like(hr, float(hr.mean())), hr)


def test_bicubic_base_adds_the_bicubic_upscale_to_the_decoded_residual():
    """base="bicubic": the output is torch's bicubic upscale of the input plus what the same weights decode without
    a base; with the output layer at zero (experts 0) it is the bicubic image itself; at scale 1 the input."""
    torch.manual_seed(2)
    kw = dict(TINY, residual_experts=False)
    lr = torch.rand(2, 1, 9, 7)
    for scale in (2, 4):
        with_base = NSMoE(scale=scale, base="bicubic", **kw)
        without = NSMoE(scale=scale, base="none", **kw)
        with torch.no_grad():
            with_base.encoder.out.weight.normal_(0, 0.5)
        without.load_state_dict(with_base.state_dict())
        bicubic = F.interpolate(lr, size=(9 * scale, 7 * scale), mode="bicubic", align_corners=False)
        with torch.no_grad():
            assert torch.allclose(with_base(lr), without(lr) + bicubic, atol=1e-6)
            assert not torch.allclose(without(lr), torch.zeros(()), atol=1e-3)  # the residual is not trivially 0
            with_base.encoder.out.weight.zero_()
            assert torch.allclose(with_base(lr), bicubic, atol=1e-6)
    denoiser = NSMoE(scale=1, base="bicubic", **kw)
    with torch.no_grad():
        denoiser.encoder.out.weight.zero_()
        assert torch.allclose(denoiser(lr), lr, atol=1e-6)
    with pytest.raises(ValueError, match="residual_experts"):
        NSMoE(scale=2, base="bicubic", **TINY)  # residual experts on: the input would be added twice
    with pytest.raises(ValueError, match="base"):
        NSMoE(scale=2, base="lanczos", **kw)


def test_losses():
    a, b = torch.zeros(4), torch.tensor([1.0, -1.0, 2.0, 0.0])
    assert pixel_loss(a, b, scale=4) == 1.0 and pixel_loss(a, b, scale=2) == 1.5
    assert pixel_loss(a, b, scale=2, kind="l1") == 1.0
    with pytest.raises(ValueError):
        pixel_loss(a, b, kind="lpips")


def _pairs(n=24, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:32, 0:32] / 32.0
    hr = []
    for _ in range(n):
        f, t, c = rng.uniform(1, 4), rng.uniform(0, np.pi), rng.uniform(0.3, 0.7)
        edge = (np.cos(t) * (x - 0.5) + np.sin(t) * (y - 0.5) > rng.uniform(-0.2, 0.2)).astype(float)
        hr.append(c + 0.15 * np.sin(2 * np.pi * f * x) * np.cos(2 * np.pi * f * y) + 0.25 * (edge - 0.5))
    hr = torch.tensor(np.array(hr), dtype=torch.float32)[:, None]
    return F.avg_pool2d(hr, 2), hr


def test_smoke_training_lowers_the_l1_loss_and_is_deterministic():
    """50 Adam steps on 16 x 16 -> 32 x 32 crops (one block each) lower the L1 loss over the whole set (from the
    kernel grid's 0.070 to about 0.061; a direct per-block fit of the kernels reaches 0.023 after 300 steps,
    bicubic 0.011); a second run repeats the losses exactly."""
    lr, hr = _pairs()

    def run(steps):
        torch.manual_seed(0)
        net = NSMoE(scale=2, width=16)
        return net, train_steps(net, lr, hr, steps, batch=8, learning_rate=1e-3, loss="l1", seed=0)

    def full_loss(net):
        with torch.no_grad():
            return float(F.l1_loss(net(lr), hr))

    torch.manual_seed(0)
    before = full_loss(NSMoE(scale=2, width=16))
    net, hist = run(50)
    assert len(hist) == 50 and hist[0] == pytest.approx(before, rel=0.2)
    assert full_loss(net) < 0.92 * before
    assert np.mean(hist[-5:]) < 0.92 * np.mean(hist[:5]), hist
    assert run(10)[1] == hist[:10]


# ---------------------------------------------------------------------- the shared encoder (our variant)
def _shared(scale=2, n_kernels=4, block=4, width=6, depth=2, **kw):
    from smoe_core.tasks.nsmoe.model import NSMoEConfig

    return NSMoE(NSMoEConfig(scale=scale, n_kernels=n_kernels, block=block, encoder="shared", trunk_width=width,
                             trunk_depth=depth, **kw))


def _randomize(net, std=0.2):
    with torch.no_grad():  # random weights everywhere but the head bias (the zero-started convs too)
        for name, p in net.named_parameters():
            if name != "encoder.out_bias":
                p.normal_(0, std)


def test_shared_encoder_numbers_are_a_linear_map_of_cell_means():
    """Kernel j of the block at (r0, c0) gets out(mean of the trunk's features over its cell) + bias_j, the
    cell being rows r0 + row ch .. and columns c0 + col cw .. (checked against a direct slice and mean)."""
    from smoe_core.tasks.nsmoe.shared_encoder import SharedEncoder

    torch.manual_seed(3)
    enc = SharedEncoder(block=8, channels=1, per_kernel=7, grid=(2, 4), width=5, depth=1)
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0, 0.3)
    img = torch.rand(2, 1, 13, 11)
    origins = blk.block_origins((13, 11), 8, 3)
    got = enc.encode_image(img, origins).reshape(2, len(origins), 8, 7)
    feats = enc.trunk(img)
    assert enc.cell == (4, 2)
    for b in range(2):
        for i, (r0, c0) in enumerate(origins.tolist()):
            for j in range(8):
                row, col = divmod(j, 4)
                r, c = r0 + 4 * row, c0 + 2 * col
                mean = feats[b, :, r:r + 4, c:c + 2].mean(dim=(1, 2))
                torch.testing.assert_close(got[b, i, j], enc.out(mean) + enc.out_bias[j], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="whole cells"):
        SharedEncoder(block=10, grid=(4, 4))


def test_shared_encoder_is_translation_equivariant_and_blocks_alone_see_only_themselves():
    """The trunk has no normalization: a block's numbers depend on its neighbourhood only (here: shifting the
    image by the stride shifts the blocks), and forward() on cut blocks equals encode_image on each block alone."""
    torch.manual_seed(4)
    net = _shared(block=4, width=6, depth=1)
    _randomize(net)
    enc = net.encoder
    img = torch.rand(1, 1, 20, 20)
    o = torch.tensor([[8, 8]])
    a = enc.encode_image(img, o)
    b = enc.encode_image(img[..., 2:, 2:], o - 2)  # the same neighbourhood (receptive field 7 px), 2 px shifted
    torch.testing.assert_close(a, b)
    brightened = img.clone()
    brightened[..., :2, :] += 0.5  # far outside the receptive field of the block at (8, 8)
    torch.testing.assert_close(enc.encode_image(brightened, o), a)
    blocks, origins = blk.cut(img, 4, 4)
    alone = torch.cat([enc.encode_image(blocks[i:i + 1], torch.zeros(1, 2, dtype=torch.long))
                       for i in range(len(blocks))])
    torch.testing.assert_close(enc(blocks), alone)


def test_shared_encoder_gradcheck_through_render_many():
    torch.manual_seed(5)
    net = _shared(scale=2, stride=2).double()
    _randomize(net)
    assert_gradcheck_input_and_stem(net)


@pytest.mark.parametrize("experts", ["constant", "linear"])
def test_shared_encoder_kernels_stay_in_blocks_and_restore_equals_forward(experts):
    from smoe_core.tasks.nsmoe.infer import restore

    torch.manual_seed(6)
    net = _shared(scale=2, n_kernels=16, block=16, width=8, depth=2, base="bicubic", residual_experts=False,
                  experts=experts).eval()
    _randomize(net, 0.05)
    assert net.encoder.config.per_kernel == (9 if experts == "linear" else 7)
    img = torch.rand(40, 36)
    with torch.no_grad():
        k, origins = net.kernels(img[None, None], stride=4)
        full = net(img[None, None], stride=4)[0, 0]
    assert ((k.mu > -0.5) & (k.mu < 15.5)).all()
    P = k.precision()
    assert (torch.linalg.eigvalsh(P) > 0).all()
    assert (k.slopes is not None) == (experts == "linear")
    for chunk in (None, 7):
        out, model = restore(net, img.numpy(), chunk=chunk, export=True)
        np.testing.assert_allclose(out, full.numpy(), atol=1e-5)
        assert model.n_kernels == 16 * len(origins) and model.linear == (experts == "linear")
    # an untrained shared network (zero-started trunk blocks, small head) starts at the head's grid: the bicubic
    # base plus a near-zero residual
    fresh = _shared(scale=2, n_kernels=16, block=16, width=8, depth=2, base="bicubic", residual_experts=False,
                    experts=experts).eval()
    with torch.no_grad():
        base = F.interpolate(img[None, None], scale_factor=2, mode="bicubic", align_corners=False)[0, 0]
        assert (fresh(img[None, None], stride=4)[0, 0] - base).abs().max() < 0.05


def test_task_encoders_and_the_cli_flag(tmp_path):
    from smoe_core.tasks.nsmoe.train import PRESETS, encoder_overrides, make_config

    sr = make_config("sr2", "quick")  # the super-resolution network: shared encoder, linear experts, 1e-3
    assert sr.network["encoder"] == "shared" and sr.network["experts"] == "linear" and sr.crop == 16
    assert sr.learning_rate == 1e-3 and make_config("sr4", "paper").learning_rate == 1e-3
    assert encoder_overrides("sr2", "quick") == {} == encoder_overrides("sr2", "quick", "shared")
    block = make_config("sr2", "quick", **encoder_overrides("sr2", "quick", "block"))
    assert block.network_config().encoder == "block" and block.network_config().experts == "linear"
    assert block.learning_rate == PRESETS["quick"].learning_rate == 2e-4 and block.crop == 16
    over = encoder_overrides("denoise", "quick", "shared")
    cfg = make_config("denoise", "quick", **over)
    assert cfg.crop == 32 and cfg.network["encoder"] == "shared"
    assert {k: v for k, v in cfg.network.items() if k != "encoder"} == make_config("denoise", "quick").network
    assert make_config("denoise", "quick").network_config().encoder == "block"
    net = NSMoE(cfg.network_config())
    assert net.config.encoder == "shared" and net.n_parameters < 200_000
    with pytest.raises(ValueError, match="encoder must be one of"):
        NSMoE(encoder="nope")
    with pytest.raises(ValueError, match="experts must be one of"):
        NSMoE(experts="quadratic")
    with pytest.raises(ValueError, match="encoder must be"):
        encoder_overrides("denoise", "quick", "dense")
    # the command: a smoke run with the shared encoder, on 32 px crops, whose checkpoint restores an image
    from smoe_core.cli import main
    from smoe_core.tasks.nsmoe.infer import load_network, restore

    rc = main(["nsmoe", "train", "--preset", "smoke", "--task", "denoise", "--encoder", "shared", "--out",
               str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    loaded = load_network(tmp_path / "run" / "denoise.ckpt")
    assert loaded.net.config.encoder == "shared" and loaded.checkpoint.meta["config"]["crop"] == 32
    out, _ = restore(loaded.net, np.random.default_rng(0).random((20, 24), dtype=np.float32))
    assert out.shape == (20, 24) and np.isfinite(out).all()
    assert main(["nsmoe", "train", "--preset", "smoke", "--task", "sr2", "--out", str(tmp_path / "sr"),
                 "--no-progress"]) == 0
    loaded = load_network(tmp_path / "sr" / "sr2.ckpt")
    assert loaded.net.config.experts == "linear" and loaded.checkpoint.meta["config"]["crop"] == 16
    out, model = restore(loaded.net, np.random.default_rng(0).random((20, 24), dtype=np.float32), export=True)
    assert out.shape == (40, 48) and np.isfinite(out).all() and model.linear


@pytest.mark.gpu
@pytest.mark.parametrize("encoder", ["block", "shared"])
@pytest.mark.parametrize("experts", ["constant", "linear"])
def test_cuda_forward_matches_the_cpu_build(encoder, experts):
    """The whole network on the GPU (the CUDA renderer decodes) gives the CPU build's output and gradients."""
    from smoe_core.tasks.nsmoe.model import NSMoEConfig

    torch.manual_seed(8)
    cfg = NSMoEConfig(scale=2, n_kernels=16, encoder=encoder, experts=experts, width=8, heads=2, groups=4,
                      resizer_layers=2, trunk_width=8, trunk_depth=2, base="bicubic", residual_experts=False)
    net = NSMoE(cfg)
    _randomize(net, 0.05)
    x = torch.rand(2, 1, 24, 20)
    y_cpu = net(x, stride=4)
    y_cpu.square().sum().backward()
    g_cpu = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    net = net.cuda()
    y_gpu = net(x.cuda(), stride=4)
    y_gpu.square().sum().backward()
    torch.testing.assert_close(y_gpu.cpu(), y_cpu.detach(), rtol=1e-4, atol=1e-4)
    for n, p in net.named_parameters():
        scale = max(1.0, g_cpu[n].abs().max().item())
        torch.testing.assert_close(p.grad.cpu(), g_cpu[n], rtol=1e-3, atol=1e-3 * scale, msg=lambda m: f"{n}: {m}")


def test_test_stride_is_checked_and_is_the_restore_default():
    """``test_stride`` (NSMoEConfig) is restore's default stride: a 256-kernel shared network (one kernel per LR px,
    as the super-resolution networks) restores at its own test stride, equal to the stitched forward at that stride
    and not to the forward at the authors' stride 4; a bad value is refused by name."""
    from smoe_core.tasks.nsmoe.infer import restore

    for bad in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match="test_stride"):
            _shared(scale=2, n_kernels=16, block=16, width=8, depth=1, test_stride=bad)
    with pytest.raises(ValueError, match="stride"):
        _shared(scale=2, n_kernels=16, block=16, width=8, depth=1, stride=0)
    torch.manual_seed(7)
    net = _shared(scale=2, n_kernels=256, block=16, width=8, depth=1, base="bicubic", residual_experts=False,
                  experts="linear", test_stride=8).eval()
    _randomize(net, 0.05)
    img = torch.rand(40, 36)
    with torch.no_grad():
        at8 = net(img[None, None], stride=8)[0, 0].numpy()
        at4 = net(img[None, None], stride=4)[0, 0].numpy()
    out, _ = restore(net, img.numpy())
    np.testing.assert_allclose(out, at8, atol=1e-5)
    assert np.abs(out - at4).max() > 1e-4
