"""smoe_core.studies.perceptual: LPIPS, ST-LPIPS and attention-weighted PSNR, without any download.

Network access is blocked in every test (a download attempt fails the test), and the weight caches are
pointed at empty folders, so the results do not depend on what this machine has cached. The backbone and
ViT files used here are *randomly initialized* networks saved to tmp: they test the loading paths and the
arithmetic, not what the metrics mean.
"""
import math
import os
import socket

import numpy as np
import pytest
import torch

from smoe_core.studies import perceptual as P
from smoe_core.io import load_image
from smoe_core.metrics import psnr

TINY_VIT = "vit_tiny_patch16_224"  # default tag augreg_in21k_ft_in1k, hf id timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 2 shared cores: torch's 2 threads spin against the other engineers' jobs and run ~10x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def offline_empty_caches(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(empty / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(empty / "hf"))
    monkeypatch.delenv(P.LPIPS_BACKBONE_ENV, raising=False)
    monkeypatch.delenv(P.VIT_WEIGHTS_ENV, raising=False)
    return empty


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    """A randomly initialized torchvision AlexNet: (full state dict file, the model)."""
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.alexnet(weights=None).eval()
    path = tmp_path_factory.mktemp("alex") / "random_alexnet.pth"
    torch.save(net.state_dict(), path)
    return path, net


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    """A randomly initialized timm ViT-Ti/16 saved as safetensors (only to exercise the code path)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    model = timm.create_model(TINY_VIT, pretrained=False)
    path = tmp_path_factory.mktemp("vit") / "model.safetensors"
    save_file(model.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def crops():
    img = load_image("barbara")
    a = img[100:164, 100:164]
    shifted = img[100:164, 101:165]  # the same content moved by one pixel
    return a, shifted


def _rand(shape, seed):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------ LPIPS
def test_lpips_unavailable_without_backbone(offline_empty_caches):
    a = _rand((48, 48), 0)
    with pytest.raises(P.MetricUnavailable) as exc:
        P.lpips(a, a)
    msg = str(exc.value)
    assert "alexnet-owt-7be5be79.pth" in msg and str(offline_empty_caches / "torch") in msg
    assert P.LPIPS_BACKBONE_ENV in msg
    with pytest.raises(P.MetricUnavailable, match="missing"):
        P.lpips(a, a, weights=offline_empty_caches / "nope.pth")


@pytest.mark.filterwarnings("ignore::UserWarning")  # lpips passes torchvision's deprecated `pretrained=`
def test_lpips_matches_independent_reference(alexnet_file):
    import lpips as lp

    path, tv_net = alexnet_file
    a, b = _rand((64, 80, 3), 1), _rand((64, 80, 3), 2)
    got = P.lpips(a, b, weights=path)

    # reference: the package's own LPIPS (it loads its linear layers itself) with the backbone modules'
    # weights copied over module by module from the torchvision AlexNet
    ref = lp.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    for i in range(1, 6):
        for name, child in getattr(ref.net, f"slice{i}").named_children():
            child.load_state_dict(tv_net.features[int(name)].state_dict())
    to_t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None]  # noqa: E731
    with torch.no_grad():
        want = float(ref(to_t(a), to_t(b), normalize=True))
    assert got == pytest.approx(want, rel=1e-5)
    assert got > 0
    assert P.lpips(a, a, weights=path) == pytest.approx(0.0, abs=1e-7)


def test_lpips_gray_env_and_cache(alexnet_file, monkeypatch):
    path, _ = alexnet_file
    g1, g2 = _rand((48, 56), 3), _rand((48, 56), 4)
    v = P.lpips(g1, g2, weights=path)
    assert v == pytest.approx(P.lpips(np.repeat(g1[..., None], 3, 2), np.repeat(g2[..., None], 3, 2), weights=path))
    hits = P._lpips_model.cache_info().hits
    monkeypatch.setenv(P.LPIPS_BACKBONE_ENV, str(path))
    assert P.lpips(g1, g2) == v  # same file through the environment variable: same cached model
    assert P._lpips_model.cache_info().hits > hits
    assert P.available_metrics()["lpips"] is None


def test_lpips_refuses_file_named_like_torchvision_but_not_it(alexnet_file, offline_empty_caches):
    # a random network under torchvision's name in the hub cache fails the name's SHA-256 prefix check
    ckpt = offline_empty_caches / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    os.symlink(alexnet_file[0], ckpt / "alexnet-owt-7be5be79.pth")
    with pytest.raises(P.MetricUnavailable, match="SHA-256"):
        P.lpips(_rand((48, 48), 0), _rand((48, 48), 1))


def test_lpips_refuses_incomplete_backbone(alexnet_file, tmp_path):
    sd = torch.load(alexnet_file[0], weights_only=True)
    del sd["features.8.weight"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(P.MetricUnavailable, match="features.8.weight"):
        P.lpips(_rand((48, 48), 0), _rand((48, 48), 1), weights=tmp_path / "partial.pth")


# --------------------------------------------------------------------------------------------- ST-LPIPS
def test_st_lpips_identical_and_shift_tolerance(crops):
    a, shifted = crops
    assert P.st_lpips(a, a) == pytest.approx(0.0, abs=1e-6)
    # Gaussian noise with the same RMS error as the 1-pixel shift (PSNR within ~0.3 dB)
    rms = math.sqrt(float(np.mean((a - shifted) ** 2)))
    noisy = np.clip(a + np.random.default_rng(0).normal(0, rms, a.shape), 0, 1).astype(np.float32)
    assert abs(psnr(a, shifted) - psnr(a, noisy)) < 0.3
    d_shift, d_noise = P.st_lpips(a, shifted), P.st_lpips(a, noisy)
    assert 0 < d_shift < 0.25 * d_noise  # measured: 0.003 vs 0.23
    assert P.st_lpips(np.repeat(a[..., None], 3, 2), np.repeat(noisy[..., None], 3, 2)) == pytest.approx(d_noise)


def test_st_lpips_loads_whole_network_from_package():
    model = P._st_lpips_model("alex")
    sd = torch.load(P._st_lpips_weights("alex"), map_location="cpu", weights_only=True)
    own = model.state_dict()
    assert {k for k in own if not k.startswith("lins.")} == set(sd)  # every tensor comes from the file
    assert all(torch.equal(own[k], sd[k]) for k in sd)
    assert P.available_metrics()["st_lpips"] is None


# --------------------------------------------------------------------------------------- attention PSNR
def test_attention_psnr_unavailable_without_weights(offline_empty_caches):
    a = _rand((32, 32), 0)
    with pytest.raises(P.MetricUnavailable) as exc:
        P.attention_psnr(a, a)
    msg = str(exc.value)
    assert P.DEFAULT_VIT in msg and str(offline_empty_caches / "hf") in msg and P.VIT_WEIGHTS_ENV in msg
    with pytest.raises(P.MetricUnavailable):
        P.attention_psnr(a, a, model_name=TINY_VIT, weights=offline_empty_caches / "nope.safetensors")


def test_attention_map_range_and_uniform_error(vit_file):
    a = _rand((40, 56), 5)
    w = P.attention_map(a, model_name=TINY_VIT, weights=vit_file)
    assert w.shape == (40, 56)
    assert w.min() == pytest.approx(0.9, abs=1e-12) and w.max() == pytest.approx(1.0, abs=1e-12)
    # uniform squared error: the weights cancel and the plain PSNR comes out
    signs = np.where(np.random.default_rng(6).random(a.shape) < 0.5, 1.0, -1.0)
    b = a + 0.05 * signs
    assert P.attention_psnr(a, b, model_name=TINY_VIT, weights=vit_file) == pytest.approx(psnr(a, b), rel=1e-12)
    assert P.attention_psnr(a, a, model_name=TINY_VIT, weights=vit_file) == math.inf
    # error only at the most attended pixel weighs more than in the plain PSNR
    c = a.astype(np.float64).copy()
    c[np.unravel_index(np.argmax(w), w.shape)] += 0.3
    assert P.attention_psnr(a, c, model_name=TINY_VIT, weights=vit_file) < psnr(a, c)
    # colour: err^2 averaged over channels, map from the (replicated) reference
    rgb = np.repeat(a[..., None], 3, 2)
    assert P.attention_map(rgb, model_name=TINY_VIT, weights=vit_file) == pytest.approx(w)


def test_attention_is_timms_own_cls_attention(vit_file):
    # cross-check the extracted map against the attention matrix timm's unfused path computes
    model = P._vit_model(TINY_VIT, str(vit_file.resolve()))
    attn = model.blocks[-1].attn
    seen = {}
    fused = attn.fused_attn
    hook = attn.attn_drop.register_forward_hook(lambda mod, inp, out: seen.__setitem__("a", out))
    try:
        attn.fused_attn = False
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            model.forward_features(x)
            ours = P._cls_attention(model, x)
    finally:
        hook.remove()
        attn.fused_attn = fused
    want = seen["a"][0, :, 0, model.num_prefix_tokens:].mean(0).reshape(14, 14)
    torch.testing.assert_close(ours, want)


def test_attention_weights_from_hf_cache_and_refuses_partial(vit_file, offline_empty_caches, tmp_path):
    # timm/HF cache layout: <cache>/models--timm--<name>/{refs/main, snapshots/<commit>/model.safetensors}
    repo = offline_empty_caches / "hf" / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    os.symlink(vit_file, snap / "model.safetensors")
    a = _rand((32, 48), 7)
    w = P.attention_map(a, model_name=TINY_VIT)
    assert w == pytest.approx(P.attention_map(a, model_name=TINY_VIT, weights=vit_file))

    from safetensors.torch import load_file, save_file

    sd = load_file(str(vit_file))
    del sd["head.weight"]
    save_file(sd, str(tmp_path / "partial.safetensors"))
    with pytest.raises(P.MetricUnavailable, match="head.weight"):
        P.attention_map(a, model_name=TINY_VIT, weights=tmp_path / "partial.safetensors")


# ------------------------------------------------------------------------------------------------ tables
def test_available_metrics_and_columns(crops):
    avail = P.available_metrics()
    assert set(avail) == set(P.METRICS)
    assert avail["st_lpips"] is None
    assert "alexnet-owt-7be5be79.pth" in avail["lpips"] and P.DEFAULT_VIT in avail["attention_psnr"]
    a, shifted = crops
    cols = P.perceptual_columns(a, shifted)
    assert list(cols) == list(P.METRICS)
    assert cols["lpips"] == "n/a (no alexnet ImageNet weights)"
    assert cols["attention_psnr"] == "n/a (no ViT weights)"
    assert cols["st_lpips"] == pytest.approx(P.st_lpips(a, shifted))
