"""From the network's numbers to per-block SMoE kernels, and their decoding ([N-SMoE]: "an implicit
probabilistic SMoE decoder ... two-dimensional edge-aware kernels").

Per block the encoder gives ``k * (6 + C)`` numbers (:func:`raw_size`; 7k for gray), read per kernel as

    [cx, cy, r1, r2, angle, gate, e_1 .. e_C]

(with linear experts, ``linear_experts=True``, ``2C`` more per kernel: ``[.., s_1x, s_1y, .., s_Cx, s_Cy]``)

and mapped to an SMoE of ``k`` kernels over the block (coordinates in LR pixels of the block, x = column,
y = row, pixel centres at 0 .. block - 1, as in :class:`smoe_core.model.SMoE`):

- centre: ``mu = block * sigmoid(c) - 0.5``, inside the block's area (-0.5, block - 0.5);
- two scales (inverse standard deviations along the kernel's axes, 1 / LR px), log-uniform between
  ``1 / std_max`` and ``1 / std_min``: ``log s = log(1 / std_max) + log(std_max / std_min) sigmoid(r)``
  (defaults 0.1 and ``block / 2`` LR px);
- angle ``theta`` (radians, unconstrained: the precision is periodic in it);
- precision ``P = (R S)(R S)^T`` with R the rotation by theta and S = diag(s1, s2) (the authors' form), and its
  Cholesky factor in closed form (no decomposition): ``a11 = sqrt(P11)``, ``a21 = P12 / a11``,
  ``a22 = s1 s2 / a11`` (since det P = s1^2 s2^2), the ``chol`` field of :class:`~smoe_core.model.SMoE`;
- experts: constant, ``e`` plus (``residual_experts=True``, default) the LR block's bilinear value at the
  centre, so an untrained head already interpolates the block (our choice; the authors' experts are the raw
  numbers);
- gate: ``pi = softmax(gate)`` over the block's kernels (used by our gating only);
- linear experts (our option, ``linear_experts=True``; the authors' experts are constant): per channel two slopes
  (per LR px, x then y), the expert ``m_j(x) = e_j + S_j (x - mu_j)`` of :class:`~smoe_core.model.SMoE`; the raw
  numbers are the slopes themselves and start at 0 (:meth:`KernelHead.initial_raw`), so an untrained head decodes
  as with constant experts. Why: in the residual form (:mod:`.model`, ``base``) a slope's gradient is the
  gate-weighted first moment of the residual, which is not zero across an edge where the constant expert's (the
  residual's gate-weighted mean) nearly is; the one change measured to leave the bicubic base (:mod:`.model`).

Gating (:func:`decode`):

- ``"smoe"`` (default): our SMoE, ``w_j = pi_j K_j / sum_i pi_i K_i`` in the log domain, all blocks of a batch
  rendered by ONE call of the tiled renderer at scale s (each block its own model, so the gating is normalized
  within the block), one tile per block: :func:`smoe_core.render.render_tiled_batch` on the stacked fields (the
  same lists and arithmetic as :func:`~smoe_core.render.render_many` of one :class:`~smoe_core.model.SMoE` per
  block, without building and checking 15,625 models for a 512 x 512 image: that took 1 s of the 1.9 s decode;
  the fields are checked finite at once instead). The reference backends (``"torch"``, ``"dense"``) go through
  :func:`~smoe_core.render.render_many`. Differentiable in every field.
- ``"authors"``: the authors' decoder in plain torch, dense: ``w_j = softmax_j(K_j)``, a softmax over the
  Gaussian *values* ``K_j = exp(-q_j / 2)`` (not their logs), with no pi: since 0 < K_j <= 1 any two gates
  differ by a factor of at most e. Same kernels, same sampling grid.

The 7k numbers: the authors' later decoders spend ``2k`` on centres, ``4k`` on a 2 x 2 matrix and ``k`` on
experts (``z = 2k + 4k + k``); their scale-and-angle decoder reads centres, experts, two scales and an angle (6k)
from it. We read the same six and give the seventh to the gate weight our gating uses.

Sampling: output pixel (r', c') at scale s samples ((c' + 0.5) / s - 0.5, (r' + 0.5) / s - 0.5) in block
pixels, the renderer's convention (the authors use a [0, 1] grid per block; the map between them is affine and
the network learns its kernels in whichever frame it is given).

Export: :func:`block_model` (one block's kernels) and :func:`image_model` (all blocks of an image merged into
one image-space SMoE, centres offset by their block's origin) give :class:`~smoe_core.model.SMoE` models that
``smoe render MODEL.npz --scale s`` renders. A block model renders as its block decodes (our gating; within
1e-4, the tiled renderer's truncation at 5 sigma per tile).
The merged model is one global SMoE over the union of the blocks' kernels: its gating mixes neighbouring
blocks' kernels where the stitched decode averages separately gated blocks, so the two agree only
approximately (exactly where a single block covers the pixel and kernels of other blocks carry no weight).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...model import SMoE
from ...render import log_pi, output_shape, render_many, render_tiled_batch

GATINGS = ("smoe", "authors")
#: numbers per kernel before the experts: centre (2), two scales, angle, gate
N_GEOMETRY = 6
DEFAULT_KERNELS = 16
VARIANT_KERNELS = {"I": 16, "II": 16, "III": 32}


def raw_size(n_kernels: int, channels: int = 1, linear_experts: bool = False) -> int:
    """Numbers per block the encoder must give: ``k * (6 + C)`` (7k for gray), ``k * (6 + 3C)`` with linear
    experts (9k for gray)."""
    return int(n_kernels) * (N_GEOMETRY + int(channels) * (3 if linear_experts else 1))


def grid_shape(n_kernels: int) -> tuple[int, int]:
    """Rows and columns of the initial kernel grid: the most nearly square factorization (16 -> 4 x 4, 32 -> 4 x 8)."""
    k = int(n_kernels)
    rows = int(math.isqrt(k))
    while k % rows:
        rows -= 1
    return rows, k // rows


def chol_from_scales(s1: torch.Tensor, s2: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(..., 3) = (a11, a21, a22), the lower Cholesky factor of P = (R S)(R S)^T, S = diag(s1, s2), in closed form."""
    c, s = torch.cos(theta), torch.sin(theta)
    q1, q2 = s1 * s1, s2 * s2
    p11 = c * c * q1 + s * s * q2
    p12 = c * s * (q1 - q2)
    a11 = torch.sqrt(p11)
    return torch.stack([a11, p12 / a11, s1 * s2 / a11], -1)


def precision_from_scales(s1: torch.Tensor, s2: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(..., 2, 2) precision P = (R S)(R S)^T, R = [[cos, -sin], [sin, cos]], S = diag(s1, s2)."""
    c, s = torch.cos(theta), torch.sin(theta)
    RS = torch.stack([torch.stack([c * s1, -s * s2], -1), torch.stack([s * s1, c * s2], -1)], -2)
    return RS @ RS.transpose(-1, -2)


@dataclass
class BlockKernels:
    """The SMoE kernels of N blocks, k each, in block pixel coordinates (torch, differentiable)."""

    mu: torch.Tensor  # (N, k, 2) centres (x, y)
    chol: torch.Tensor  # (N, k, 3) (a11, a21, a22), P = A A^T
    pi: torch.Tensor  # (N, k) gate weights (softmax over the block; our gating only)
    experts: torch.Tensor  # (N, k, C) constant experts
    scales: torch.Tensor  # (N, k, 2) inverse standard deviations along the kernel's axes
    theta: torch.Tensor  # (N, k) angles
    block: int
    slopes: torch.Tensor | None = None  # (N, k, C, 2) linear experts' slopes (x, y) per LR px, or None (constant)

    @property
    def n_blocks(self) -> int:
        return int(self.mu.shape[0])

    @property
    def n_kernels(self) -> int:
        return int(self.mu.shape[1])

    def precision(self) -> torch.Tensor:
        """(N, k, 2, 2) precision matrices."""
        return precision_from_scales(self.scales[..., 0], self.scales[..., 1], self.theta)

    def select(self, index) -> "BlockKernels":
        """The kernels of the blocks ``index`` (a slice or index tensor over N)."""
        return BlockKernels(*(t[index] for t in (self.mu, self.chol, self.pi, self.experts, self.scales,
                                                 self.theta)), self.block,
                            None if self.slopes is None else self.slopes[index])

    def models(self) -> list[SMoE]:
        """One torch :class:`~smoe_core.model.SMoE` per block over its (block, block) LR pixels (unchecked:
        the head's maps keep every field valid)."""
        b = self.block
        slopes = [None] * self.n_blocks if self.slopes is None else self.slopes.unbind(0)
        fields = zip(self.mu.unbind(0), self.chol.unbind(0), self.pi.unbind(0), self.experts.unbind(0), slopes)
        return [SMoE(m, c, p, e, sl, image_shape=(b, b), validate=False) for m, c, p, e, sl in fields]

    def expert_values(self, points: torch.Tensor) -> torch.Tensor:
        """(N, P, k, C): every kernel's expert at the (P, 2) block points (constant experts: broadcast)."""
        e = self.experts[:, None, :, :]
        if self.slopes is None:
            return e.expand(-1, points.shape[0], -1, -1)
        d = points[None, :, None, :] - self.mu[:, None, :, :]  # (N, P, k, 2)
        return e + (self.slopes[:, None] * d[..., None, :]).sum(-1)


class KernelHead(torch.nn.Module):
    """Maps (N, k * (6 + C)) numbers to :class:`BlockKernels` (no learnable parameters of its own)."""

    def __init__(self, n_kernels: int = DEFAULT_KERNELS, block: int = 16, channels: int = 1,
                 std_min: float = 0.1, std_max: float | None = None, residual_experts: bool = True,
                 linear_experts: bool = False):
        super().__init__()
        self.n_kernels, self.block, self.channels = int(n_kernels), int(block), int(channels)
        self.std_min = float(std_min)
        self.std_max = float(std_max) if std_max is not None else self.block / 2.0
        if not 0 < self.std_min < self.std_max:
            raise ValueError(f"need 0 < std_min < std_max, got {self.std_min} and {self.std_max}")
        self.residual_experts = bool(residual_experts)
        self.linear_experts = bool(linear_experts)

    @property
    def per_kernel(self) -> int:
        return raw_size(1, self.channels, self.linear_experts)

    @property
    def raw_size(self) -> int:
        return raw_size(self.n_kernels, self.channels, self.linear_experts)

    def initial_raw(self) -> torch.Tensor:
        """(k, 6 + C) numbers ((k, 6 + 3C) with linear experts) that decode to a grid of round kernels (std = half
        the grid spacing), equal gates, zero expert offsets and zero slopes: the output layer's bias at
        initialization."""
        k, b = self.n_kernels, self.block
        rows, cols = grid_shape(k)
        fy = (torch.arange(rows, dtype=torch.float64) + 0.5) / rows
        fx = (torch.arange(cols, dtype=torch.float64) + 0.5) / cols
        gy, gx = torch.meshgrid(fy, fx, indexing="ij")
        logit = lambda p: torch.log(p) - torch.log1p(-p)  # noqa: E731
        std = 0.5 * b / max(rows, cols)
        u = (math.log(self.std_max / std) / math.log(self.std_max / self.std_min))
        u = min(max(u, 1e-3), 1 - 1e-3)
        r = logit(torch.tensor(u, dtype=torch.float64))
        raw = torch.zeros(k, self.per_kernel, dtype=torch.float64)
        raw[:, 0], raw[:, 1] = logit(gx.reshape(-1)), logit(gy.reshape(-1))
        raw[:, 2] = raw[:, 3] = r
        return raw.to(torch.float32)

    def forward(self, raw: torch.Tensor, lr_blocks: torch.Tensor | None = None) -> BlockKernels:
        """``raw`` (N, :attr:`raw_size`); ``lr_blocks`` (N, C, block, block), needed for residual experts."""
        k, b, C = self.n_kernels, self.block, self.channels
        if raw.ndim != 2 or raw.shape[1] != self.raw_size:
            raise ValueError(f"raw must have shape (N, {self.raw_size}), got {tuple(raw.shape)}")
        p = raw.reshape(raw.shape[0], k, self.per_kernel)
        mu = b * torch.sigmoid(p[..., 0:2]) - 0.5
        lo, span = -math.log(self.std_max), math.log(self.std_max / self.std_min)
        scales = torch.exp(lo + span * torch.sigmoid(p[..., 2:4]))
        theta = p[..., 4]
        pi = torch.softmax(p[..., 5], dim=-1)
        experts = p[..., N_GEOMETRY:N_GEOMETRY + C]
        slopes = p[..., N_GEOMETRY + C:].reshape(p.shape[0], k, C, 2) if self.linear_experts else None
        if self.residual_experts:
            if lr_blocks is None:
                raise ValueError("residual experts need the LR blocks")
            experts = experts + sample_at(lr_blocks, mu)
        chol = chol_from_scales(scales[..., 0], scales[..., 1], theta)
        return BlockKernels(mu, chol, pi, experts, scales, theta, b, slopes)


def sample_at(blocks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values (N, k, C) of blocks (N, C, b, b) at points (N, k, 2) (x, y) in pixels (border-clamped)."""
    b = blocks.shape[-1]
    grid = (points + 0.5) * (2.0 / b) - 1.0  # pixel centre i -> (2i + 1) / b - 1, align_corners=False
    out = F.grid_sample(blocks, grid[:, :, None, :], mode="bilinear", padding_mode="border", align_corners=False)
    return out[..., 0].transpose(1, 2)


# ---------------------------------------------------------------------- decoding
def decode(kernels: BlockKernels, scale: float, *, gating: str = "smoe", backend: str = "tiled",
           tile: int | None = None) -> torch.Tensor:
    """(N, C, b * s, b * s): every block's SMoE rendered at scale s (see the module docstring for the gatings)."""
    if gating not in GATINGS:
        raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
    if gating == "authors":
        return decode_authors(kernels, scale)
    b = kernels.block
    Ho, Wo = output_shape((b, b), scale)
    tile = int(tile or max(Ho, Wo))
    if backend != "tiled":  # the reference backends, through the checked API
        out = render_many(kernels.models(), scale=scale, backend=backend, tile=tile)
        return out[:, None] if out.ndim == 3 else out.permute(0, 3, 1, 2)
    fields = [kernels.mu, kernels.chol, kernels.pi, kernels.experts]
    if kernels.slopes is not None:
        fields.append(kernels.slopes)
    with torch.no_grad():
        finite = bool(torch.stack([torch.isfinite(t).all() for t in fields]).all())
    if not finite:
        raise ValueError("the network gave non-finite kernel parameters (a diverged or corrupted network)")
    out = render_tiled_batch(kernels.mu, kernels.chol, log_pi(kernels.pi), kernels.experts, b, slopes=kernels.slopes,
                             scale=scale, tile=tile)  # (N, Ho * Wo, C): one binning step and one launch
    return out.transpose(1, 2).reshape(kernels.n_blocks, -1, Ho, Wo)


def sample_points(block: int, scale: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """(P, 2) (x, y) block coordinates sampled by the output pixels of a block at scale s (row-major)."""
    Ho, Wo = output_shape((block, block), scale)
    ys = (torch.arange(Ho, dtype=dtype, device=device) + 0.5) / scale - 0.5
    xs = (torch.arange(Wo, dtype=dtype, device=device) + 0.5) / scale - 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)


def quadratic_forms(kernels: BlockKernels, points: torch.Tensor) -> torch.Tensor:
    """(N, P, k) Mahalanobis forms q = (x - mu)^T P (x - mu) through the Cholesky factor."""
    d = points[None, :, None, :] - kernels.mu[:, None, :, :]  # (N, P, k, 2)
    a = kernels.chol[:, None, :, :]
    u = a[..., 0] * d[..., 0] + a[..., 1] * d[..., 1]
    v = a[..., 2] * d[..., 1]
    return u * u + v * v


def decode_authors(kernels: BlockKernels, scale: float, chunk: int = 256) -> torch.Tensor:
    """The authors' gating, dense: y = sum_j softmax_j(exp(-q_j / 2)) m_j(x) (no pi; m_j the constant or linear
    expert). (N, C, b * s, b * s)."""
    b = kernels.block
    Ho, Wo = output_shape((b, b), scale)
    pts = sample_points(b, scale, kernels.mu.dtype, kernels.mu.device)
    outs = []
    for s in range(0, kernels.n_blocks, chunk):
        part = kernels.select(slice(s, s + chunk))
        gate = torch.softmax(torch.exp(-0.5 * quadratic_forms(part, pts)), dim=-1)  # (n, P, k)
        outs.append(mix(gate, part, pts))  # (n, P, C)
    out = torch.cat(outs, 0)
    return out.transpose(1, 2).reshape(kernels.n_blocks, -1, Ho, Wo)


def mix(gate: torch.Tensor, kernels: BlockKernels, points: torch.Tensor) -> torch.Tensor:
    """(N, P, C) = sum_j gate_j m_j(x) for gates (N, P, k) at the (P, 2) points."""
    if kernels.slopes is None:
        return gate @ kernels.experts
    return (gate[..., None] * kernels.expert_values(points)).sum(2)


def decode_smoe_dense(kernels: BlockKernels, scale: float) -> torch.Tensor:
    """Our gating evaluated densely in torch (every kernel of a block at every pixel): the reference of
    :func:`decode` with ``gating="smoe"`` (which truncates kernels at 5 sigma per tile)."""
    b = kernels.block
    Ho, Wo = output_shape((b, b), scale)
    pts = sample_points(b, scale, kernels.mu.dtype, kernels.mu.device)
    lw = torch.log(kernels.pi)[:, None, :] - 0.5 * quadratic_forms(kernels, pts)
    out = mix(torch.softmax(lw, dim=-1), kernels, pts)
    return out.transpose(1, 2).reshape(kernels.n_blocks, -1, Ho, Wo)


# ---------------------------------------------------------------------- export
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def block_model(kernels: BlockKernels, index: int) -> SMoE:
    """Block ``index``'s kernels as a numpy :class:`SMoE` over its (block, block) LR pixels: ``render(model,
    scale=s)`` (or ``smoe render FILE --scale s``) reproduces the block's decode with our gating."""
    i = int(index)
    slopes = None if kernels.slopes is None else _np(kernels.slopes[i])
    return SMoE(_np(kernels.mu[i]), _np(kernels.chol[i]), _np(kernels.pi[i]), _np(kernels.experts[i]), slopes,
                image_shape=(kernels.block, kernels.block))


def image_model(kernels: BlockKernels, origins, image_shape, image_index: int = 0) -> SMoE:
    """All blocks of image ``image_index`` merged into one numpy :class:`SMoE` over the LR image: centres
    offset by their block's origin, each block's pi kept (every block carries total weight 1). An approximation
    of the stitched decode (see the module docstring)."""
    origins = torch.as_tensor(origins)
    n = int(origins.shape[0])
    sl = slice(int(image_index) * n, (int(image_index) + 1) * n)
    if sl.stop > kernels.n_blocks:
        raise ValueError(f"image {image_index} is not in a batch of {kernels.n_blocks // n} images")
    shift = origins.flip(-1).to(kernels.mu)[:, None, :]  # (row, col) -> (x, y)
    mu = (kernels.mu[sl] + shift).reshape(-1, 2)
    K = mu.shape[0]
    slopes = None if kernels.slopes is None else _np(kernels.slopes[sl].reshape(K, -1, 2))
    return SMoE(_np(mu), _np(kernels.chol[sl].reshape(-1, 3)), _np(kernels.pi[sl].reshape(-1)),
                _np(kernels.experts[sl].reshape(K, -1)), slopes, image_shape=tuple(int(s) for s in image_shape[:2]))
