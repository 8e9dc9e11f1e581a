"""Uniform quantization of SMoE parameters, and fake quantization for quantization-aware training.

Implements section 2 "Parameter Quantization" (eqs. 13-15) and the quantizer settings of section 3
("During all steps of optimization ... fake quantization", "The parameters A, m, mu, pi are quantized with 9, 7,
10 and 4 bits", "Arithmetic Coding": centres coded relative to their grid start positions) of

    R. Jongebloed, E. Bochinski, L. Lange and T. Sikora, "Quantized and Regularized Optimization for Coding
    Images Using Steered Mixtures-of-Experts", Communication Systems Group, Technische Universitaet Berlin
    (Data Compression Conference 2019; the venue is not printed in the stored text,
    /work/shared/papers/quantized_smoe_coding.txt).

The quantizer of one parameter kind with ``n`` bits and range [a, b] (eqs. 13-15):

    v_bar = min(max(v, a), b),   step = (b - a) / (2^n - 1),   index = round((v_bar - a) / step),
    v_hat = index * step + a,    index in {0, ..., 2^n - 1}.

**Eq. 14 sign.** The paper prints Delta = (a - b) / (2^n - 1). That is a sign typo; the step used here is
(b - a) / (2^n - 1) > 0. Evidence: (1) the paper calls Delta "the step size depending on the number of bits";
(2) with a < b the printed Delta is negative, so the indices round((v_bar - a)/Delta) of eq. 15 would lie in
{-(2^n - 1), ..., 0}, not the n-bit codes the paper transmits (the reconstruction v_hat happens to be the same,
since round is odd-symmetric, which is why the typo is harmless in the paper's TensorFlow code but not in a file
format); (3) the function the paper names for it, TensorFlow's ``fake_quant_with_min_max_vars`` (ref. [10]),
uses scale = (max - min) / (quant_max - quant_min). ``tests/test_coding_quantize.py`` checks the sign.

Parameter kinds, bits (``QuantSpec``) and ranges (:func:`ranges`):

- ``a11``, ``a22`` (diagonal of A, precision P = A A^T), 9 bits, one shared range ``a_diag``; ``a21``
  (off-diagonal), 9 bits, its own range. The paper: "the main diagonal entries of A have their own
  quantization range as they are always > 0, but the lower triangular entries are arbitrary", read as two
  ranges (diagonal, off-diagonal); a11 and a22 are still coded as separate streams.
- experts (constant experts, one stream per channel, Y/U/V for YUV), 7 bits, one range per channel.
- ``dmu_x``, ``dmu_y``: the centre's offset mu - g from its initial grid position g (known to the decoder
  from the grid k1 x k2 and the image size, :func:`grid_centres`), 10 bits, one range per coordinate.
- ``pi``, 4 bits, range fixed to [0, 2] (``PI_RANGE``), as in the paper.

Choices the paper leaves open, made here:

- Ranges (all but pi) are the min / max over the *active* kernels of the current full-precision values, per
  channel and per coordinate, recomputed at every training step (no gradient flows into them) and written to
  the file. The paper optimizes the ranges jointly (TensorFlow's trainable min/max variables); taking the
  min/max makes the ranges a function of the parameters, so training and file use the same rule. Ranges are
  rounded outward to float32 (:func:`ranges`), the precision the file stores, so the encoder's ranges are
  bit-identical to the ones training used. TensorFlow's zero-point nudging is not applied (zero need not be
  representable: no parameter kind here needs an exact zero).
- Pruning: a kernel is *active* when its pi quantizes to an index > 0. With pi on [0, 2] at 4 bits, index 0
  means v_hat = 0, i.e. no weight (pi <= 1/15 = step/2, ties rounded to even, so pi = 1/15 is pruned):
  training (where such a kernel contributes nothing) and the file (which drops it) agree. This replaces the
  paper's "pi_k < 0" removal, which would keep kernels whose quantized pi is 0 and that render as nothing.
- Rounding: half to even (``numpy.rint`` / ``torch.round``), computed in float64 on both sides, so the
  training step and the encoder assign the same index to the same float value.
- Fake quantization gradient (straight-through estimator, as TensorFlow's fake quantization): identity for
  values inside [a, b], zero for clipped values (only pi can be clipped: the other ranges contain every
  active value by construction). The full-precision values are the ones updated.
- Degenerate range a = b (e.g. every a21 = 0 after a grid initialization): step 0, every index 0, v_hat = a.
- Bits: 1 to 16 per kind.

torch is imported by the fake quantization alone (training): quantizing, dequantizing and
:class:`QuantizedSMoE` work on numpy, so the decoder (``smoe decode``) starts without torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ...lazy import is_torch_tensor

if TYPE_CHECKING:
    import torch

    from ...model import SMoE

PI_RANGE = (0.0, 2.0)
MAX_BITS = 16
#: Colour spaces with the names of their expert channels (stream names in the file).
CHANNEL_NAMES = {"gray": ("L",), "rgb": ("R", "G", "B"), "yuv": ("Y", "U", "V")}
#: Grid cell side of the paper's initialization: k_{1,2} = floor(Res_{w,h} / 4).
GRID_CELL = 4


def _host(x):
    """``x``, or a torch tensor detached and on the CPU, ready for ``numpy.asarray``."""
    return x.detach().cpu() if is_torch_tensor(x) else x


# ---------------------------------------------------------------------------------------- specification
@dataclass(frozen=True)
class QuantSpec:
    """Bits per parameter kind (paper: A 9, experts m 7, centres mu 10, pi 4)."""

    a_bits: int = 9
    expert_bits: int = 7
    mu_bits: int = 10
    pi_bits: int = 4

    def __post_init__(self):
        for name in ("a_bits", "expert_bits", "mu_bits", "pi_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= int(v) <= MAX_BITS:
                raise ValueError(f"{name} must be an integer in [1, {MAX_BITS}], got {v!r}")
            object.__setattr__(self, name, int(v))

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.a_bits, self.expert_bits, self.mu_bits, self.pi_bits)

    def pi_threshold(self) -> float:
        """pi at or below this value quantizes to index 0 (no weight): step / 2 of the pi quantizer."""
        return (PI_RANGE[1] - PI_RANGE[0]) / (2 ** self.pi_bits - 1) / 2.0


def _check_spec(spec) -> QuantSpec:
    if spec is None:
        return QuantSpec()
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    return spec


def channel_names(color_space: str, n_channels: int) -> tuple[str, ...]:
    """Names of the expert streams: ("Y", "U", "V") for YUV, ("R", "G", "B") for RGB, ("L",) for gray."""
    if color_space not in CHANNEL_NAMES:
        raise ValueError(f"color_space must be one of {tuple(CHANNEL_NAMES)}, got {color_space!r}")
    names = CHANNEL_NAMES[color_space]
    if len(names) != n_channels:
        raise ValueError(f"n_channels={n_channels} does not fit color_space={color_space!r} ({len(names)} channels)")
    return names


def range_names(channels) -> tuple[str, ...]:
    """Names of the coded ranges, in file order: a_diag, a21, one per channel, dmu_x, dmu_y."""
    return ("a_diag", "a21", *channels, "dmu_x", "dmu_y")


def stream_names(channels) -> tuple[str, ...]:
    """Names of the coded index streams, in file order."""
    return ("a11", "a21", "a22", *channels, "dmu_x", "dmu_y", "pi")


def stream_bits(spec: QuantSpec, channels) -> dict[str, int]:
    spec = _check_spec(spec)
    out = {"a11": spec.a_bits, "a21": spec.a_bits, "a22": spec.a_bits}
    out.update({c: spec.expert_bits for c in channels})
    out.update({"dmu_x": spec.mu_bits, "dmu_y": spec.mu_bits, "pi": spec.pi_bits})
    return out


def stream_range_name(stream: str) -> str:
    """The range a stream is quantized with ("a11"/"a22" share "a_diag"; pi has the fixed ``PI_RANGE``)."""
    return "a_diag" if stream in ("a11", "a22") else stream


# ---------------------------------------------------------------------------------------- grid
def grid_shape(image_shape) -> tuple[int, int]:
    """(k1, k2) = (floor(W / 4), floor(H / 4)): columns and rows of the paper's initial grid."""
    H, W = _check_image_shape(image_shape)
    k1, k2 = W // GRID_CELL, H // GRID_CELL
    if k1 < 1 or k2 < 1:
        raise ValueError(f"image_shape {(H, W)} is too small for a grid with cells of {GRID_CELL} px")
    return k1, k2


def _check_image_shape(image_shape) -> tuple[int, int]:
    try:
        H, W = (int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be (H, W), got {image_shape!r}") from None
    if H < 1 or W < 1:
        raise ValueError(f"image_shape must be (H, W) with positive sizes, got {(H, W)}")
    return H, W


def _check_grid(grid, image_shape=None) -> tuple[int, int]:
    try:
        k1, k2 = (int(s) for s in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (k1, k2), got {grid!r}") from None
    if k1 < 1 or k2 < 1:
        raise ValueError(f"grid must be (k1, k2) with positive sizes, got {(k1, k2)}")
    if image_shape is not None:
        H, W = image_shape
        if k1 > W or k2 > H:
            raise ValueError(f"grid {(k1, k2)} has more columns/rows than the image {(H, W)} has pixels")
    return k1, k2


def grid_centres(image_shape, grid) -> np.ndarray:
    """(k1 * k2, 2) float64 initial centres (x, y) of a k1 x k2 grid, row-major (index = row * k1 + column).

    Cell centres in pixel coordinates: x = (i + 0.5) W / k1 - 0.5, y = (j + 0.5) H / k2 - 0.5 (the layout of
    ``smoe_core.init.grid``). Part of the file format: the decoder rebuilds the centres from these.
    """
    H, W = _check_image_shape(image_shape)
    k1, k2 = _check_grid(grid, (H, W))
    xs = (np.arange(k1, dtype=np.float64) + 0.5) * (W / k1) - 0.5
    ys = (np.arange(k2, dtype=np.float64) + 0.5) * (H / k2) - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], 1)


# ---------------------------------------------------------------------------------------- scalar quantizer
def _check_bits(bits, name="bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= MAX_BITS:
        raise ValueError(f"{name} must be an integer in [1, {MAX_BITS}], got {bits!r}")
    return int(bits)


def _check_range(lo, hi, name="range") -> tuple[float, float]:
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two numbers (lo, hi), got {(lo, hi)!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be finite with lo <= hi, got ({lo}, {hi})")
    return lo, hi


def step(lo: float, hi: float, bits: int) -> float:
    """The step (b - a) / (2^n - 1) of eq. 14 with its sign corrected (module docstring)."""
    lo, hi = _check_range(lo, hi, "lo/hi")
    bits = _check_bits(bits)
    return (hi - lo) / (2**bits - 1)


def to_indices(values, lo: float, hi: float, bits: int) -> np.ndarray:
    """int32 indices round((clip(v, lo, hi) - lo) / step) in [0, 2^bits - 1] (eqs. 13-15), float64 arithmetic."""
    lo, hi = _check_range(lo, hi, "lo/hi")
    bits = _check_bits(bits)
    v = np.asarray(_host(values), dtype=np.float64)
    if not np.isfinite(v).all():
        raise ValueError("values must be finite")
    if hi == lo:
        return np.zeros(v.shape, np.int32)
    d = (hi - lo) / (2**bits - 1)
    idx = np.rint((np.clip(v, lo, hi) - lo) / d)
    return np.clip(idx, 0, 2**bits - 1).astype(np.int32)


def from_indices(indices, lo: float, hi: float, bits: int) -> np.ndarray:
    """float64 values index * step + lo (eq. 15); indices must be integers in [0, 2^bits - 1]."""
    lo, hi = _check_range(lo, hi, "lo/hi")
    bits = _check_bits(bits)
    idx = np.asarray(indices)
    if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() > 2**bits - 1):
        raise ValueError(f"indices must be integers in [0, {2**bits - 1}]")
    return idx.astype(np.float64) * ((hi - lo) / (2**bits - 1)) + lo


def _fake_quant(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantized values in the forward pass; gradient 1 inside [lo, hi], 0 outside (straight through).

    ``lo``/``hi`` broadcast against ``v`` (float64 tensors); arithmetic in float64, result in v's dtype.
    """
    import torch

    v64 = v.detach().to(torch.float64)
    d = (hi - lo) / (2**bits - 1)
    safe = torch.where(d > 0, d, torch.ones_like(d))
    idx = torch.round((torch.minimum(torch.maximum(v64, lo), hi) - lo) / safe).clamp(0, 2**bits - 1)
    q = torch.where(d > 0, idx * d + lo, lo.expand_as(v64))
    inside = ((v64 >= lo) & (v64 <= hi)).to(v.dtype)
    return q.to(v.dtype) + (v - v.detach()) * inside


def fake_quantize(values: torch.Tensor, lo, hi, bits: int) -> torch.Tensor:
    """Fake quantization (eqs. 13-15) of a torch tensor with a straight-through gradient.

    Forward: the quantized value index * step + lo. Backward: identity where lo <= v <= hi, zero where v was
    clipped (TensorFlow's ``fake_quant_with_min_max_vars`` gradient). ``lo``/``hi`` are numbers or tensors
    broadcasting against ``values`` (e.g. one range per channel).
    """
    if not is_torch_tensor(values):
        raise ValueError(f"values must be a torch tensor, got {type(values).__name__}")
    import torch

    bits = _check_bits(bits)
    lo_t = torch.as_tensor(lo, dtype=torch.float64, device=values.device)
    hi_t = torch.as_tensor(hi, dtype=torch.float64, device=values.device)
    if not (torch.isfinite(lo_t).all() and torch.isfinite(hi_t).all()) or bool((lo_t > hi_t).any()):
        raise ValueError("lo/hi must be finite with lo <= hi")
    return _fake_quant(values, lo_t, hi_t, bits)


# ---------------------------------------------------------------------------------------- ranges
def _f32_down(x: float) -> float:
    f = np.float32(x)
    if float(f) > x:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def _f32_up(x: float) -> float:
    f = np.float32(x)
    if float(f) < x:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def _np(x) -> np.ndarray:
    return np.asarray(_host(x), dtype=np.float64)


def pi_indices(pi, spec: QuantSpec | None = None) -> np.ndarray:
    """Indices of pi on the fixed range [0, 2] (``PI_RANGE``)."""
    spec = _check_spec(spec)
    return to_indices(_np(pi), *PI_RANGE, spec.pi_bits)


def active_mask(pi, spec: QuantSpec | None = None) -> np.ndarray:
    """Kernels whose pi quantizes to an index > 0 (the pruning rule: index 0 means no weight)."""
    return pi_indices(pi, spec) > 0


def _check_constant_smoe(model) -> None:
    from ...model import SMoE

    if not isinstance(model, SMoE):
        raise ValueError(f"model must be an SMoE, got {type(model).__name__}")
    if model.rbf:
        raise ValueError("model must be an SMoE (rbf=False): the coding format has no RBF variant")
    if model.slopes is not None:
        raise ValueError("model must have constant experts (slopes=None): the paper codes constant experts only")


def _ranges_np(chol, experts, dmu, channels) -> dict[str, tuple[float, float]]:
    out = {}

    def put(name, v):
        out[name] = (_f32_down(float(v.min())), _f32_up(float(v.max())))

    put("a_diag", chol[:, [0, 2]])
    put("a21", chol[:, 1])
    for c, name in enumerate(channels):
        put(name, experts[:, c])
    put("dmu_x", dmu[:, 0])
    put("dmu_y", dmu[:, 1])
    return out


def ranges(model: SMoE, active=None, grid_mu=None, spec: QuantSpec | None = None) -> dict[str, tuple[float, float]]:
    """The quantizer ranges of ``model``: {name: (lo, hi)} for ``range_names(channels)``.

    Min / max over the ``active`` kernels (bool (K,); default: pi index > 0) of the full-precision values,
    rounded outward to float32. ``grid_mu`` (K, 2) are the kernels' initial grid positions (the centres are
    quantized as offsets mu - grid_mu); pi's range is the fixed ``PI_RANGE`` and is not listed.
    """
    _check_constant_smoe(model)
    spec = _check_spec(spec)
    K = model.n_kernels
    channels = channel_names(model.color_space, model.n_channels)
    if grid_mu is None:
        raise ValueError("grid_mu must be given: the (K, 2) initial grid positions of the kernels")
    g = _np(grid_mu)
    if g.shape != (K, 2) or not np.isfinite(g).all():
        raise ValueError(f"grid_mu must be a finite ({K}, 2) array, got shape {g.shape}")
    if active is None:
        act = active_mask(model.pi, spec)
    else:
        act = np.asarray(_host(active))
        if act.dtype != bool or act.shape != (K,):
            raise ValueError(f"active must be a boolean array of shape ({K},), got {act.dtype} {act.shape}")
    if not act.any():
        raise ValueError("active selects no kernel: every pi quantizes to index 0")
    chol, experts, mu = _np(model.chol)[act], _np(model.experts)[act], _np(model.mu)[act]
    return _ranges_np(chol, experts, mu - g[act], channels)


# ---------------------------------------------------------------------------------------- quantized model
@dataclass
class QuantizedSMoE:
    """A quantized constant-expert SMoE on a k1 x k2 grid: what the file holds.

    - ``image_shape`` (H, W), ``color_space`` ("gray", "rgb", "yuv"), ``grid`` (k1, k2), ``spec`` (bits).
    - ``active`` bool (k1 * k2,): which grid kernels remain (row-major grid order).
    - ``ranges``: {name: (lo, hi)} for ``range_names(channels)`` (float32 values).
    - ``indices``: {stream: int32 (n_active,)} for ``stream_names(channels)``, kernels in grid order;
      pi indices are >= 1 (index 0 is a pruned kernel).
    """

    image_shape: tuple[int, int]
    color_space: str
    grid: tuple[int, int]
    spec: QuantSpec
    active: np.ndarray
    ranges: dict
    indices: dict
    channels: tuple = field(init=False)

    def __post_init__(self):
        self.image_shape = _check_image_shape(self.image_shape)
        if self.color_space not in CHANNEL_NAMES:
            raise ValueError(f"color_space must be one of {tuple(CHANNEL_NAMES)}, got {self.color_space!r}")
        self.channels = CHANNEL_NAMES[self.color_space]
        self.grid = _check_grid(self.grid, self.image_shape)
        self.spec = _check_spec(self.spec)
        N = self.grid[0] * self.grid[1]
        act = np.asarray(self.active)
        if act.dtype != bool or act.shape != (N,):
            raise ValueError(f"active must be a boolean array of shape ({N},), got {act.dtype} {act.shape}")
        self.active = act
        n = int(act.sum())
        if n == 0:
            raise ValueError("active selects no kernel")
        if not isinstance(self.ranges, dict) or set(self.ranges) != set(range_names(self.channels)):
            raise ValueError(f"ranges must be a dict with keys {range_names(self.channels)}")
        self.ranges = {k: _check_range(*self.ranges[k], name=f"ranges[{k!r}]") for k in range_names(self.channels)}
        bits = stream_bits(self.spec, self.channels)
        if not isinstance(self.indices, dict) or set(self.indices) != set(stream_names(self.channels)):
            raise ValueError(f"indices must be a dict with keys {stream_names(self.channels)}")
        fixed = {}
        for k in stream_names(self.channels):
            v = np.asarray(self.indices[k])
            if v.shape != (n,) or not np.issubdtype(v.dtype, np.integer):
                raise ValueError(f"indices[{k!r}] must be an integer array of shape ({n},), got {v.dtype} {v.shape}")
            low = 1 if k == "pi" else 0
            if n and (v.min() < low or v.max() > 2 ** bits[k] - 1):
                raise ValueError(f"indices[{k!r}] must lie in [{low}, {2 ** bits[k] - 1}]")
            fixed[k] = v.astype(np.int32)
        self.indices = fixed

    @property
    def n_active(self) -> int:
        return int(self.active.sum())

    def bits(self) -> dict[str, int]:
        return stream_bits(self.spec, self.channels)

    def stream_range(self, stream: str) -> tuple[float, float]:
        return PI_RANGE if stream == "pi" else self.ranges[stream_range_name(stream)]

    def values(self, stream: str) -> np.ndarray:
        """float64 dequantized values of one stream."""
        return from_indices(self.indices[stream], *self.stream_range(stream), self.bits()[stream])

    def grid_index(self) -> np.ndarray:
        """Grid cell (row-major) of every kernel, in order."""
        return np.flatnonzero(self.active)

    def fields(self) -> dict[str, np.ndarray]:
        """The dequantized fields (numpy float32, kernels in grid order): ``mu`` (K, 2), ``chol`` (K, 3), ``pi``
        (K,), ``experts`` (K, C); what :meth:`to_model` wraps and the torch-free decoder renders."""
        g = grid_centres(self.image_shape, self.grid)[self.active]
        mu = g + np.stack([self.values("dmu_x"), self.values("dmu_y")], 1)
        chol = np.stack([self.values("a11"), self.values("a21"), self.values("a22")], 1)
        experts = np.stack([self.values(c) for c in self.channels], 1)
        return dict(mu=mu.astype(np.float32), chol=chol.astype(np.float32), pi=self.values("pi").astype(np.float32),
                    experts=experts.astype(np.float32))

    def to_model(self) -> SMoE:
        """The dequantized SMoE (numpy float32), kernels in grid order."""
        from ...model import SMoE

        f = self.fields()
        return SMoE(f["mu"], f["chol"], f["pi"], f["experts"], image_shape=self.image_shape,
                    color_space=self.color_space)

    def equal_indices(self, other: "QuantizedSMoE") -> bool:
        """Whether two quantized models carry the same header fields and indices."""
        return (self.image_shape == other.image_shape and self.color_space == other.color_space
                and self.grid == other.grid and self.spec == other.spec
                and np.array_equal(self.active, other.active)
                and all(np.float32(self.ranges[k][i]) == np.float32(other.ranges[k][i])
                        for k in self.ranges for i in (0, 1))
                and all(np.array_equal(self.indices[k], other.indices[k]) for k in self.indices))


def quantize_model(model: SMoE, grid_index, grid, spec: QuantSpec | None = None) -> QuantizedSMoE:
    """Quantizes ``model`` for coding.

    ``grid_index`` (K,) int: the grid cell (row-major, ``grid = (k1, k2)``) each kernel was initialized at
    (distinct). Kernels whose pi quantizes to index 0 are dropped (pruning rule); the ranges are
    :func:`ranges` over the remaining kernels, the same rule the fake quantization of training applies.
    """
    _check_constant_smoe(model)
    spec = _check_spec(spec)
    if model.image_shape is None:
        raise ValueError("model.image_shape must be set (the decoder rebuilds the grid from it)")
    k1, k2 = _check_grid(grid, model.image_shape)
    gi = np.asarray(_host(grid_index))
    K = model.n_kernels
    if gi.shape != (K,) or not np.issubdtype(gi.dtype, np.integer):
        raise ValueError(f"grid_index must be an integer array of shape ({K},), got {gi.dtype} {gi.shape}")
    if K and (gi.min() < 0 or gi.max() >= k1 * k2):
        raise ValueError(f"grid_index must lie in [0, {k1 * k2 - 1}]")
    if len(np.unique(gi)) != K:
        raise ValueError("grid_index must not repeat a grid cell")
    channels = channel_names(model.color_space, model.n_channels)
    g = grid_centres(model.image_shape, (k1, k2))[gi]
    act = active_mask(model.pi, spec)
    rng = ranges(model, act, g, spec)
    order = np.argsort(gi[act], kind="stable")
    chol, experts = _np(model.chol)[act][order], _np(model.experts)[act][order]
    dmu = (_np(model.mu) - g)[act][order]
    pi = _np(model.pi)[act][order]
    bits = stream_bits(spec, channels)
    src = {"a11": chol[:, 0], "a21": chol[:, 1], "a22": chol[:, 2], "dmu_x": dmu[:, 0], "dmu_y": dmu[:, 1]}
    src.update({c: experts[:, i] for i, c in enumerate(channels)})
    indices = {k: to_indices(v, *rng[stream_range_name(k)], bits[k]) for k, v in src.items()}
    indices["pi"] = to_indices(pi, *PI_RANGE, bits["pi"])
    flags = np.zeros(k1 * k2, bool)
    flags[gi[act]] = True
    return QuantizedSMoE(model.image_shape, model.color_space, (k1, k2), spec, flags, rng, indices)


# ---------------------------------------------------------------------------------------- fake quantization
class FakeQuantizer:
    """The quantization-aware-training transform: ``fit(..., transform=FakeQuantizer(grid_mu))``.

    Called with the dict of parameter tensors ("mu", "chol", "pi", "experts"), it returns the dict of their
    fake-quantized values (the loss sees these; the optimizer updates the full-precision ones): pi on [0, 2],
    A with the a_diag / a21 ranges, experts per channel, centres as offsets from ``grid_mu`` per coordinate,
    ranges from :func:`ranges`' rule over the kernels active at this step (recomputed at every call; the
    last ones are in ``last_ranges``, the last active mask in ``last_active``).

    ``grid_mu`` (K, 2) are the initial grid positions of the K kernels, row-aligned with the parameters.
    The parameter rows must stay aligned with them: pass ``prune_below=-math.inf`` to ``fit`` (a kernel
    whose pi quantizes to 0 already has no weight) and remove pruned kernels between calls with
    :meth:`keep`. A call with another number of kernels raises ValueError.
    """

    def __init__(self, grid_mu, spec: QuantSpec | None = None, color_space: str = "yuv"):
        self.spec = _check_spec(spec)
        g = _np(grid_mu)
        if g.ndim != 2 or g.shape[1] != 2 or g.shape[0] < 1 or not np.isfinite(g).all():
            raise ValueError(f"grid_mu must be a finite (K, 2) array with K >= 1, got shape {g.shape}")
        if color_space not in CHANNEL_NAMES:
            raise ValueError(f"color_space must be one of {tuple(CHANNEL_NAMES)}, got {color_space!r}")
        self.grid_mu = g
        self.color_space = color_space
        self.last_ranges: dict | None = None
        self.last_active: np.ndarray | None = None

    @property
    def n_kernels(self) -> int:
        return int(self.grid_mu.shape[0])

    def keep(self, mask) -> None:
        """Keeps the rows of ``mask`` (bool (K,)), as the parameters are compacted."""
        m = np.asarray(_host(mask))
        if m.dtype != bool or m.shape != (self.n_kernels,):
            raise ValueError(f"mask must be a boolean array of shape ({self.n_kernels},), got {m.dtype} {m.shape}")
        if not m.any():
            raise ValueError("mask removes every kernel")
        self.grid_mu = self.grid_mu[m]

    def __call__(self, params: dict) -> dict:
        if not isinstance(params, dict) or not {"mu", "chol", "pi", "experts"} <= set(params):
            raise ValueError("params must be a dict with 'mu', 'chol', 'pi' and 'experts' tensors")
        if params.get("slopes") is not None:
            raise ValueError("params must not hold 'slopes': the coding format has constant experts only")
        mu, chol, pi, experts = params["mu"], params["chol"], params["pi"], params["experts"]
        K = int(pi.shape[0])
        if K != self.n_kernels:
            raise ValueError(f"params hold {K} kernels but grid_mu has {self.n_kernels}: pass "
                             "prune_below=-math.inf to fit and drop kernels with FakeQuantizer.keep")
        import torch

        channels = channel_names(self.color_space, int(experts.shape[1]))
        spec = self.spec
        dev = pi.device
        g = torch.as_tensor(self.grid_mu, dtype=torch.float64, device=dev)
        with torch.no_grad():
            act = active_mask(pi, spec)
            if not act.any():
                raise ValueError("every kernel's pi quantizes to index 0 (no kernel has weight)")
            rng = _ranges_np(_np(chol)[act], _np(experts)[act], (_np(mu) - self.grid_mu)[act], channels)
        self.last_ranges, self.last_active = rng, act

        def lim(*names):
            lo = torch.tensor([rng[n][0] for n in names], dtype=torch.float64, device=dev)
            hi = torch.tensor([rng[n][1] for n in names], dtype=torch.float64, device=dev)
            return lo, hi

        out = dict(params)
        pl = torch.tensor(PI_RANGE[0], dtype=torch.float64, device=dev)
        ph = torch.tensor(PI_RANGE[1], dtype=torch.float64, device=dev)
        out["pi"] = _fake_quant(pi, pl, ph, spec.pi_bits)
        lo, hi = lim("a_diag", "a21", "a_diag")
        out["chol"] = _fake_quant(chol, lo, hi, spec.a_bits)
        lo, hi = lim(*channels)
        out["experts"] = _fake_quant(experts, lo, hi, spec.expert_bits)
        lo, hi = lim("dmu_x", "dmu_y")
        # offsets in float64, as the encoder computes them (mu float32 - grid float64)
        dmu_hat = _fake_quant(mu.to(torch.float64) - g, lo, hi, spec.mu_bits)
        out["mu"] = (g + dmu_hat).to(mu.dtype)
        return out
