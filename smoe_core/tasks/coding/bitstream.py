"""The SMoE bitstream: header, active-kernel flags and entropy-coded quantized parameters.

Implements section 3 "Arithmetic Coding" of

    R. Jongebloed, E. Bochinski, L. Lange and T. Sikora, "Quantized and Regularized Optimization for Coding
    Images Using Steered Mixtures-of-Experts", Communication Systems Group, Technische Universitaet Berlin
    (Data Compression Conference 2019; the venue is not printed in the stored text,
    /work/shared/papers/quantized_smoe_coding.txt).

What the paper specifies: every parameter kind is coded as i.i.d. symbols under a fitted Normal, Laplace or
Maxwell distribution; the file holds the index of the chosen pdf and its parameters, a binary arithmetic-coded
stream of flags for the active kernels of the initial grid, and the arithmetic-coded parameters; centres are
coded as offsets from their grid start positions.

Choices the paper leaves open, made here:

- Entropy coder: ``constriction`` 0.5.0 (range coder, ``constriction.stream.queue``), one coder for all
  streams (a flush costs a 32-bit word), every model built with ``perfect=False``, symbols as int32.
- Model choice: each stream's Normal, Laplace and Maxwell are fitted by maximum likelihood of the *quantized*
  distributions (probability of symbol s = mass of [s - 0.5, s + 0.5], the tails going to the two end
  symbols of the alphabet, as constriction's quantized models do it), and the one with the shortest code
  (-sum log2 p plus its descriptor) is used. The paper picks "by MSE comparison" to the symbol frequencies;
  that choice is reported beside ours (``describe`` / ``encode_with_info``: ``paper_choice``) and can be
  forced with ``selection="paper"``. Two more candidates compete by code length: ``constant`` (every symbol
  equal: no bits; e.g. every a21 = 0 after initialization; the only model a one-symbol alphabet admits) and
  ``table``, a categorical model whose symbol counts are sent in the payload (Exp-Golomb codes of the counts
  over the used symbol range, the order chosen per stream, the last count implied by n_active, the code bits
  coded as ``Uniform(2)`` symbols in the same coder), which wins where no pdf fits, e.g. the 15-symbol pi
  stream of trained models. Parameters are stored as float32 and the code lengths are computed with the
  rounded values the decoder will see.
- Normal and Laplace use constriction's ``QuantizedGaussian`` / ``QuantizedLaplace``; Maxwell (not built
  into constriction) is a ``Categorical`` table: the quantized Maxwell masses (pdf x^2 exp(-x^2 / 2a^2),
  x = s - loc) rounded to integer frequencies out of 2^20 (at least 1), the same on both sides. The integer
  rounding makes the table insensitive to last-bit differences of erf/exp between platforms, except for a
  mass within one ulp of a rounding tie.
- Active-kernel flags: one binary stream over the k1 x k2 grid in row-major order, coded by the shortest of:
  ``all`` (every kernel active: no bits), ``bernoulli`` (p = n_active / (k1 k2), both known from the header)
  and ``context`` (adaptive: the three flags above-left, above and above-right select one of 8 contexts,
  each with a Krichevsky-Trofimov estimate (n1 + 1/2) / (n + 1) from the rows already coded).
- Payload order: flags, then the streams a11, a21, a22, experts (Y, U, V), dmu_x, dmu_y, pi; kernels in
  grid order. pi's alphabet is {1, ..., 2^n - 1}: index 0 is a pruned kernel, which is not in the file.

File layout (little endian), format version 1::

    magic "SMoE" | version u8 | colour space u8 (0 gray, 1 rgb, 2 yuv) | bits u8 x 4 (A, experts, mu, pi)
    | H u16 | W u16 | k1 u16 | k2 u16 | n_active u32
    | ranges f32 x 2 x (4 + C): a_diag, a21, channels, dmu_x, dmu_y
    | flags model u8 | per stream: model u8 + parameters
          (constant: symbol u16; normal/laplace/maxwell: loc f32, scale f32; table: lo u16, hi u16, order u8)
    | payload length u32 (32-bit words) | payload | CRC32 u32 of every preceding byte

Every format version ends with the CRC32 of all preceding bytes (the coder alone decodes most corrupted
streams silently into wrong symbols). :func:`decode` raises one ``ValueError`` naming what is wrong for a
file that is not an SMoE bitstream, has another version, is truncated or corrupted, or holds values out of
bounds; sizes are checked against the payload and sane bounds (``MAX_GRID_KERNELS``) before anything is
allocated, and every loop is bounded by header values checked that way.
"""
from __future__ import annotations

import math
import struct
import zlib

import numpy as np
from scipy import special

from .quantize import (CHANNEL_NAMES, PI_RANGE, QuantizedSMoE, QuantSpec, grid_shape, quantize_model,
                       range_names, stream_bits, stream_names)

try:  # the entropy coder (pin: constriction==0.5.0)
    import constriction
except ImportError as exc:  # pragma: no cover - exercised only where the dependency is missing
    raise ImportError("smoe_core.tasks.coding.bitstream needs constriction==0.5.0 "
                      "(pip install constriction==0.5.0)") from exc

MAGIC = b"SMoE"
FORMAT_VERSION = 1
COLOR_CODES = {"gray": 0, "rgb": 1, "yuv": 2}
MODELS = ("constant", "normal", "laplace", "maxwell", "table")
PARAMETRIC = ("normal", "laplace", "maxwell")
FLAG_MODELS = ("all", "bernoulli", "context")
#: Largest grid the decoder accepts (k1 * k2), e.g. 2048 x 2048 for an 8192 x 8192 image.
MAX_GRID_KERNELS = 1 << 22
MAXWELL_TOTAL = 1 << 20
MAX_GOLOMB_ORDER = 24
MIN_SCALE, MAX_SCALE, MAX_LOC = 0.05, float(1 << 20), float(1 << 20)
_FIXED = struct.Struct("<4sBB4BHHHHI")
_DESC_SIZE = {"constant": 1 + 2, "normal": 1 + 8, "laplace": 1 + 8, "maxwell": 1 + 8, "table": 1 + 5}
_FLOOR = 2.0**-24  # constriction's leaky models give every symbol at least about this probability


class _FormatError(Exception):
    """Internal: a structural problem found while parsing (turned into one ValueError by ``_read``)."""


# ======================================================================================= probability models
def _alphabet(stream: str, bits: int) -> tuple[int, int]:
    return (1 if stream == "pi" else 0), 2**bits - 1


def _f32(x: float) -> float:
    return float(np.float32(x))


def _quantized_masses(kind: str, loc: float, scale: float, lo: int, hi: int) -> np.ndarray | None:
    """Masses of symbols lo..hi: [s - 0.5, s + 0.5] for interior symbols, the tails (-inf, lo + 0.5] and
    [hi - 0.5, inf) for the end symbols. This is how constriction 0.5.0's QuantizedGaussian/QuantizedLaplace
    treat the mass outside the alphabet (measured: a Gaussian far wider than the alphabet puts most of its
    mass on the two end symbols; there is no renormalization over the interior)."""
    x = np.arange(lo, hi + 2, dtype=np.float64) - 0.5
    z = (x - loc) / scale
    z[0], z[-1] = -np.inf, np.inf
    if kind == "normal":
        # lower half with cdf differences, upper half with sf differences: no cancellation in either tail
        p = np.where(z[1:] <= 0, special.ndtr(z[1:]) - special.ndtr(z[:-1]),
                     special.ndtr(-z[:-1]) - special.ndtr(-z[1:]))
    elif kind == "laplace":
        with np.errstate(over="ignore"):
            cdf = np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0)), 1 - 0.5 * np.exp(-np.maximum(z, 0)))
            sf = np.where(z < 0, 1 - 0.5 * np.exp(np.minimum(z, 0)), 0.5 * np.exp(-np.maximum(z, 0)))
        p = np.where(z[1:] <= 0, cdf[1:] - cdf[:-1], sf[:-1] - sf[1:])
    elif kind == "maxwell":
        zp = np.maximum(z, 0.0)
        with np.errstate(invalid="ignore"):
            cdf = special.erf(zp / math.sqrt(2)) - math.sqrt(2 / math.pi) * zp * np.exp(-zp * zp / 2)
        cdf[-1] = 1.0
        p = np.diff(cdf)
    else:  # pragma: no cover
        raise ValueError(f"unknown model {kind!r}")
    p = np.maximum(p, 0.0)
    total = p.sum()
    if not (total > 0 and np.isfinite(total)):
        return None
    return p / total


def _maxwell_frequencies(loc: float, scale: float, lo: int, hi: int) -> np.ndarray:
    p = _quantized_masses("maxwell", loc, scale, lo, hi)
    if p is None:
        p = np.ones(hi - lo + 1)
        p /= p.sum()
    return np.maximum(np.rint(p * MAXWELL_TOTAL), 1.0)


def _model_probabilities(kind: str, params, lo: int, hi: int) -> np.ndarray | None:
    """The probabilities the coder uses for symbols lo..hi (up to constriction's fixed-point rounding)."""
    if kind == "maxwell":
        f = _maxwell_frequencies(*params, lo, hi)
        return f / f.sum()
    p = _quantized_masses(kind, *params, lo, hi)
    if p is None:
        return None
    p = np.maximum(p, _FLOOR)
    return p / p.sum()


def _nll_bits(kind, params, values, counts, lo, hi) -> float:
    p = _model_probabilities(kind, params, lo, hi)
    if p is None:
        return math.inf
    return float(-(counts * np.log2(p[values - lo])).sum())


def _fit(kind: str, symbols: np.ndarray, lo: int, hi: int):
    """Maximum-likelihood (loc, scale) of the quantized distribution, as float32; and its code length."""
    values, counts = np.unique(symbols, return_counts=True)
    s = symbols.astype(np.float64)
    if kind == "normal":
        start = (s.mean(), max(s.std(), 0.5))
    elif kind == "laplace":
        med = float(np.median(s))
        start = (med, max(np.abs(s - med).mean(), 0.5))
    else:  # maxwell: moment match, a = std / sqrt((3 pi - 8) / pi), loc = mean - 2 a sqrt(2 / pi)
        a = max(s.std(), 0.5) / math.sqrt((3 * math.pi - 8) / math.pi)
        start = (s.mean() - 2 * a * math.sqrt(2 / math.pi), a)

    def clamp(loc, log_scale):
        return (min(max(loc, -MAX_LOC), MAX_LOC), min(max(math.exp(min(log_scale, 50.0)), MIN_SCALE), MAX_SCALE))

    def objective(x):
        return _nll_bits(kind, clamp(x[0], x[1]), values, counts, lo, hi)

    x0 = np.array([start[0], math.log(start[1])])
    from scipy import optimize  # here: the decoder fits nothing, and scipy.optimize takes most of a second to load

    res = optimize.minimize(objective, x0, method="Nelder-Mead",
                            options=dict(xatol=1e-3, fatol=1e-3, maxiter=400))
    best = res.x if objective(res.x) <= objective(x0) else x0
    loc, scale = clamp(best[0], best[1])
    params = (_f32(loc), _f32(scale))
    if params[1] < MIN_SCALE:
        params = (params[0], _f32(np.nextafter(np.float32(MIN_SCALE), np.float32(1))))
    return params, _nll_bits(kind, params, values, counts, lo, hi)


def _paper_mse(kind: str, params, symbols: np.ndarray, lo: int, hi: int) -> float:
    """The paper's selection criterion: MSE between the model's pmf and the relative symbol frequencies."""
    p = _model_probabilities(kind, params, lo, hi)
    if p is None:
        return math.inf
    freq = np.bincount(symbols - lo, minlength=hi - lo + 1) / symbols.size
    return float(np.mean((p - freq) ** 2))


# ---------------------------------------------------------------------------------------- count tables
def _eg_length(x: np.ndarray, k: int) -> np.ndarray:
    """Bits of the order-k Exp-Golomb code of x >= 0."""
    v = x.astype(np.int64) + (1 << k)
    return 2 * (np.floor(np.log2(v)).astype(np.int64)) - k + 1


def _eg_bits(x: int, k: int) -> list[int]:
    v = int(x) + (1 << k)
    n = v.bit_length()
    return [0] * (n - 1 - k) + [int(b) for b in bin(v)[2:]]


def _table_counts(symbols: np.ndarray):
    lo, hi = int(symbols.min()), int(symbols.max())
    counts = np.bincount(symbols - lo, minlength=hi - lo + 1)
    return lo, hi, counts


def _table_cost(symbols: np.ndarray):
    """(lo, hi, order, counts, table bits, data bits) of the categorical model with sent counts."""
    lo, hi, counts = _table_counts(symbols)
    sent = counts[:-1]  # the last count is implied by n_active
    orders = [(int(_eg_length(sent, k).sum()), k) for k in range(16)]
    table_bits, order = min(orders)
    nz = counts[counts > 0].astype(np.float64)
    data_bits = float(-(nz * np.log2(nz / symbols.size)).sum())
    return lo, hi, order, counts, table_bits, data_bits


# ---------------------------------------------------------------------------------------- flags
def _flag_contexts(rows_above: np.ndarray) -> np.ndarray:
    """Context 0..7 of every flag of a row from the row above: above-left + 2 above + 4 above-right."""
    pad = np.concatenate([[0], rows_above, [0]]).astype(np.int64)
    return pad[:-2] + 2 * pad[1:-1] + 4 * pad[2:]


def _flag_probabilities_context(flags2d: np.ndarray) -> np.ndarray:
    """p(flag = 1) of every flag under the adaptive context model (vectorized; the decoder goes row by row)."""
    k2, k1 = flags2d.shape
    prev = np.vstack([np.zeros((1, k1), flags2d.dtype), flags2d[:-1]])
    pad = np.pad(prev, ((0, 0), (1, 1))).astype(np.int64)
    ctx = pad[:, :-2] + 2 * pad[:, 1:-1] + 4 * pad[:, 2:]  # (k2, k1)
    onehot_n = np.stack([(ctx == c).sum(1) for c in range(8)], 1)  # (k2, 8)
    onehot_1 = np.stack([((ctx == c) & (flags2d == 1)).sum(1) for c in range(8)], 1)
    n_before = np.cumsum(onehot_n, 0) - onehot_n
    n1_before = np.cumsum(onehot_1, 0) - onehot_1
    rows = np.arange(k2)[:, None]
    return (n1_before[rows, ctx] + 0.5) / (n_before[rows, ctx] + 1.0)


def _bits_of(flags: np.ndarray, p1: np.ndarray) -> float:
    return float(-np.log2(np.where(flags == 1, p1, 1 - p1)).sum())


def _flag_costs(flags: np.ndarray, grid) -> dict[str, float]:
    k1, k2 = grid
    n, N = int(flags.sum()), flags.size
    if n == N:
        return {"all": 0.0}
    out = {"bernoulli": _bits_of(flags, np.full(N, n / N))}
    out["context"] = _bits_of(flags, _flag_probabilities_context(flags.reshape(k2, k1)).ravel())
    return out


# ======================================================================================= encoder
def _choose(stream: str, symbols: np.ndarray, bits: int, models, selection: str) -> dict:
    """Fits the candidate models of one stream; returns the chosen one and every candidate's figures."""
    lo, hi = _alphabet(stream, bits)
    n = symbols.size
    cands = {}
    if symbols.min() == symbols.max():
        cands["constant"] = dict(params=(int(symbols[0]),), data_bits=0.0, table_bits=0,
                                 desc_bits=8 * _DESC_SIZE["constant"])
    for kind in PARAMETRIC:
        if kind not in models:
            continue
        params, nll = _fit(kind, symbols, lo, hi)
        cands[kind] = dict(params=params, data_bits=nll, table_bits=0, desc_bits=8 * _DESC_SIZE[kind],
                           paper_mse=_paper_mse(kind, params, symbols, lo, hi))
    if "table" in models:
        tlo, thi, order, counts, tbits, dbits = _table_cost(symbols)
        cands["table"] = dict(params=(tlo, thi, order), data_bits=dbits, table_bits=tbits,
                              desc_bits=8 * _DESC_SIZE["table"], counts=counts)
    for c in cands.values():
        c["total_bits"] = c["data_bits"] + c["table_bits"] + c["desc_bits"]
    paper = min((k for k in PARAMETRIC if k in cands), key=lambda k: cands[k]["paper_mse"], default=None)
    if "constant" in cands:
        chosen = "constant"
    elif selection == "paper":
        chosen = paper
    else:
        chosen = min(cands, key=lambda k: (cands[k]["total_bits"], MODELS.index(k)))
    return dict(stream=stream, n=n, alphabet=(lo, hi), model=chosen, params=cands[chosen]["params"],
                paper_choice=paper, candidates=cands)


def _check_models(models) -> tuple[str, ...]:
    try:
        m = tuple(models)
    except TypeError:
        raise ValueError(f"models must be a sequence of model names from {MODELS[1:]}, got {models!r}") from None
    bad = [x for x in m if x not in MODELS[1:]]
    if bad or not m:
        raise ValueError(f"models must be a non-empty subset of {MODELS[1:]}, got {m!r}")
    return m


def _as_quantized(obj, grid_index, grid, spec) -> QuantizedSMoE:
    if isinstance(obj, QuantizedSMoE):
        if grid_index is not None or grid is not None or spec is not None:
            raise ValueError("grid_index, grid and spec must be None when obj is already a QuantizedSMoE")
        return obj
    from ...model import SMoE

    if isinstance(obj, SMoE):
        if grid_index is None:
            raise ValueError("grid_index must be given with an SMoE: the grid cell of every kernel")
        if obj.image_shape is None:
            raise ValueError("obj.image_shape must be set")
        return quantize_model(obj, grid_index, grid if grid is not None else grid_shape(obj.image_shape), spec)
    raise ValueError(f"obj must be an SMoE or a QuantizedSMoE, got {type(obj).__name__}")


def _u16(x: int, what: str) -> int:
    if not 0 <= int(x) <= 0xFFFF:
        raise ValueError(f"{what} = {x} does not fit the format (at most 65535)")
    return int(x)


def encode_with_info(obj, grid_index=None, grid=None, spec: QuantSpec | None = None, *,
                     models=("normal", "laplace", "maxwell", "table"), selection: str = "length") -> tuple[bytes, dict]:
    """Like :func:`encode`, also returning the coding figures: per stream the chosen model, its parameters,
    the ideal code length (``data_bits`` + ``table_bits``, -sum log2 p), every candidate's figures and the
    paper's choice (MSE to the symbol frequencies); the flags' model and bits; header and payload sizes."""
    q = _as_quantized(obj, grid_index, grid, spec)
    models = _check_models(models)
    if selection not in ("length", "paper"):
        raise ValueError(f"selection must be 'length' or 'paper', got {selection!r}")
    if selection == "paper" and not any(m in PARAMETRIC for m in models):
        raise ValueError("selection='paper' needs at least one of normal, laplace, maxwell in models")
    H, W = q.image_shape
    k1, k2 = q.grid
    _u16(H, "image height"), _u16(W, "image width"), _u16(k1, "k1"), _u16(k2, "k2")
    N = k1 * k2
    if N > MAX_GRID_KERNELS:
        raise ValueError(f"grid {q.grid} has more than MAX_GRID_KERNELS = {MAX_GRID_KERNELS} kernels")
    bits = q.bits()
    spec = q.spec

    enc = constriction.stream.queue.RangeEncoder()
    # -- flags
    flags = q.active.astype(np.int32)
    fcosts = _flag_costs(flags, q.grid)
    fmodel = min(fcosts, key=lambda k: (fcosts[k], FLAG_MODELS.index(k)))
    if fmodel == "bernoulli":
        enc.encode(flags, constriction.stream.model.Bernoulli(q.n_active / N, perfect=False))
    elif fmodel == "context":
        p1 = _flag_probabilities_context(flags.reshape(k2, k1)).ravel()
        enc.encode(flags, constriction.stream.model.Bernoulli(perfect=False), p1)
    header = bytearray(_FIXED.pack(MAGIC, FORMAT_VERSION, COLOR_CODES[q.color_space], *spec.as_tuple(),
                                   H, W, k1, k2, q.n_active))
    for name in range_names(q.channels):
        header += struct.pack("<ff", *q.ranges[name])
    header += struct.pack("<B", FLAG_MODELS.index(fmodel))
    # -- streams
    streams = []
    for name in stream_names(q.channels):
        sym = q.indices[name]
        info = _choose(name, sym, bits[name], models, selection)
        kind, params = info["model"], info["params"]
        header += struct.pack("<B", MODELS.index(kind))
        if kind == "constant":
            header += struct.pack("<H", params[0])
        elif kind in PARAMETRIC:
            header += struct.pack("<ff", *params)
        else:
            header += struct.pack("<HHB", *params)
        _encode_stream(enc, name, kind, params, sym, bits[name], info["candidates"][kind].get("counts"))
        c = info["candidates"][kind]
        info.update(data_bits=c["data_bits"], table_bits=c["table_bits"])
        streams.append(info)
    words = enc.get_compressed().astype("<u4")
    body = bytes(header) + struct.pack("<I", words.size) + words.tobytes()
    data = body + struct.pack("<I", zlib.crc32(body))
    ideal = fcosts[fmodel] + sum(s["data_bits"] + s["table_bits"] for s in streams)
    info = dict(version=FORMAT_VERSION, n_active=q.n_active, grid=q.grid, image_shape=q.image_shape,
                flags=dict(model=fmodel, bits=fcosts[fmodel], candidates=fcosts), streams=streams,
                header_bytes=len(header) + 4 + 4, payload_bytes=4 * int(words.size), file_bytes=len(data),
                ideal_payload_bits=ideal)
    return data, info


def encode(obj, grid_index=None, grid=None, spec: QuantSpec | None = None, *,
           models=("normal", "laplace", "maxwell", "table"), selection: str = "length") -> bytes:
    """The bitstream of a quantized SMoE.

    ``obj``: a :class:`QuantizedSMoE`, or an :class:`SMoE` (constant experts) with ``grid_index`` (the grid
    cell of each kernel), ``grid`` (k1, k2; default ``grid_shape(image_shape)``) and ``spec`` (bits), which
    is quantized with :func:`quantize_model` first. ``models``: the candidate models per stream (from
    "normal", "laplace", "maxwell", "table"); ``selection``: "length" (shortest code, default) or "paper"
    (the paper's rule: the parametric model closest in MSE to the symbol frequencies).
    """
    return encode_with_info(obj, grid_index, grid, spec, models=models, selection=selection)[0]


def _coder_model(kind: str, params, lo: int, hi: int):
    m = constriction.stream.model
    if kind == "normal":
        return m.QuantizedGaussian(lo, hi, params[0], params[1]), 0
    if kind == "laplace":
        return m.QuantizedLaplace(lo, hi, params[0], params[1]), 0
    if kind == "maxwell":
        return m.Categorical(_maxwell_frequencies(params[0], params[1], lo, hi), perfect=False), lo
    raise AssertionError(kind)  # pragma: no cover


def _encode_stream(enc, name, kind, params, sym, bits, counts) -> None:
    lo, hi = _alphabet(name, bits)
    if kind == "constant":
        return
    if kind == "table":
        tlo, thi, order = params
        table = [b for c in counts[:-1] for b in _eg_bits(int(c), order)]
        if table:
            enc.encode(np.asarray(table, np.int32), constriction.stream.model.Uniform(2))
        if thi > tlo:
            model = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)
            enc.encode((sym - tlo).astype(np.int32), model)
        return
    model, shift = _coder_model(kind, params, lo, hi)
    enc.encode((sym - shift).astype(np.int32), model)


# ======================================================================================= decoder
class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise _FormatError(f"truncated: the file ends inside the {what} (byte {len(self.data)} of "
                               f"at least {self.pos + n})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str):
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size, what))


def _parse(data: bytes) -> dict:
    """Structure and bounds of a version-1 file (raises _FormatError)."""
    r = _Reader(data)
    _magic, version, ccode, ab, eb, mb, pb, H, W, k1, k2, n_active = r.unpack(_FIXED.format[1:], "fixed header")
    colors = {v: k for k, v in COLOR_CODES.items()}
    if ccode not in colors:
        raise _FormatError(f"unknown colour space code {ccode}")
    color = colors[ccode]
    channels = CHANNEL_NAMES[color]
    for what, b in (("A", ab), ("experts", eb), ("mu", mb), ("pi", pb)):
        if not 1 <= b <= 16:
            raise _FormatError(f"bit depth of {what} is {b}, outside [1, 16]")
    spec = QuantSpec(ab, eb, mb, pb)
    if H < 1 or W < 1:
        raise _FormatError(f"image size {H} x {W} is empty")
    if not (1 <= k1 <= W and 1 <= k2 <= H):
        raise _FormatError(f"grid {k1} x {k2} does not fit the image {H} x {W}")
    N = k1 * k2
    if N > MAX_GRID_KERNELS:
        raise _FormatError(f"grid of {N} kernels exceeds the limit of {MAX_GRID_KERNELS}")
    if not 1 <= n_active <= N:
        raise _FormatError(f"{n_active} active kernels on a grid of {N}")
    rng = {}
    for name in range_names(channels):
        lo, hi = r.unpack("ff", f"range of {name}")
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise _FormatError(f"range of {name} ({lo}, {hi}) is not finite with lo <= hi")
        rng[name] = (lo, hi)
    (fcode,) = r.unpack("B", "flags model")
    if fcode >= len(FLAG_MODELS):
        raise _FormatError(f"unknown flags model {fcode}")
    fmodel = FLAG_MODELS[fcode]
    if (fmodel == "all") != (n_active == N):
        raise _FormatError(f"flags model {fmodel!r} with {n_active} of {N} kernels active")
    bits = stream_bits(spec, channels)
    descs = []
    for name in stream_names(channels):
        (mcode,) = r.unpack("B", f"model of stream {name}")
        if mcode >= len(MODELS):
            raise _FormatError(f"unknown model {mcode} for stream {name}")
        kind = MODELS[mcode]
        lo, hi = _alphabet(name, bits[name])
        if kind != "constant" and lo == hi:  # (constriction's quantized models panic on a 1-symbol alphabet)
            raise _FormatError(f"stream {name} has a one-symbol alphabet, so only the constant model is valid, "
                               f"not {kind!r}")
        if kind == "constant":
            params = r.unpack("H", f"parameters of stream {name}")
            if not lo <= params[0] <= hi:
                raise _FormatError(f"constant symbol {params[0]} of stream {name} outside [{lo}, {hi}]")
        elif kind in PARAMETRIC:
            params = r.unpack("ff", f"parameters of stream {name}")
            loc, scale = params
            if not (math.isfinite(loc) and abs(loc) <= MAX_LOC and math.isfinite(scale)
                    and MIN_SCALE <= scale <= MAX_SCALE):
                raise _FormatError(f"{kind} parameters ({loc}, {scale}) of stream {name} out of bounds")
        else:
            params = r.unpack("HHB", f"parameters of stream {name}")
            tlo, thi, order = params
            if not (lo <= tlo <= thi <= hi) or order > 15:
                raise _FormatError(f"table ({tlo}, {thi}, order {order}) of stream {name} out of bounds")
        descs.append((name, kind, params))
    (n_words,) = r.unpack("I", "payload length")
    need = r.pos + 4 * n_words + 4
    if len(data) < need:
        raise _FormatError(f"truncated: the header declares {4 * n_words} payload bytes, the file holds "
                           f"{max(0, len(data) - r.pos - 4)}")
    if len(data) > need:
        raise _FormatError(f"{len(data) - need} bytes of trailing data after the checksum")
    payload = np.frombuffer(data, dtype="<u4", count=n_words, offset=r.pos).astype(np.uint32)
    return dict(version=version, color_space=color, channels=channels, spec=spec, image_shape=(H, W),
                grid=(k1, k2), n_active=n_active, ranges=rng, flags_model=fmodel, streams=descs,
                payload=payload, header_bytes=r.pos + 4, payload_bytes=4 * n_words, file_bytes=len(data))


def _read(data) -> dict:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise ValueError(f"not an SMoE bitstream: the file does not start with the magic {MAGIC!r}")
    if len(data) < _FIXED.size + 4:
        raise ValueError(f"truncated SMoE bitstream: {len(data)} bytes, shorter than the fixed header")
    crc_ok = zlib.crc32(data[:-4]) == struct.unpack("<I", data[-4:])[0]
    version = data[len(MAGIC)]
    if version != FORMAT_VERSION:
        if crc_ok:
            raise ValueError(f"unsupported SMoE bitstream format version {version} (this decoder reads "
                             f"version {FORMAT_VERSION})")
        raise ValueError(f"corrupted SMoE bitstream: CRC32 mismatch (and the version byte reads {version}, "
                         f"this decoder reads version {FORMAT_VERSION})")
    try:
        parsed = _parse(data)
    except _FormatError as exc:
        if not crc_ok:
            raise ValueError(f"corrupted or truncated SMoE bitstream: CRC32 mismatch ({exc})") from None
        raise ValueError(f"invalid SMoE bitstream: {exc}") from None
    if not crc_ok:
        raise ValueError("corrupted SMoE bitstream: CRC32 mismatch")
    return parsed


def _decode_flags(dec, kind: str, n_active: int, grid) -> np.ndarray:
    k1, k2 = grid
    N = k1 * k2
    if kind == "all":
        return np.ones(N, np.int32)
    if kind == "bernoulli":
        return np.asarray(dec.decode(constriction.stream.model.Bernoulli(n_active / N, perfect=False), N), np.int32)
    family = constriction.stream.model.Bernoulli(perfect=False)
    out = np.zeros((k2, k1), np.int32)
    n = np.zeros(8, np.int64)
    n1 = np.zeros(8, np.int64)
    prev = np.zeros(k1, np.int32)
    for r in range(k2):
        ctx = _flag_contexts(prev)
        p1 = (n1[ctx] + 0.5) / (n[ctx] + 1.0)
        row = np.asarray(dec.decode(family, p1), np.int32)
        n += np.bincount(ctx, minlength=8)
        n1 += np.bincount(ctx, weights=row, minlength=8).astype(np.int64)
        out[r] = row
        prev = row
    return out.ravel()


def _decode_table(dec, n: int, tlo: int, thi: int, order: int, name: str, budget: list) -> np.ndarray:
    """Counts of a table stream; ``budget[0]``: bits left before the table would outrun the payload."""
    size = thi - tlo + 1
    counts = np.zeros(size, np.int64)
    bit = constriction.stream.model.Uniform(2)
    total = 0
    for i in range(size - 1):
        zeros = 0
        while dec.decode(bit) == 0:
            zeros += 1
            if zeros > 32:
                raise _FormatError(f"count table of stream {name} holds an over-long code")
        budget[0] -= 2 * zeros + order + 1
        if budget[0] < 0:
            raise _FormatError(f"count table of stream {name} is longer than the payload")
        v = 1
        for _ in range(zeros + order):
            v = (v << 1) | int(dec.decode(bit))
        c = v - (1 << order)
        total += c
        if total > n:
            raise _FormatError(f"count table of stream {name} sums to more than the {n} active kernels")
        counts[i] = c
    counts[-1] = n - total
    if counts[0] == 0 or counts[-1] == 0:
        raise _FormatError(f"count table of stream {name} is inconsistent with its symbol range")
    return counts


def _decode_stream(dec, name, kind, params, n, bits, budget) -> np.ndarray:
    lo, hi = _alphabet(name, bits)
    if kind == "constant":
        return np.full(n, params[0], np.int32)
    if kind == "table":
        tlo, thi, order = params
        counts = _decode_table(dec, n, tlo, thi, order, name, budget)
        if thi == tlo:
            return np.full(n, tlo, np.int32)
        model = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)
        sym = np.asarray(dec.decode(model, n), np.int32) + tlo
        if not np.array_equal(np.bincount(sym - tlo, minlength=thi - tlo + 1), counts):
            raise _FormatError(f"stream {name} does not match its count table")
        return sym
    model, shift = _coder_model(kind, params, lo, hi)
    return np.asarray(dec.decode(model, n), np.int32) + shift


def _decode_parsed(p: dict) -> QuantizedSMoE:
    dec = constriction.stream.queue.RangeDecoder(p["payload"])
    flags = _decode_flags(dec, p["flags_model"], p["n_active"], p["grid"])
    if int(flags.sum()) != p["n_active"]:
        raise _FormatError(f"the flags mark {int(flags.sum())} active kernels, the header {p['n_active']}")
    bits = stream_bits(p["spec"], p["channels"])
    budget = [32 * int(p["payload"].size) + 64]
    indices = {name: _decode_stream(dec, name, kind, params, p["n_active"], bits[name], budget)
               for name, kind, params in p["streams"]}
    if not dec.maybe_exhausted():
        raise _FormatError("the payload holds more data than its streams")
    return QuantizedSMoE(p["image_shape"], p["color_space"], p["grid"], p["spec"], flags.astype(bool),
                         p["ranges"], indices)


def _header_info(p: dict) -> dict:
    return dict(version=p["version"], image_shape=p["image_shape"], color_space=p["color_space"], grid=p["grid"],
                bits=dict(zip(("A", "experts", "mu", "pi"), p["spec"].as_tuple())), n_active=p["n_active"],
                ranges=dict(p["ranges"], pi=PI_RANGE), flags_model=p["flags_model"],
                streams={name: dict(model=kind, params=params) for name, kind, params in p["streams"]},
                header_bytes=p["header_bytes"], payload_bytes=p["payload_bytes"], file_bytes=p["file_bytes"])


def decode(data) -> tuple[QuantizedSMoE, dict]:
    """Decodes a bitstream: (the quantized model, header info). ``.to_model()`` gives the SMoE.

    Raises ValueError (one, with what is wrong) for anything that is not a valid version-1 SMoE bitstream.
    """
    p = _read(data)
    try:
        q = _decode_parsed(p)
    except _FormatError as exc:
        raise ValueError(f"invalid SMoE bitstream: {exc}") from None
    except ValueError as exc:  # a decoded value the quantized model rejects
        raise ValueError(f"invalid SMoE bitstream: {exc}") from None
    except (AssertionError, KeyError, TypeError, OverflowError, RuntimeError) as exc:
        # constriction on a payload that is invalid for the models (seen: AssertionError "Tried to decode
        # from compressed data that is invalid for the employed entropy model")
        raise ValueError(f"invalid SMoE bitstream: the entropy decoder failed ({type(exc).__name__}: {exc})") from None
    except BaseException as exc:
        # a Rust panic inside constriction arrives as pyo3_runtime.PanicException, a BaseException (the header
        # checks are meant to rule these out; this keeps the one-ValueError contract if one slips through)
        if type(exc).__name__ != "PanicException":
            raise
        raise ValueError(f"invalid SMoE bitstream: the entropy decoder failed (panic: {exc})") from None
    return q, _header_info(p)


def describe(data) -> dict:
    """What a bitstream holds, for an ``info`` command: header fields, sizes, bits per kernel and per pixel,
    and per stream its model, parameters, ideal code length, every candidate's code length re-fitted on the
    decoded symbols and the paper's choice (MSE to the symbol frequencies); flags likewise."""
    q, info = decode(data)
    H, W = q.image_shape
    info = dict(info)
    info["bits_per_pixel"] = 8 * info["file_bytes"] / (H * W)
    info["bits_per_kernel"] = 8 * info["file_bytes"] / q.n_active
    fc = _flag_costs(q.active.astype(np.int32), q.grid)
    fmodel = info.pop("flags_model")
    info["flags"] = dict(model=fmodel, bits=fc[fmodel], candidates=fc)
    bits = q.bits()
    total = info["flags"]["bits"]
    for name, s in info["streams"].items():
        kind, params = s["model"], s["params"]
        lo, hi = _alphabet(name, bits[name])
        sym = q.indices[name]
        refit = _choose(name, sym, bits[name], MODELS[1:], "length")
        if kind == "constant":
            ideal, table = 0.0, 0
        elif kind == "table":
            tlo, thi, order = params
            ideal = _table_cost(sym)[5]
            table = int(_eg_length(np.bincount(sym - tlo, minlength=thi - tlo + 1)[:-1], order).sum())
        else:
            values, counts = np.unique(sym, return_counts=True)
            ideal, table = _nll_bits(kind, params, values, counts, lo, hi), 0
        s.update(n=int(sym.size), data_bits=ideal, table_bits=table, paper_choice=refit["paper_choice"],
                 candidates={k: v["total_bits"] for k, v in refit["candidates"].items()})
        total += ideal + table
    info["ideal_payload_bits"] = total
    return info

