"""GPU build of the tiled SMoE renderer (R-SMoE, [R-SMoE] Fig. 3): raw_kernels/smoe_tile_cuda.cu,
compiled at run time by NVRTC through :class:`cupy.RawModule` and launched on PyTorch's current CUDA stream.

The CUDA source includes raw_kernels/smoe_tile.h, the per-pixel math shared with the CPU build; here the
header is inlined into the source text before compilation (with ``#line`` markers, so compiler messages name
the right file and line), so CuPy's on-disk kernel cache, keyed by the source text and options, is
invalidated whenever either file changes. The module is compiled on first use, once per process (CuPy loads
it on each device it is used on and keeps the binary in its on-disk cache).

Launch configuration (float32 only):

- forward ``smoe_tile_forward_c{C}[_lin]_f32``: grid ``(n_tiles,)``, one thread block per tile; block
  ``(round_up(tile * tile, 32),)``, one thread per output pixel (tile <= 32, so at most 1024 threads); the tile's
  kernel list is staged in shared memory in chunks of 256 kernels; per pixel an online log-sum-exp (SMoE) or a
  plain sum (RBF). Outputs ``out`` (B, H, W, C) and ``lse`` (B, H, W).
- backward ``smoe_tile_backward_c{C}[_lin]_f32``: same grid and block; for each entry of the tile's list a
  deterministic block reduction (fixed warp-shuffle tree, then the warp partials in a fixed order) writes that
  entry's row of ``grad_entry`` (nnz, grad_slots) once, without atomics.

``C`` (1..4) and the linear-expert flag are template parameters, instantiated under the extern "C" names
above. Tensors are handed to CuPy through DLPack (zero copy) with CuPy's current stream set to PyTorch's
current stream, so the launches are ordered with the surrounding PyTorch work.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from raw_kernels import KERNEL_DIR

from .abi import MAX_CHANNELS, MODE_RBF, MODE_SMOE, NO_WEIGHT, grad_slots
from .binning import TileLists

SOURCE = "smoe_tile_cuda.cu"
HEADER = "smoe_tile.h"
#: Options given to NVRTC (CuPy adds ``-arch=sm_XX`` for the current device, ``-ftz=true`` and
#: ``--device-as-default-execution-space``).
NVRTC_OPTIONS = ("--std=c++17",)
MAX_TILE = 32
WARP = 32

_lock = threading.Lock()
_module = None
_functions: dict[tuple[int, str], object] = {}


def kernel_name(kind: str, channels: int, linear: bool) -> str:
    """extern "C" name of a kernel: kind is "forward" or "backward"."""
    return f"smoe_tile_{kind}_c{channels}{'_lin' if linear else ''}_f32"


def kernel_names() -> list[str]:
    return [kernel_name(kind, c, lin) for kind in ("forward", "backward") for c in range(1, MAX_CHANNELS + 1)
            for lin in (False, True)]


def kernel_source() -> str:
    """The CUDA source compiled at run time: smoe_tile_cuda.cu with smoe_tile.h inlined."""
    cu = (KERNEL_DIR / SOURCE).read_text()
    header = (KERNEL_DIR / HEADER).read_text()
    include = f'#include "{HEADER}"'
    lines = cu.splitlines()
    try:
        at = next(i for i, ln in enumerate(lines) if ln.strip() == include)
    except StopIteration:
        raise RuntimeError(f"{KERNEL_DIR / SOURCE} does not contain the line {include}") from None
    inlined = [f'#line 1 "{HEADER}"', header.rstrip("\n"), f'#line {at + 2} "{SOURCE}"']
    return "\n".join(lines[:at] + inlined + lines[at + 1:]) + "\n"


def threads_per_block(tile: int) -> int:
    return (tile * tile + WARP - 1) // WARP * WARP


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(
            "the GPU build of the tiled renderer needs CuPy: pip install cupy-cuda13x (or the smoe-core[gpu] "
            "extra), or render with backend='torch' on the GPU / backend='cpu' on the CPU") from exc
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, driver too old for CuPy's CUDA, ...
        raise RuntimeError(f"CuPy cannot use a CUDA device ({exc}); the GPU build of the tiled renderer needs "
                           "one") from exc
    if n == 0:
        raise RuntimeError("CuPy sees no CUDA device; the GPU build of the tiled renderer needs one")
    return cupy


def module():
    """The compiled cupy.RawModule (compiled on first use, for the current CuPy device)."""
    global _module
    cupy = _cupy()
    with _lock:
        if _module is None:
            mod = cupy.RawModule(code=kernel_source(), options=NVRTC_OPTIONS)
            try:
                mod.compile()
            except cupy.cuda.compiler.CompileException as exc:
                raise RuntimeError(f"NVRTC could not compile {KERNEL_DIR / SOURCE}:\n{exc}") from exc
            _module = mod
        return _module


def _function(device_index: int, name: str):
    key = (device_index, name)
    fn = _functions.get(key)
    if fn is None:
        fn = module().get_function(name)
        with _lock:
            _functions[key] = fn
    return fn


def _check(mu, chol, logpi, experts, slopes, lists: TileLists, mode: int):
    tensors = [mu, chol, logpi, experts] + ([] if slopes is None else [slopes])
    if not all(t.is_cuda for t in tensors):
        raise ValueError("the GPU build of the tiled renderer needs all tensors on a CUDA device")
    if any(t.dtype != torch.float32 for t in tensors):
        raise TypeError("the GPU build of the tiled renderer is float32 only; use float32 parameters, or "
                        "backend='torch' for float64 on the GPU")
    if any(t.device != mu.device for t in tensors):
        raise ValueError("all tensors must be on one CUDA device")
    C = experts.shape[1]
    if not 1 <= C <= MAX_CHANNELS:
        raise ValueError(f"the tiled renderer supports 1 to {MAX_CHANNELS} channels, got {C}")
    if not 1 <= lists.tile <= MAX_TILE:
        raise ValueError(f"the GPU build supports tiles of 1 to {MAX_TILE} pixels a side (one thread per pixel, "
                         f"at most {MAX_TILE * MAX_TILE} threads per block), got tile={lists.tile}")
    if mode not in (MODE_SMOE, MODE_RBF):
        raise ValueError(f"unknown rendering mode {mode}")


def _lists_on(lists: TileLists, device):
    ts = lists.tile_start.to(device=device, dtype=torch.int32).contiguous()
    ids = lists.tile_ids.to(device=device, dtype=torch.int32).contiguous()
    return ts, ids


class _Launch:
    """Context: the tensors' CUDA device current in PyTorch and CuPy, and CuPy's current stream = PyTorch's
    current stream on it (so DLPack exchanges need no synchronization and launches queue behind PyTorch's work).
    """

    def __init__(self, cupy, device: torch.device):
        self.cupy = cupy
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        self.torch_stream = torch.cuda.current_stream(self.index)

    def __enter__(self):
        self._torch_dev = torch.cuda.device(self.index)  # torch exports DLPack only from its current device
        self._torch_dev.__enter__()
        self._dev = self.cupy.cuda.Device(self.index)
        self._dev.__enter__()
        if hasattr(self.cupy.cuda.Stream, "from_external"):  # CuPy >= 14: the CUDA stream protocol
            self._stream = self.cupy.cuda.Stream.from_external(self.torch_stream)
        else:
            self._stream = self.cupy.cuda.ExternalStream(self.torch_stream.cuda_stream, self.index)
        self._stream.__enter__()
        return self

    def __exit__(self, *exc):
        self._stream.__exit__(*exc)
        self._dev.__exit__(*exc)
        self._torch_dev.__exit__(*exc)
        return False

    def array(self, t: torch.Tensor):
        """Zero-copy CuPy view of a contiguous tensor (DLPack, exchanged on the current stream)."""
        return self.cupy.from_dlpack(t.detach())


def launch_plan(kind: str, mu, chol, logpi, experts, slopes, lists: TileLists, inv_scale: float, mode: int,
                *buffers):
    """(kernel name, grid, block, arguments) of one launch, in the kernel's parameter order.

    ``kind`` is "forward" (buffers: out, lse) or "backward" (buffers: grad_out, out, lse, grad_entry). Tensors
    stay torch tensors (on whatever device they are: the tests feed this plan to a host emulation of the
    kernels), scalars are numpy int32 / float32 like the kernels' ``int`` / ``float`` parameters. Kernels
    without slopes receive the experts in the slopes slot (never read).
    """
    C = experts.shape[1]
    linear = slopes is not None
    n_buffers = {"forward": 2, "backward": 4}[kind]
    if len(buffers) != n_buffers:
        raise TypeError(f"the {kind} kernel takes {n_buffers} buffers, got {len(buffers)}")
    ts, ids = _lists_on(lists, mu.device)
    inputs = [t.contiguous() for t in (mu, chol, logpi, experts, slopes if linear else experts)] + [ts, ids]
    scalars = [np.int32(lists.batch), np.int32(lists.height), np.int32(lists.width), np.int32(lists.tile),
               np.float32(inv_scale), np.int32(mode)]
    if kind == "forward":
        reads, outputs = [], list(buffers)
    else:
        reads, outputs = [t.contiguous() for t in buffers[:3]], [buffers[3]]
    if not all(t.is_contiguous() for t in outputs):
        raise ValueError("output buffers must be contiguous")
    return (kernel_name(kind, C, linear), (lists.n_tiles,), (threads_per_block(lists.tile),),
            tuple(inputs + scalars + reads + outputs))


def _launch(plan, device):
    name, grid, block, args = plan
    cupy = _cupy()
    with _Launch(cupy, device) as launch:
        fn = _function(launch.index, name)
        fn(grid, block, tuple(launch.array(a) if isinstance(a, torch.Tensor) else a for a in args))


def forward(mu, chol, logpi, experts, slopes, lists: TileLists, inv_scale: float, mode: int):
    """(out (B, H, W, C), lse (B, H, W)) of the tiled render, float32 CUDA tensors."""
    _check(mu, chol, logpi, experts, slopes, lists, mode)
    device = mu.device
    B, H, W, C = lists.batch, lists.height, lists.width, experts.shape[1]
    out = torch.empty(B, H, W, C, dtype=torch.float32, device=device)
    lse = torch.empty(B, H, W, dtype=torch.float32, device=device)
    if lists.tile_ids.numel() == 0:  # no tile has a kernel: no weight anywhere
        out.zero_()
        lse.fill_(NO_WEIGHT if mode == MODE_SMOE else 0.0)
        return out, lse
    _launch(launch_plan("forward", mu, chol, logpi, experts, slopes, lists, inv_scale, mode, out, lse), device)
    return out, lse


def backward(mu, chol, logpi, experts, slopes, lists: TileLists, inv_scale: float, mode: int, grad_out, out, lse):
    """grad_entry (nnz, grad_slots): one gradient row per CSR entry, summed over its tile's pixels."""
    _check(mu, chol, logpi, experts, slopes, lists, mode)
    device = mu.device
    C = experts.shape[1]
    B, H, W = lists.batch, lists.height, lists.width
    nnz = lists.tile_ids.numel()
    g = torch.empty(nnz, grad_slots(C, slopes is not None), dtype=torch.float32, device=device)
    if nnz == 0:
        return g
    for name, t, shape in (("grad_out", grad_out, (B, H, W, C)), ("out", out, (B, H, W, C)), ("lse", lse, (B, H, W))):
        if t.device != device or t.dtype != torch.float32 or tuple(t.shape) != shape:
            raise ValueError(f"{name} must be a float32 tensor of shape {shape} on {device}")
    _launch(launch_plan("backward", mu, chol, logpi, experts, slopes, lists, inv_scale, mode, grad_out, out, lse, g),
            device)
    return g
