"""Learned image-quality metrics of [AS-SMoE] (section V-B): LPIPS and the PSNR weighted
by a Vision Transformer attention map; plus the shift-tolerant LPIPS (ST-LPIPS) as a separate column.

All three need trained network weights, and nothing may be downloaded at run time. Each metric therefore
looks for its weights in a fixed list of local places and raises :class:`MetricUnavailable` (naming the file
and every place it looked) when they are not there. No metric is ever computed with a random or partly
loaded network: every load checks that each parameter of the network was set from the file.

Where the weights come from
---------------------------
``lpips``
    The ``lpips`` package (Zhang et al. 2018, model version 0.1) ships its linear calibration layers
    (``lpips/weights/v0.1/<net>.pth``) but builds its backbone with torchvision's ImageNet weights, which
    torchvision downloads. Here the backbone is read from, in this order: the ``weights=`` argument;
    ``$SMOE_LPIPS_BACKBONE`` (a file, or a folder holding torchvision's file); torchvision's own download
    location ``torch.hub.get_dir()/checkpoints/<file>``. The files are torchvision's ``IMAGENET1K_V1``
    weights, the ones LPIPS was calibrated on: ``alexnet-owt-7be5be79.pth`` (net="alex"),
    ``vgg16-397923af.pth`` ("vgg"), ``squeezenet1_1-b8a52dc0.pth`` ("squeeze"), downloadable elsewhere from
    ``https://download.pytorch.org/models/<file>``. A file carrying torchvision's name must match the
    SHA-256 prefix in that name (as ``torch.hub`` checks on download); a file under another name is trusted.
``st_lpips``
    The PyPI package ``stlpips-pytorch`` (Ghildyal & Liu, ECCV 2022) ships the *whole* shift-tolerant
    network -- backbone, blur-pool filters and linear layers -- in ``stlpips_pytorch/weights/vST0.0/
    <net>_shift_tolerant.pth`` (net "alex" or "vgg"); its ``shift_tolerant`` variant builds its
    (anti-aliased, re-padded) backbone from scratch and does not touch torchvision's weights, so nothing is
    downloaded. Its ImageNet backbone differs from LPIPS's, and its values are not LPIPS values: report it
    as its own column. (The package imports ``torchsummary`` and ``IPython`` without declaring them, for
    debugging helpers only; where they are missing, empty stand-ins are put in place for the import.)
``attention_psnr``
    A timm Vision Transformer, by default ``vit_base_patch16_224.augreg2_in21k_ft_in1k`` (ViT-B/16, the
    architecture of the paper's reference [40], in timm's default weights for ``vit_base_patch16_224``).
    Weights are read from, in this order: the ``weights=`` argument; ``$SMOE_VIT_WEIGHTS`` (a file, or a
    folder holding ``model.safetensors`` / ``pytorch_model.bin``); the Hugging Face hub cache, where timm
    keeps them (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``, repository
    ``timm/<model>``); timm's old torch.hub cache (``torch.hub.get_dir()/checkpoints/<file of the model's
    url>``, if it has a non-.npz url). See :func:`attention_map` for how the map is made.

Images are [0, 1] arrays (numpy or torch) shaped (H, W) or (H, W, C) with C = 1 or 3, as in
:mod:`smoe_core.metrics`; gray images are replicated to three channels for the networks.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import math
import os
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MetricUnavailable", "lpips", "st_lpips", "attention_psnr", "attention_map", "available_metrics",
           "perceptual_columns", "DEFAULT_VIT", "METRICS"]

DEFAULT_VIT = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
METRICS = ("lpips", "st_lpips", "attention_psnr")

LPIPS_BACKBONE_ENV = "SMOE_LPIPS_BACKBONE"
VIT_WEIGHTS_ENV = "SMOE_VIT_WEIGHTS"

# torchvision's IMAGENET1K_V1 files (the weights lpips.LPIPS(pnet_rand=False) would download)
_TV_FILES = {
    "alex": ("alexnet", "alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16", "vgg16-397923af.pth"),
    "squeeze": ("squeezenet1_1", "squeezenet1_1-b8a52dc0.pth"),
}
_TV_URL = "https://download.pytorch.org/models/"
_ST_NETS = ("alex", "vgg")


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here: its weights (or package) are missing or unusable.

    ``str(exc)`` names what is missing and where it was looked for; ``exc.short`` is a few words for a
    table cell; ``exc.metric`` names the metric."""

    def __init__(self, message: str, *, metric: str | None = None, short: str | None = None):
        super().__init__(message)
        self.metric = metric
        self.short = short or message


# ----------------------------------------------------------------------------------------------- images
def _as_rgb_tensor(img) -> torch.Tensor:
    """(H, W) / (H, W, 1) / (H, W, 3) image in [0, 1] -> float32 (1, 3, H, W) tensor, still in [0, 1]."""
    t = img.detach().cpu() if isinstance(img, torch.Tensor) else torch.from_numpy(np.asarray(img))
    t = t.to(torch.float32)
    if t.ndim == 2:
        t = t[..., None]
    if t.ndim != 3 or t.shape[2] not in (1, 3) or min(t.shape[:2]) < 1:
        raise ValueError(f"an image must be shaped (H, W), (H, W, 1) or (H, W, 3), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("the image contains NaN or infinite values")
    if t.shape[2] == 1:
        t = t.expand(-1, -1, 3)
    return t.permute(2, 0, 1)[None].contiguous()


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_rgb_tensor(a), _as_rgb_tensor(b)
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(np.shape(a))} and {tuple(np.shape(b))}")
    return x, y


def _load_state_dict_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if key in sd and isinstance(sd[key], dict) and not isinstance(sd[key], torch.Tensor):
                sd = sd[key]
                break
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def _strict_load(module: torch.nn.Module, sd: dict, *, aliases: tuple[str, ...] = ()) -> None:
    """load_state_dict that fails unless every parameter and buffer of ``module`` is set from ``sd``.
    Keys under one of ``aliases`` (modules registered twice, e.g. LPIPS's ``lins`` list) may be missing."""
    result = module.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(aliases)]
    if missing or result.unexpected_keys:
        raise ValueError(f"missing keys {missing[:6]}{'...' if len(missing) > 6 else ''}, unexpected keys "
                         f"{result.unexpected_keys[:6]}{'...' if len(result.unexpected_keys) > 6 else ''}")


# ----------------------------------------------------------------------------------------------- LPIPS
_HASH_OK: dict[tuple, bool] = {}


def _hash_matches(path: Path, prefix: str) -> bool:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, prefix)
    if key not in _HASH_OK:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASH_OK[key] = h.hexdigest().startswith(prefix)
    return _HASH_OK[key]


def _lpips_backbone_path(net: str, weights=None) -> Path:
    """The torchvision backbone file for LPIPS ``net``: ``weights``, ``$SMOE_LPIPS_BACKBONE``, torch hub cache."""
    if net not in _TV_FILES:
        raise ValueError(f"LPIPS net must be one of {sorted(_TV_FILES)}, got {net!r}")
    fname = _TV_FILES[net][1]
    looked = []
    if weights is not None:
        candidates = [("weights=", Path(weights))]
    else:
        candidates = []
        env = os.environ.get(LPIPS_BACKBONE_ENV)
        if env:
            p = Path(env)
            candidates.append((f"${LPIPS_BACKBONE_ENV}", p / fname if p.is_dir() else p))
        else:
            looked.append(f"${LPIPS_BACKBONE_ENV} (unset)")
        candidates.append(("torch hub cache", Path(torch.hub.get_dir()) / "checkpoints" / fname))
    for where, p in candidates:
        if p.is_file():
            if p.name == fname and not _hash_matches(p, fname.rsplit("-", 1)[1].split(".")[0]):
                raise MetricUnavailable(
                    f"LPIPS (net={net!r}): {p} ({where}) carries torchvision's file name {fname} but not its "
                    f"SHA-256 prefix: it is not torchvision's ImageNet weights (corrupt or partial download?)",
                    metric="lpips", short=f"{fname} fails its hash check")
            return p
        looked.append(f"{where}: {p} (missing)")
    raise MetricUnavailable(
        f"LPIPS (net={net!r}) needs torchvision's ImageNet {_TV_FILES[net][0]} weights {fname}, which cannot be "
        f"downloaded here; looked in: {'; '.join(looked)}. Fetch {_TV_URL}{fname} on a connected machine and "
        f"put it in {Path(torch.hub.get_dir()) / 'checkpoints'} or point ${LPIPS_BACKBONE_ENV} to it.",
        metric="lpips", short=f"no {_TV_FILES[net][0]} ImageNet weights")


@functools.lru_cache(maxsize=4)
def _lpips_model(net: str, backbone: str):
    import lpips as lp

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        # pnet_rand=True: torchvision builds the backbone without downloading; pretrained=False: the linear
        # layers are loaded below, strictly, instead of lpips' silent strict=False load.
        model = lp.LPIPS(pretrained=False, net=net, version="0.1", pnet_rand=True, verbose=False)
    lin_file = Path(lp.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    lin_sd = torch.load(str(lin_file), map_location="cpu", weights_only=True)
    lin_keys = {k for k in model.state_dict() if k.startswith("lin") and not k.startswith("lins.")}
    if lin_keys - set(lin_sd):  # (lins.<i> is the same module as lin<i>, registered twice)
        raise MetricUnavailable(f"LPIPS: {lin_file} lacks linear-layer weights {sorted(lin_keys - set(lin_sd))}",
                                metric="lpips", short="lpips package weights incomplete")
    model.load_state_dict({k: lin_sd[k] for k in lin_keys}, strict=False)

    # lpips splits torchvision's `features` Sequential into slices keeping the child names:
    # features.<i>.<param>  ->  net.slice<s>.<i>.<param>  (<i> unchanged, e.g. alex features.3 -> slice2.3)
    tv_sd = _load_state_dict_file(Path(backbone))
    mapped = {}
    for key in model.net.state_dict():
        src = "features." + key.split(".", 1)[1]
        if src not in tv_sd:
            raise MetricUnavailable(f"LPIPS (net={net!r}): {backbone} has no {src!r}; it is not a torchvision "
                                    f"{_TV_FILES[net][0]} state dict", metric="lpips", short="backbone file unfit")
        mapped[key] = tv_sd[src]
    try:
        _strict_load(model.net, mapped)
    except (ValueError, RuntimeError) as exc:
        raise MetricUnavailable(f"LPIPS (net={net!r}): {backbone} does not fit the {_TV_FILES[net][0]} "
                                f"backbone: {exc}", metric="lpips", short="backbone file unfit") from exc
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def lpips(a, b, *, net: str = "alex", weights=None) -> float:
    """LPIPS v0.1 distance (Zhang et al. 2018) between [0, 1] images ``a`` and ``b``; 0 for identical images.

    ``net`` is the backbone ("alex", the LPIPS default and the paper's usual choice; "vgg"; "squeeze").
    The backbone's torchvision ImageNet weights come from ``weights`` (a path), ``$SMOE_LPIPS_BACKBONE`` or
    the torch hub cache (see the module docstring); raises :class:`MetricUnavailable` where none is found.
    Images are mapped to [-1, 1] (gray replicated to RGB) and compared whole, spatially averaged.
    The model is built once per (net, weights file)."""
    x, y = _pair(a, b)
    model = _lpips_model(net, str(_lpips_backbone_path(net, weights).resolve()))
    with torch.inference_mode():
        d = model(2 * x - 1, 2 * y - 1)
    return float(d.reshape(-1)[0])


# -------------------------------------------------------------------------------------------- ST-LPIPS
def _import_stlpips():
    """Imports stlpips_pytorch.stlpips, with empty stand-ins for its undeclared debug-only imports."""
    if "stlpips_pytorch.stlpips" in sys.modules:
        return sys.modules["stlpips_pytorch.stlpips"]
    if importlib.util.find_spec("stlpips_pytorch") is None:
        raise MetricUnavailable("ST-LPIPS needs the PyPI package stlpips-pytorch, which is not installed "
                                "(pip install stlpips-pytorch)", metric="st_lpips", short="stlpips-pytorch missing")
    stubs = {}
    if importlib.util.find_spec("torchsummary") is None:  # used only by its print_network() helper
        stubs["torchsummary"] = types.ModuleType("torchsummary")
        stubs["torchsummary"].summary = lambda *a, **k: None
    if importlib.util.find_spec("IPython") is None:  # `from IPython import embed`, never called
        stubs["IPython"] = types.ModuleType("IPython")
        stubs["IPython"].embed = lambda *a, **k: None
    sys.modules.update(stubs)
    try:
        return importlib.import_module("stlpips_pytorch.stlpips")
    finally:
        for name, mod in stubs.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]


def _st_lpips_weights(net: str) -> Path:
    if net not in _ST_NETS:
        raise ValueError(f"ST-LPIPS net must be one of {_ST_NETS}, got {net!r}")
    spec = importlib.util.find_spec("stlpips_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable("ST-LPIPS needs the PyPI package stlpips-pytorch, which is not installed "
                                "(pip install stlpips-pytorch)", metric="st_lpips", short="stlpips-pytorch missing")
    p = Path(list(spec.submodule_search_locations)[0]) / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
    if not p.is_file():
        raise MetricUnavailable(f"ST-LPIPS (net={net!r}): the package's weights {p} are missing",
                                metric="st_lpips", short="stlpips weights missing")
    return p


@functools.lru_cache(maxsize=2)
def _st_lpips_model(net: str):
    path = _st_lpips_weights(net)
    stl = _import_stlpips()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # pretrained=False: built from scratch (the shift_tolerant backbone never uses torchvision weights);
        # the package's own file holds the whole network and is loaded strictly here.
        model = stl.LPIPS(pretrained=False, net=net, variant="shift_tolerant", version="0.1", verbose=False)
    try:
        _strict_load(model, torch.load(str(path), map_location="cpu", weights_only=True), aliases=("lins.",))
    except (ValueError, RuntimeError) as exc:
        raise MetricUnavailable(f"ST-LPIPS (net={net!r}): {path} does not fit the network: {exc}",
                                metric="st_lpips", short="stlpips weights unfit") from exc
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def st_lpips(a, b, *, net: str = "alex") -> float:
    """Shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022; PyPI ``stlpips-pytorch``, variant "shift_tolerant")
    between [0, 1] images; ~0 for identical images. Not LPIPS: its own column.

    ``net`` is "alex" (default) or "vgg". Weights ship with the package (whole network); nothing is
    downloaded. Images are mapped to [-1, 1] (gray replicated to RGB), as for :func:`lpips`."""
    x, y = _pair(a, b)
    model = _st_lpips_model(net)
    with torch.inference_mode():
        d = model(2 * x - 1, 2 * y - 1)
    return float(d.reshape(-1)[0])


# ------------------------------------------------------------------------------------- attention PSNR
def _hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def _vit_weights_path(model_name: str, weights=None) -> Path:
    """The weights file for timm ``model_name``: ``weights``, ``$SMOE_VIT_WEIGHTS``, HF hub cache, torch hub cache."""
    looked = []
    if weights is not None:
        p = Path(weights)
        if p.is_file():
            return p
        raise MetricUnavailable(f"attention PSNR: the ViT weights file {p} (weights=) does not exist",
                                metric="attention_psnr", short="ViT weights file missing")
    env = os.environ.get(VIT_WEIGHTS_ENV)
    if env:
        p = Path(env)
        for c in ([p / "model.safetensors", p / "pytorch_model.bin"] if p.is_dir() else [p]):
            if c.is_file():
                return c
            looked.append(f"${VIT_WEIGHTS_ENV}: {c} (missing)")
    else:
        looked.append(f"${VIT_WEIGHTS_ENV} (unset)")

    from timm.models import get_pretrained_cfg

    arch, _, tag = model_name.partition(".")
    cfg = get_pretrained_cfg(model_name) or (get_pretrained_cfg(arch) if not tag else None)
    if cfg is None:
        raise MetricUnavailable(f"attention PSNR: timm knows no pretrained weights named {model_name!r}; "
                                f"pass weights= or set ${VIT_WEIGHTS_ENV}", metric="attention_psnr",
                                short="unknown ViT name")
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        cache = _hf_hub_cache()
        names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else \
            ["model.safetensors", "pytorch_model.bin"]
        for fname in names:
            hit = try_to_load_from_cache(cfg.hf_hub_id, fname, cache_dir=str(cache))
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
        looked.append(f"Hugging Face cache {cache} (repository {cfg.hf_hub_id}, {' or '.join(names)}: missing)")
    if cfg.url and not cfg.url.endswith(".npz"):
        p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if p.is_file():
            return p
        looked.append(f"torch hub cache: {p} (missing)")
    raise MetricUnavailable(
        f"attention PSNR needs trained weights for the ViT {model_name!r}, which cannot be downloaded here; "
        f"looked in: {'; '.join(looked)}. Fetch them on a connected machine (timm.create_model({model_name!r}, "
        f"pretrained=True) fills the Hugging Face cache) or point ${VIT_WEIGHTS_ENV} to the file.",
        metric="attention_psnr", short="no ViT weights")


@functools.lru_cache(maxsize=2)
def _vit_model(model_name: str, path: str):
    import timm
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    model = timm.create_model(model_name, pretrained=False)
    if not isinstance(model, VisionTransformer) or model.cls_token is None:
        raise ValueError(f"attention PSNR needs a timm VisionTransformer with a class token, not {model_name!r}")
    attn = model.blocks[-1].attn
    if not all(hasattr(attn, a) for a in ("qkv", "num_heads", "head_dim", "scale", "q_norm", "k_norm")) \
            or type(attn).__name__ != "Attention":
        raise ValueError(f"unsupported attention module {type(attn).__name__} in {model_name!r}")
    try:
        sd = checkpoint_filter_fn(_load_state_dict_file(Path(path)), model)
        _strict_load(model, sd)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise MetricUnavailable(f"attention PSNR: {path} does not fit the ViT {model_name!r}: {exc}",
                                metric="attention_psnr", short="ViT weights unfit") from exc
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _cls_attention(model, x: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention of the class token to the patch tokens in the last block: (gh, gw)."""
    attn = model.blocks[-1].attn
    seen = {}
    hook = attn.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0]))
    try:
        model.forward_features(x)
    finally:
        hook.remove()
    t = seen["x"]  # (1, N, C): the last block's tokens after norm1, as they enter its attention
    B, N, _ = t.shape
    qkv = attn.qkv(t).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (1, heads, N, N)
    cls = a[0, :, 0, model.num_prefix_tokens:].mean(dim=0)  # class-token row, patch columns, mean of heads
    gh, gw = model.patch_embed.grid_size
    return cls.reshape(gh, gw)


def attention_map(image, *, model_name: str = DEFAULT_VIT, weights=None) -> np.ndarray:
    """The per-pixel weights of :func:`attention_psnr` for ``image``: float64 (H, W), min-max scaled to
    [0.9, 1] (all 1 if the attention is constant).

    The paper (section V-B) says only "a pre-trained Vision Transformer [Dosovitskiy et al.] used to derive
    an attention map", "scaled between 0.9 and 1". The choices made here:

    - network: timm ``vit_base_patch16_224.augreg2_in21k_ft_in1k`` by default -- ViT-B/16 as in the cited
      paper, with timm's default (ImageNet-21k pre-trained, ImageNet-1k fine-tuned) weights;
    - input: the whole image (gray replicated to RGB) resized to the network's input size (224 x 224;
      bilinear, antialiased, aspect ratio not kept, so every pixel gets a weight -- no centre crop),
      normalized with the weights' mean/std (0.5/0.5);
    - map: the last transformer block's softmax attention of the class token (query) to the 14 x 14 patch
      tokens (keys; class/register tokens dropped), averaged over the heads -- no attention rollout;
    - resizing: the grid is upsampled bilinearly (align_corners=False) to the image's H x W, then
      min-max scaled to [0.9, 1].
    """
    x = _as_rgb_tensor(image)
    H, W = x.shape[2:]
    model = _vit_model(model_name, str(_vit_weights_path(model_name, weights).resolve()))
    cfg = model.pretrained_cfg or {}
    ih, iw = cfg.get("input_size", (3, *model.patch_embed.img_size))[1:]
    mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5)), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5)), dtype=torch.float32).view(1, 3, 1, 1)
    with torch.inference_mode():
        inp = F.interpolate(x, size=(ih, iw), mode="bilinear", align_corners=False, antialias=True)
        grid = _cls_attention(model, (inp - mean) / std).to(torch.float64)
        m = F.interpolate(grid[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()
    lo, hi = float(m.min()), float(m.max())
    if not hi > lo:
        return np.ones((H, W))
    return 0.9 + 0.1 * (m - lo) / (hi - lo)


def attention_psnr(a, b, *, model_name: str = DEFAULT_VIT, weights=None) -> float:
    """PSNR in dB weighted per pixel by the ViT attention map of the reference ``a`` (paper section V-B):
    10 log10(1 / wMSE) with wMSE = sum(w * err^2) / sum(w), err^2 averaged over colour channels, w from
    :func:`attention_map` (in [0.9, 1]); inf for identical images. The map is computed from ``a`` only, so
    all reconstructions of one image are weighted alike. Weights: ``weights`` path, ``$SMOE_VIT_WEIGHTS``,
    the timm/HF cache (module docstring); raises :class:`MetricUnavailable` where none is found."""
    x = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    y = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {x.shape} and {y.shape}")
    w = attention_map(a, model_name=model_name, weights=weights)
    err2 = (x - y) ** 2
    if err2.ndim == 3:
        err2 = err2.mean(axis=2)
    wmse = float((w * err2).sum() / w.sum())
    return math.inf if wmse <= 0 else 10.0 * math.log10(1.0 / wmse)


# ----------------------------------------------------------------------------------------------- tables
def available_metrics() -> dict[str, str | None]:
    """For "lpips" (AlexNet), "st_lpips" (AlexNet) and "attention_psnr" (default ViT): None where the metric
    can be computed here, else why not. Only looks for the files; builds no network."""
    checks = {
        "lpips": lambda: _lpips_backbone_path("alex"),
        "st_lpips": lambda: (_st_lpips_weights("alex"), _import_stlpips()),
        "attention_psnr": lambda: _vit_weights_path(DEFAULT_VIT),
    }
    out = {}
    for name, check in checks.items():
        try:
            check()
            out[name] = None
        except MetricUnavailable as exc:
            out[name] = str(exc)
    return out


def perceptual_columns(a, b) -> dict:
    """{"lpips", "st_lpips", "attention_psnr"} -> value (float), or "n/a (<short reason>)" where the
    metric is unavailable here; for result tables. Defaults: AlexNet LPIPS and ST-LPIPS, default ViT."""
    funcs = {"lpips": lpips, "st_lpips": st_lpips, "attention_psnr": attention_psnr}
    out = {}
    for name, fn in funcs.items():
        try:
            out[name] = fn(a, b)
        except MetricUnavailable as exc:
            out[name] = f"n/a ({exc.short})"
    return out
