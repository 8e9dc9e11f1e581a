"""The SMoE bitstream: exact round trip, size against the ideal code length, and a decoder fuzz."""
import math
import struct
import time
import zlib

import numpy as np
import pytest
from scipy import stats

from smoe_core import SMoE
from smoe_core.io import load_image
from smoe_core.tasks.coding import bitstream as B
from smoe_core.tasks.coding.quantize import (QuantizedSMoE, QuantSpec, grid_centres, grid_shape, quantize_model,
                                             stream_names)


def random_quantized(seed=0, H=40, W=52, color_space="yuv", spec=None, frac=0.4, all_active=False):
    """Random indices (a mix of shapes: peaked, skewed, uniform, bimodal) on the image's grid."""
    spec = QuantSpec() if spec is None else spec
    rng = np.random.default_rng(seed)
    grid = grid_shape((H, W))
    N = grid[0] * grid[1]
    active = np.ones(N, bool) if all_active else rng.random(N) < frac
    active[rng.integers(N)] = True
    n = int(active.sum())
    channels = {"gray": ("L",), "rgb": ("R", "G", "B"), "yuv": ("Y", "U", "V")}[color_space]
    bits = dict(a11=spec.a_bits, a21=spec.a_bits, a22=spec.a_bits, dmu_x=spec.mu_bits, dmu_y=spec.mu_bits,
                pi=spec.pi_bits, **{c: spec.expert_bits for c in channels})
    indices = {}
    for i, name in enumerate(stream_names(channels)):
        top = 2 ** bits[name] - 1
        lo = 1 if name == "pi" else 0
        shape = (seed + i) % 4
        if shape == 0:
            v = rng.normal(top / 2, top / 12, n)
        elif shape == 1:
            v = lo + rng.gamma(2.0, top / 10, n)
        elif shape == 2:
            v = rng.uniform(lo, top, n)
        else:
            v = np.where(rng.random(n) < 0.5, rng.normal(top / 4, top / 30, n), rng.normal(3 * top / 4, top / 30, n))
        indices[name] = np.clip(np.rint(v), lo, top).astype(np.int32)
    names = ("a_diag", "a21", *channels, "dmu_x", "dmu_y")
    ranges = {k: (float(np.float32(-1.5 + j)), float(np.float32(2.25 + j))) for j, k in enumerate(names)}
    return QuantizedSMoE((H, W), color_space, grid, spec, active, ranges, indices)


def structured_model(size=48):
    """A model built from a crop of a test image: experts = cell means, flags where the image has detail."""
    img = load_image("peppers", color=True)[200:200 + size, 180:180 + size]
    H, W = img.shape[:2]
    grid = grid_shape((H, W))
    g = grid_centres((H, W), grid)
    k1, k2 = grid
    cells = img[:k2 * 4, :k1 * 4].reshape(k2, 4, k1, 4, 3)
    mean = cells.mean((1, 3)).reshape(-1, 3)
    var = cells.var((1, 3)).sum(-1).reshape(-1)
    keep = (var > np.quantile(var, 0.5)) | ((np.arange(g.shape[0]) % 3) == 0)
    gi = np.flatnonzero(keep)
    K = gi.size
    rng = np.random.default_rng(3)
    sig = 2.0 + 2.0 * (var[gi] < np.median(var))
    chol = np.stack([1 / sig, rng.normal(0, 0.02, K), 1 / (sig * rng.uniform(0.8, 1.2, K))], 1)
    mu = g[gi] + rng.laplace(0, 0.4, (K, 2))
    pi = np.clip(rng.normal(1.0, 0.3, K), 0.1, 2.0)
    m = SMoE(mu.astype(np.float32), chol.astype(np.float32), pi.astype(np.float32), mean[gi].astype(np.float32),
             image_shape=(H, W), color_space="rgb")
    return m, gi, grid


# ----------------------------------------------------------------------------------- independent ideal length
def _masses_scipy(kind, loc, scale, lo, hi):
    dist = {"normal": stats.norm(loc, scale), "laplace": stats.laplace(loc, scale),
            "maxwell": stats.maxwell(loc, scale)}[kind]
    edges = np.arange(lo, hi + 2) - 0.5
    cdf = dist.cdf(edges)
    cdf[0], cdf[-1] = 0.0, 1.0  # tails to the end symbols (constriction's quantized models)
    p = np.maximum(np.diff(cdf), 2.0**-24)
    return p / p.sum()


def ideal_bits(q: QuantizedSMoE, header: dict) -> float:
    """-sum log2 p of every coded symbol under the file's models (scipy, not the module's code)."""
    flags = q.active.astype(int)
    N, n = flags.size, int(flags.sum())
    fm = header["flags_model"]
    if fm == "all":
        total = 0.0
    elif fm == "bernoulli":
        p = n / N
        total = -(n * math.log2(p) + (N - n) * math.log2(1 - p))
    else:
        k1, k2 = q.grid
        f = flags.reshape(k2, k1)
        cnt, cnt1, total = np.zeros(8), np.zeros(8), 0.0
        for r in range(k2):
            up = np.pad(f[r - 1], 1) if r else np.zeros(k1 + 2, int)
            ctx = up[:-2] + 2 * up[1:-1] + 4 * up[2:]
            p1 = (cnt1[ctx] + 0.5) / (cnt[ctx] + 1)
            total += -np.log2(np.where(f[r] == 1, p1, 1 - p1)).sum()
            np.add.at(cnt, ctx, 1)
            np.add.at(cnt1, ctx, f[r])
    bits = q.bits()
    for name, s in header["streams"].items():
        sym = q.indices[name]
        lo, hi = (1 if name == "pi" else 0), 2 ** bits[name] - 1
        kind, params = s["model"], s["params"]
        if kind == "constant":
            continue
        if kind == "table":
            tlo, thi, k = params
            counts = np.bincount(sym - tlo, minlength=thi - tlo + 1)
            for c in counts[:-1]:  # Exp-Golomb order k
                total += 2 * math.floor(math.log2(c + 2**k)) - k + 1
            nz = counts[counts > 0]
            total += -(nz * np.log2(nz / n)).sum()
            continue
        p = _masses_scipy(kind, *params, lo, hi)
        total += -np.log2(p[sym - lo]).sum()
    return float(total)


# ----------------------------------------------------------------------------------- round trip and size
@pytest.mark.parametrize("seed,color_space,spec,all_active", [
    (0, "yuv", QuantSpec(), False),
    (1, "yuv", QuantSpec(), True),
    (2, "rgb", QuantSpec(6, 5, 8, 3), False),
    (3, "gray", QuantSpec(12, 10, 12, 6), False),
    (4, "yuv", QuantSpec(1, 1, 1, 1), False),
])
def test_exact_round_trip_random(seed, color_space, spec, all_active):
    q = random_quantized(seed, color_space=color_space, spec=spec, all_active=all_active)
    data = B.encode(q)
    q2, header = B.decode(data)
    assert q2.equal_indices(q)
    assert np.array_equal(q2.active, q.active)
    assert header["version"] == B.FORMAT_VERSION and header["grid"] == q.grid
    if all_active:
        assert header["flags_model"] == "all"


def test_exact_round_trip_structured_and_size_within_one_percent():
    m, gi, grid = structured_model()
    q = quantize_model(m, gi, grid)
    data, info = B.encode_with_info(m, gi)
    q2, header = B.decode(data)
    assert q2.equal_indices(q)
    ideal = ideal_bits(q2, header)
    assert ideal == pytest.approx(info["ideal_payload_bits"], rel=1e-3)
    payload = header["payload_bytes"]
    assert payload <= 1.01 * ideal / 8 + 8
    assert payload >= 0.99 * ideal / 8 - 8  # the ideal really is the coder's model
    assert len(data) == header["header_bytes"] + payload
    # the decoded model is the dequantized one
    d = q2.to_model()
    assert np.allclose(d.experts, q.to_model().experts) and d.n_kernels == q.n_active


@pytest.mark.parametrize("seed", range(6))
def test_size_within_one_percent_of_ideal_random(seed):
    q = random_quantized(seed, H=96, W=120, frac=0.5)
    data = B.encode(q)
    q2, header = B.decode(data)
    assert q2.equal_indices(q)
    ideal = ideal_bits(q2, header)
    assert header["payload_bytes"] <= 1.01 * ideal / 8 + 8
    assert header["payload_bytes"] >= 0.99 * ideal / 8 - 8


def test_every_model_kind_round_trips():
    q = random_quantized(7, H=64, W=64)
    seen = set()
    for models in (("normal",), ("laplace",), ("maxwell",), ("table",), ("normal", "maxwell")):
        data = B.encode(q, models=models)
        q2, header = B.decode(data)
        assert q2.equal_indices(q)
        kinds = {s["model"] for s in header["streams"].values()}
        assert kinds <= set(models) | {"constant"}
        seen |= kinds
    assert seen >= {"normal", "laplace", "maxwell", "table"}


def test_constant_streams_cost_nothing():
    q = random_quantized(8)
    q.indices["a21"][:] = 0
    q.indices["pi"][:] = 9
    q2, header = B.decode(B.encode(q))
    assert q2.equal_indices(q)
    assert header["streams"]["a21"] == {"model": "constant", "params": (0,)}
    assert header["streams"]["pi"] == {"model": "constant", "params": (9,)}


def test_single_active_kernel():
    q = random_quantized(9, frac=0.0)
    assert q.n_active == 1
    q2, _ = B.decode(B.encode(q))
    assert q2.equal_indices(q)


def test_length_selection_is_never_longer_than_paper_selection():
    for seed in range(2):
        q = random_quantized(seed, H=64, W=64)
        by_len = B.encode_with_info(q)[1]
        by_paper = B.encode_with_info(q, selection="paper")[1]
        # what the length rule minimizes: the ideal payload plus the model descriptors in the header
        assert (by_len["ideal_payload_bits"] + 8 * by_len["header_bytes"]
                <= by_paper["ideal_payload_bits"] + 8 * by_paper["header_bytes"] + 1e-6)
        for s in by_len["streams"]:
            if s["model"] != "constant":
                assert s["paper_choice"] in B.PARAMETRIC
                best = min(c["total_bits"] for c in s["candidates"].values())
                assert s["candidates"][s["model"]]["total_bits"] == best
        q2, _ = B.decode(B.encode(q, selection="paper"))
        assert q2.equal_indices(q)


def test_context_flags_win_on_structured_flags():
    q = random_quantized(10, H=120, W=120, frac=1.0)
    k1, k2 = q.grid
    yy, xx = np.mgrid[:k2, :k1]
    act = ((xx - k1 / 2) ** 2 + (yy - k2 / 2) ** 2 < (k1 / 3) ** 2).ravel()  # a disc of active kernels
    n = int(act.sum())
    q = QuantizedSMoE(q.image_shape, q.color_space, q.grid, q.spec, act, q.ranges,
                      {k: v[:n] for k, v in q.indices.items()})
    data, info = B.encode_with_info(q)
    assert info["flags"]["model"] == "context"
    assert info["flags"]["bits"] < 0.5 * info["flags"]["candidates"]["bernoulli"]
    q2, _ = B.decode(data)
    assert q2.equal_indices(q)


def test_describe():
    m, gi, grid = structured_model()
    data = B.encode(m, gi)
    d = B.describe(data)
    assert d["file_bytes"] == len(data)
    assert d["n_active"] == len(gi) and d["color_space"] == "rgb" and d["grid"] == grid
    assert d["bits"] == {"A": 9, "experts": 7, "mu": 10, "pi": 4}
    assert d["bits_per_kernel"] == pytest.approx(8 * len(data) / len(gi))
    assert set(d["streams"]) == {"a11", "a21", "a22", "R", "G", "B", "dmu_x", "dmu_y", "pi"}
    for s in d["streams"].values():
        assert s["n"] == len(gi)
        if s["model"] != "constant":
            assert s["paper_choice"] in B.PARAMETRIC
    assert d["ranges"]["pi"] == (0.0, 2.0)


def test_encoder_argument_errors():
    q = random_quantized(0)
    with pytest.raises(ValueError, match="models"):
        B.encode(q, models=("gamma",))
    with pytest.raises(ValueError, match="selection"):
        B.encode(q, selection="mse")
    with pytest.raises(ValueError, match="grid_index"):
        B.encode(q.to_model())
    with pytest.raises(ValueError, match="obj"):
        B.encode("model")
    with pytest.raises(ValueError, match="grid_index, grid and spec"):
        B.encode(q, spec=QuantSpec())


# ----------------------------------------------------------------------------------- bad input
def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_bad_input_messages():
    q = random_quantized(1)
    data = B.encode(q)
    with pytest.raises(ValueError, match="not an SMoE bitstream"):
        B.decode(b"\x89PNG\r\n\x1a\n" + data[8:])
    with pytest.raises(ValueError, match="not an SMoE bitstream"):
        B.decode(b"")
    with pytest.raises(ValueError, match="data must be bytes"):
        B.decode("SMoE")
    future = bytearray(data[:-4])
    future[4] = 2
    with pytest.raises(ValueError, match="unsupported SMoE bitstream format version 2"):
        B.decode(_with_crc(bytes(future)))
    future[4] = 7
    with pytest.raises(ValueError, match="CRC32 mismatch.*version byte reads 7"):
        B.decode(bytes(future) + data[-4:])
    with pytest.raises(ValueError, match="truncated"):
        B.decode(data[:10])
    with pytest.raises(ValueError, match="truncated"):
        B.decode(data[:-9])
    with pytest.raises(ValueError, match="trailing"):
        B.decode(_with_crc(data[:-4] + b"\0\0\0\0"))
    flipped = bytearray(data)
    flipped[len(data) // 2 + 10] ^= 0x10
    with pytest.raises(ValueError, match="CRC32 mismatch"):
        B.decode(bytes(flipped))


def test_one_symbol_alphabet_accepts_only_the_constant_model():
    """pi at 1 bit has the alphabet {1}: a crafted parametric model there must be a ValueError (constriction
    itself panics with a BaseException on a one-symbol quantized Gaussian)."""
    q = random_quantized(2, spec=QuantSpec(9, 7, 10, 1))
    data, info = B.encode_with_info(q)
    assert info["streams"][-1]["stream"] == "pi" and info["streams"][-1]["model"] == "constant"
    assert B.decode(data)[0].equal_indices(q)
    body = bytearray(data[:-4])
    # the pi descriptor is the last one: ... | pi model u8 | symbol u16 | payload length u32 | payload | CRC
    at = info["header_bytes"] - 4 - 4 - 3
    assert body[at] == B.MODELS.index("constant")
    crafted = bytes(body[:at]) + struct.pack("<Bff", B.MODELS.index("normal"), 1.0, 1.0) + bytes(body[at + 3:])
    with pytest.raises(ValueError, match="one-symbol alphabet"):
        B.decode(_with_crc(crafted))


def test_oversized_header_rejected_before_allocation():
    q = random_quantized(1)
    data = B.encode(q)
    body = bytearray(data[:-4])
    struct.pack_into("<HHHHI", body, 10, 65535, 65535, 65535, 65535, 1)  # H, W, k1, k2, n_active
    with pytest.raises(ValueError, match="exceeds the limit"):
        B.decode(_with_crc(bytes(body)))
    body = bytearray(data[:-4])
    struct.pack_into("<I", body, 18, 10**9)  # n_active beyond the grid
    with pytest.raises(ValueError, match="active kernels on a grid"):
        B.decode(_with_crc(bytes(body)))


def test_fuzz_decoder_raises_only_value_error():
    """Thousands of mutated / truncated files, fixed seed, bounded time: ValueError or a valid decode."""
    rng = np.random.default_rng(2024)
    files = [B.encode(random_quantized(s, H=32, W=40)) for s in range(3)]
    m, gi, _ = structured_model(32)
    files.append(B.encode(m, gi))
    t0 = time.perf_counter()
    counts = dict(cases=0, value_error=0, decoded=0)

    def check(blob):
        counts["cases"] += 1
        try:
            q, _ = B.decode(blob)
        except ValueError:
            counts["value_error"] += 1
            return
        counts["decoded"] += 1
        assert isinstance(q, QuantizedSMoE)

    for i in range(6000):
        data = files[i % len(files)]
        kind = i % 6
        b = bytearray(data)
        if kind == 0:  # truncation
            b = b[:rng.integers(0, len(b))]
        elif kind == 1:  # flips of random bits
            for _ in range(rng.integers(1, 4)):
                j = rng.integers(len(b))
                b[j] ^= 1 << int(rng.integers(8))
        elif kind == 2:  # random bytes, insertion or deletion
            j = int(rng.integers(len(b)))
            op = rng.integers(3)
            if op == 0:
                b[j] = int(rng.integers(256))
            elif op == 1:
                b[j:j] = rng.bytes(int(rng.integers(1, 8)))
            else:
                del b[j:j + int(rng.integers(1, 8))]
        else:  # header / payload mutations with a valid CRC: reaches the field checks and the decoder
            body = bytearray(data[:-4])
            j = int(rng.integers(0, min(len(body), 140))) if kind in (3, 4) else int(rng.integers(len(body)))
            body[j] = int(rng.integers(256)) if kind != 4 else body[j] ^ (1 << int(rng.integers(8)))
            if kind == 5 and rng.random() < 0.3:
                body = body[:rng.integers(len(body))]
            b = bytearray(_with_crc(bytes(body)))
        check(bytes(b))
    elapsed = time.perf_counter() - t0
    assert counts["cases"] == 6000
    assert counts["value_error"] > 4000
    assert elapsed < 30, f"fuzz took {elapsed:.1f} s"
