"""The GPU build of the tiled renderer (raw_kernels/smoe_tile_cuda.cu, smoe_core/cuda_build.py).

Three levels, so that most of it runs on machines without a GPU:

1. Compilation: nvcc to PTX (and to a cubin, checking the resources a 32 x 32 tile needs), and NVRTC through
   CuPy with the source text and options that ``cuda_build.py`` uses at run time. NVRTC needs no device, but CuPy's
   own compile entry points query the device for the architecture, so the NVRTC test drives
   ``cupy.cuda.nvrtc`` directly with the options CuPy would assemble.
2. Emulation: the same .cu compiled for the host with g++, the CUDA thread model emulated (one block at a
   time, each CUDA thread a fiber, ``__syncthreads`` and warp shuffles as cooperative barriers), compared
   with the CPU build on the same tile lists: forward ``out``/``lse`` and the per-entry gradient rows.
3. GPU (``@pytest.mark.gpu``, skipped without a CUDA device): ``render(..., backend="cuda")`` against
   ``backend="cpu"``, forward and all gradients, and bitwise run-to-run reproducibility of the backward rows.
"""
from __future__ import annotations

import ctypes
import platform
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from raw_kernels import KERNEL_DIR
from smoe_core import SMoE, render
from smoe_core.render import cpu as cpu_build, cuda as cuda_build
from smoe_core.render.build import find_compiler
from smoe_core.render.binning import bin_kernels
from smoe_core.render.abi import MODE_RBF, MODE_SMOE, NO_WEIGHT, grad_slots
from smoe_core.render.cpu import backward as cpu_backward, forward as cpu_forward
from smoe_core.render import log_pi

CUDA_SOURCE = KERNEL_DIR / "smoe_tile_cuda.cu"

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")


# ---------------------------------------------------------------------------------------------- helpers
def _nvcc() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    return nvcc


def _nvcc_archs(nvcc: str) -> list[str]:
    """Virtual architectures this nvcc supports, oldest first (CUDA 13 starts at compute_75)."""
    proc = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True)
    archs = [a for a in proc.stdout.split() if a.startswith("compute_")]
    return sorted(archs, key=lambda a: int(re.sub(r"\D", "", a))) or ["compute_75"]


def _run_nvcc(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"nvcc failed ({' '.join(cmd)}):\n{proc.stderr[-6000:]}")
    return proc


def _ptx_param_types(ptx: str) -> dict[str, list[str]]:
    """Kernel name -> PTX parameter types ('.u64' pointers, '.u32' ints, '.f32' floats)."""
    entries = re.findall(r"\.entry\s+(\w+)\s*\((.*?)\)", ptx, re.S)
    return {name: re.findall(r"\.param\s+(\.\w+)", params) for name, params in entries}


def _plan_param_types(args) -> list[str]:
    kinds = {np.int32: ".u32", np.float32: ".f32"}
    return [".u64" if isinstance(a, torch.Tensor) else kinds[type(a)] for a in args]


def _check_ptx_against_launch_plans(ptx: str):
    """Every kernel is in the PTX, with the parameters cuda_build.launch_plan passes (count, order, kinds)."""
    params = _ptx_param_types(ptx)
    for C in range(1, 5):
        for linear in (False, True):
            mu, chol, logpi, experts, slopes, lists, inv_scale, mode, _ = _lists_and_inputs(C, linear, False, K=3)
            out = torch.empty(1, lists.height, lists.width, C)
            lse = torch.empty(1, lists.height, lists.width)
            g = torch.empty(lists.tile_ids.numel(), grad_slots(C, linear))
            for kind, bufs in (("forward", (out, lse)), ("backward", (out, out, lse, g))):
                name, _, _, args = cuda_build.launch_plan(kind, mu, chol, logpi, experts, slopes, lists, inv_scale, mode,
                                                     *bufs)
                assert name in params, f"kernel {name} missing from the PTX"
                assert params[name] == _plan_param_types(args), f"{name}: PTX parameters vs launch_plan arguments"
    assert sorted(params) == sorted(cuda_build.kernel_names())


def _lists_and_inputs(C, linear, rbf, *, K=25, H=21, W=27, tile=8, B=1, scale=1.0, fill=4, seed=0,
                      spread=None, sharpness=1.0, device="cpu"):
    """Random kernels (some with pi = 0), their tile lists, as the renderer passes them to the builds."""
    g = torch.Generator().manual_seed(seed)
    Hs, Ws = H / scale, W / scale  # native image size
    n = K * B
    mu = torch.rand(n, 2, generator=g) * torch.tensor([Ws, Hs]) if spread is None else \
        torch.tensor([Ws / 2, Hs / 2]) + spread * (torch.rand(n, 2, generator=g) - 0.5)
    chol = torch.stack([0.15 + 0.35 * torch.rand(n, generator=g), 0.3 * torch.rand(n, generator=g) - 0.15,
                        0.15 + 0.35 * torch.rand(n, generator=g)], 1) * sharpness
    pi = 0.2 + torch.rand(n, generator=g)
    pi[::7] = 0.0
    experts = torch.rand(n, C, generator=g)
    slopes = 0.05 * torch.randn(n, C, 2, generator=g) if linear else None
    logpi = log_pi(pi).clamp_min(NO_WEIGHT)
    lists = bin_kernels(mu, chol, logpi, [K * b for b in range(B + 1)], H, W, tile=tile, scale=scale, fill=fill)
    mode = MODE_RBF if rbf else MODE_SMOE
    out = [t if t is None else t.to(device) for t in (mu, chol, logpi, experts, slopes)]
    return (*out, lists, 1.0 / scale, mode, g)


# ---------------------------------------------------------------------------------------------- 1. compilation
def test_kernel_source_inlines_the_shared_header():
    src = cuda_build.kernel_source()
    assert '#include "smoe_tile.h"' not in src
    assert (KERNEL_DIR / "smoe_tile.h").read_text().strip() in src
    assert '#line 1 "smoe_tile.h"' in src


def test_nvcc_compiles_to_ptx(tmp_path):
    nvcc = _nvcc()
    arch = _nvcc_archs(nvcc)[0]
    ptx = tmp_path / "smoe_tile_cuda.ptx"
    _run_nvcc([nvcc, "-ptx", f"-arch={arch}", "-std=c++17", "-I", str(KERNEL_DIR), str(CUDA_SOURCE), "-o", str(ptx)])
    _check_ptx_against_launch_plans(ptx.read_text())


def test_nvcc_cubin_fits_a_1024_thread_block(tmp_path):
    """Every kernel can be launched with 32 x 32 threads: registers <= 64 (launch bounds) and static shared
    memory under the 48 KiB limit."""
    nvcc = _nvcc()
    if "compute_80" not in _nvcc_archs(nvcc):
        pytest.skip("this nvcc cannot target sm_80")
    proc = _run_nvcc([nvcc, "-cubin", "-arch=sm_80", "-std=c++17", "--resource-usage", "-I", str(KERNEL_DIR),
                      str(CUDA_SOURCE), "-o", str(tmp_path / "k.cubin")])
    usage = re.findall(r"Compiling entry function '(\w+)'.*?Used (\d+) registers.*?(\d+) bytes smem",
                       proc.stdout + proc.stderr, re.S)
    assert sorted(u[0] for u in usage) == sorted(cuda_build.kernel_names())
    for name, regs, smem in usage:
        assert int(regs) * 1024 <= 65536, f"{name}: {regs} registers per thread"
        assert int(smem) <= 48 * 1024, f"{name}: {smem} bytes of shared memory"


def _nvrtc_options(arch: str) -> tuple[str, ...]:
    """The options CuPy's RawModule hands NVRTC for our NVRTC_OPTIONS (cupy._core.core.compile_with_cache,
    then cupy.cuda.compiler: -ftz=true, the architecture, --device-as-default-execution-space)."""
    from cupy._core import core

    assemble = getattr(core, "assemble_cupy_compiler_options", None)
    opts = tuple(assemble(cuda_build.NVRTC_OPTIONS)) if assemble is not None else cuda_build.NVRTC_OPTIONS
    return opts + ("-ftz=true", f"-arch={arch}", "--device-as-default-execution-space")


@pytest.mark.parametrize("arch", ["compute_75", "sm_80"])
def test_nvrtc_compiles_the_runtime_source(arch):
    pytest.importorskip("cupy", reason="CuPy is not installed")
    from cupy.cuda import nvrtc

    try:
        nvrtc.getVersion()
    except Exception as exc:  # the NVRTC library could not be loaded
        pytest.skip(f"NVRTC is not usable: {exc}")
    prog = nvrtc.createProgram(cuda_build.kernel_source(), cuda_build.SOURCE, (), ())
    try:
        try:
            nvrtc.compileProgram(prog, _nvrtc_options(arch))
        except nvrtc.NVRTCError:
            pytest.fail(f"NVRTC failed for {arch}:\n{nvrtc.getProgramLog(prog)}")
        log = nvrtc.getProgramLog(prog).strip("\x00 \n")
        assert "warning" not in log.lower(), log
        if arch.startswith("compute_"):
            text = nvrtc.getPTX(prog)
            _check_ptx_against_launch_plans(text.decode() if isinstance(text, bytes) else text)
        else:
            assert len(nvrtc.getCUBIN(prog)) > 0
    finally:
        nvrtc.destroyProgram(prog)


def test_entry_points_reject_cpu_tensors():
    mu, chol, logpi, experts, slopes, lists, inv_scale, mode, _ = _lists_and_inputs(1, False, False)
    with pytest.raises(ValueError, match="CUDA device"):
        cuda_build.forward(mu, chol, logpi, experts, slopes, lists, inv_scale, mode)


# ---------------------------------------------------------------------------------------------- 2. emulation
EMULATOR = r"""
// Host emulation of the CUDA execution model, enough to run smoe_tile_cuda.cu on the CPU: blocks one after
// the other, each CUDA thread a fiber (started with makecontext, switched with _setjmp/_longjmp),
// __syncthreads and __shfl_down_sync as cooperative barriers over the block / the warp. A fiber runs until it
// waits at a barrier; the schedule picks the next runnable fiber: 0 = sweeps in thread order, 1 = always the
// highest-numbered runnable thread, 2 = always the lowest (the last two let some threads run far ahead of
// others, which exposes missing barriers and shared-memory reuse races).
#include <setjmp.h>
#include <ucontext.h>

#include <cmath>
#include <functional>
#include <vector>

struct EmuIdx { unsigned x = 0, y = 0, z = 0; };
static EmuIdx threadIdx, blockIdx, blockDim;

namespace emu {
struct Barrier {
  int n = 0, count = 0;
  unsigned gen = 0;
};
struct Fiber {
  ucontext_t ctx;
  jmp_buf jb;
  std::vector<char> stack;
  bool started = false, done = false;
  const Barrier* waiting = nullptr;  // the barrier this fiber waits at, and its generation then
  unsigned wait_gen = 0;
};
static jmp_buf scheduler;
static std::vector<Fiber> fibers;
static int current = 0;
static const std::function<void()>* body = nullptr;
static Barrier block_bar;
static std::vector<Barrier> warp_bar;
static std::vector<float> shfl;

static void yield() {
  if (!_setjmp(fibers[current].jb)) _longjmp(scheduler, 1);
}
static void wait(Barrier& b) {
  const unsigned gen = b.gen;
  if (++b.count == b.n) {
    b.count = 0;
    ++b.gen;
    return;
  }
  fibers[current].waiting = &b;
  fibers[current].wait_gen = gen;
  yield();  // resumed only once the barrier has opened
  fibers[current].waiting = nullptr;
}
static bool runnable(int t) {
  const Fiber& f = fibers[t];
  return !f.done && (f.waiting == nullptr || f.waiting->gen != f.wait_gen);
}
static void trampoline() {
  (*body)();
  fibers[current].done = true;
  _longjmp(scheduler, 1);
}
static void resume(int t) {
  current = t;
  threadIdx.x = t;
  Fiber& f = fibers[t];
  if (_setjmp(scheduler)) return;  // the fiber yielded or finished
  if (!f.started) {
    f.started = true;
    setcontext(&f.ctx);
  }
  _longjmp(f.jb, 1);
}
}  // namespace emu

inline void __syncthreads() { emu::wait(emu::block_bar); }
inline float __shfl_down_sync(unsigned, float x, int off) {
  const int t = threadIdx.x, lane = t & 31, w = t >> 5;
  emu::shfl[t] = x;
  emu::wait(emu::warp_bar[w]);
  const float r = lane + off < 32 ? emu::shfl[t + off] : x;
  emu::wait(emu::warp_bar[w]);
  return r;
}
inline int min(int a, int b) { return a < b ? a : b; }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(n)

#include "smoe_tile_cuda.cu"

// 0 on success, 1 if a block deadlocked (threads waiting at a barrier that the others never reach)
static int emu_launch(int schedule, int grid, int block, const std::function<void()>& body) {
  emu::body = &body;
  emu::shfl.assign(block, 0.0f);
  for (int b = 0; b < grid; ++b) {
    emu::block_bar = emu::Barrier{block, 0, 0};
    emu::warp_bar.assign(block / 32, emu::Barrier{32, 0, 0});
    emu::fibers.assign(block, emu::Fiber{});
    for (int t = 0; t < block; ++t) {
      emu::Fiber& f = emu::fibers[t];
      f.stack.resize(1 << 16);
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, emu::trampoline, 0);
    }
    blockIdx.x = b;
    blockDim.x = block;
    for (int left = block; left > 0;) {
      bool ran = false;
      if (schedule == 0) {
        for (int t = 0; t < block; ++t)
          if (emu::runnable(t)) {
            emu::resume(t);
            ran = true;
            if (emu::fibers[t].done) --left;
          }
      } else {
        int t = schedule == 1 ? block - 1 : 0;
        while (t >= 0 && t < block && !emu::runnable(t)) t += schedule == 1 ? -1 : 1;
        if (t >= 0 && t < block) {
          emu::resume(t);
          ran = true;
          if (emu::fibers[t].done) --left;
        }
      }
      if (!ran) return 1;
    }
  }
  return 0;
}

#define EMU_COMMON const float *mu, const float *chol, const float *logpi, const float *experts, \
  const float *slopes, const int *tile_start, const int *tile_ids, int B, int H, int W, int tile, \
  float inv_scale, int mode
#define EMU_COMMON_ARGS mu, chol, logpi, experts, slopes, tile_start, tile_ids, B, H, W, tile, inv_scale, mode
#define EMU_KERNELS(SUFFIX)                                                                                    \
  extern "C" int emu_smoe_tile_forward_##SUFFIX##_f32(int schedule, int grid, int block, EMU_COMMON,          \
                                                      float *out, float *lse) {                               \
    return emu_launch(schedule, grid, block,                                                                  \
                      [=] { smoe_tile_forward_##SUFFIX##_f32(EMU_COMMON_ARGS, out, lse); });                  \
  }                                                                                                           \
  extern "C" int emu_smoe_tile_backward_##SUFFIX##_f32(int schedule, int grid, int block, EMU_COMMON,         \
                                                       const float *grad_out, const float *out,               \
                                                       const float *lse, float *grad_entry) {                 \
    return emu_launch(schedule, grid, block, [=] {                                                            \
      smoe_tile_backward_##SUFFIX##_f32(EMU_COMMON_ARGS, grad_out, out, lse, grad_entry);                     \
    });                                                                                                       \
  }

EMU_KERNELS(c1)
EMU_KERNELS(c1_lin)
EMU_KERNELS(c2)
EMU_KERNELS(c2_lin)
EMU_KERNELS(c3)
EMU_KERNELS(c3_lin)
EMU_KERNELS(c4)
EMU_KERNELS(c4_lin)
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if platform.system() != "Linux":
        pytest.skip("the CUDA emulation uses ucontext fibers (Linux)")
    cxx = find_compiler()
    if cxx is None:
        pytest.skip("no C++ compiler for the CUDA emulation")
    if not cpu_build.available():
        pytest.skip("the CPU build (the reference of the emulation) is not available")
    d = tmp_path_factory.mktemp("cuda_emu")
    (d / "emu.cpp").write_text(EMULATOR)
    cmd = [cxx, "-std=c++17", "-O1", "-fPIC", "-shared", "-Wall", "-Wno-unknown-pragmas", f"-I{KERNEL_DIR}",
           str(d / "emu.cpp"), "-o", str(d / "emu.so")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:  # the kernel source must compile for the host too (it is plain C++ plus CUDA)
        pytest.fail(f"the host emulation of smoe_tile_cuda.cu did not compile:\n{proc.stderr[-6000:]}")
    lib = ctypes.CDLL(str(d / "emu.so"))
    p, i32 = ctypes.c_void_p, ctypes.c_int
    common = [i32, i32, i32, p, p, p, p, p, p, p, i32, i32, i32, i32, ctypes.c_float, i32]
    for name in cuda_build.kernel_names():
        getattr(lib, f"emu_{name}").argtypes = common + ([p, p] if "forward" in name else [p, p, p, p])
    return lib


def _emulate(lib, mu, chol, logpi, experts, slopes, lists, inv_scale, mode, grad_out=None, out=None, lse=None,
             schedule=0):
    """Runs the emulated kernels with the launch plan (name, grid, block, arguments) of smoe_core.render.cuda."""
    C, linear = experts.shape[1], slopes is not None
    if grad_out is None:
        bufs = (torch.full((lists.batch, lists.height, lists.width, C), float("nan")),
                torch.full((lists.batch, lists.height, lists.width), float("nan")))
        kind = "forward"
    else:
        bufs = (grad_out, out, lse, torch.full((lists.tile_ids.numel(), grad_slots(C, linear)), float("nan")))
        kind = "backward"
    name, grid, block, args = cuda_build.launch_plan(kind, mu, chol, logpi, experts, slopes, lists, inv_scale, mode, *bufs)
    c_args = [a.data_ptr() if isinstance(a, torch.Tensor) else a.item() for a in args]
    assert getattr(lib, f"emu_{name}")(schedule, grid[0], block[0], *c_args) == 0, "deadlock"
    return bufs if kind == "forward" else bufs[-1]


def _assert_rows_close(actual, expected, rtol=2e-5):
    """Per gradient slot, relative to the slot's largest magnitude (rows are sums over a tile's pixels)."""
    scale = expected.abs().amax(0).clamp_min(1e-6)
    err = ((actual - expected).abs() / scale).max().item()
    assert err <= rtol, f"largest relative error {err:.3g}"


def _check_emulation(lib, C, linear, rbf, schedule=0, **kw):
    mu, chol, logpi, experts, slopes, lists, inv_scale, mode, g = _lists_and_inputs(C, linear, rbf, **kw)
    out, lse = cpu_forward(mu, chol, logpi, experts, slopes, lists, inv_scale, mode, 1)
    e_out, e_lse = _emulate(lib, mu, chol, logpi, experts, slopes, lists, inv_scale, mode, schedule=schedule)
    torch.testing.assert_close(e_out, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e_lse, lse, rtol=1e-6, atol=1e-5)  # including the NO_WEIGHT sentinel
    grad_out = torch.randn(out.shape, generator=g)
    rows = cpu_backward(mu, chol, logpi, experts, slopes, lists, inv_scale, mode, grad_out, out, lse, 1)
    e_rows = _emulate(lib, mu, chol, logpi, experts, slopes, lists, inv_scale, mode, grad_out, out, lse, schedule)
    assert torch.isfinite(e_rows).all(), "rows left unwritten"
    _assert_rows_close(e_rows, rows)
    return lists


@pytest.mark.parametrize("rbf", [False, True], ids=["smoe", "rbf"])
@pytest.mark.parametrize("linear", [False, True], ids=["const", "linear"])
@pytest.mark.parametrize("C", [1, 2, 3, 4])
def test_emulated_kernels_match_the_cpu_build(emulator, C, linear, rbf):
    _check_emulation(emulator, C, linear, rbf, tile=8, B=2, seed=C)


@pytest.mark.parametrize("tile,K,H,W", [(1, 6, 9, 11), (5, 30, 37, 45), (16, 30, 37, 45), (32, 12, 37, 45)])
def test_emulated_tile_sizes(emulator, tile, K, H, W):
    """Partial warps (tile 1, 5), several warps per block (16) and the largest block (32 x 32 = 1024 threads)."""
    _check_emulation(emulator, 3, True, False, tile=tile, K=K, H=H, W=W, seed=tile)


def test_emulated_long_lists_span_several_chunks(emulator):
    """More kernels in a tile than one shared-memory chunk (256)."""
    lists = _check_emulation(emulator, 2, True, False, K=300, H=6, W=7, tile=4, spread=4.0, seed=3)
    assert int(lists.counts.max()) > 256


@pytest.mark.parametrize("schedule", [1, 2], ids=["high-first", "low-first"])
@pytest.mark.parametrize("case", ["two-warps", "chunks"])
def test_emulated_kernels_under_skewed_schedules(emulator, schedule, case):
    """Some threads far ahead of others: shared memory must not be overwritten while still being read."""
    if case == "two-warps":
        _check_emulation(emulator, 2, True, False, schedule, tile=8, K=12, H=16, W=16, seed=8)
    else:
        _check_emulation(emulator, 1, False, True, schedule, K=280, H=6, W=7, tile=6, spread=4.0, seed=9)


def test_emulated_scale_and_empty_tiles(emulator):
    """Upsampled output (inv_scale != 1) and tiles without kernels (fill=0): out 0, lse NO_WEIGHT."""
    lists = _check_emulation(emulator, 1, False, False, K=3, H=30, W=42, tile=8, scale=1.5, fill=0,
                             spread=2.0, sharpness=4.0, seed=5)
    assert 0 < int((lists.counts == 0).sum()) < lists.n_tiles


# ---------------------------------------------------------------------------------------------- 3. GPU
def _random_model(C, linear, rbf, H=37, W=45, K=80, seed=0) -> SMoE:
    rng = np.random.default_rng(seed)
    mu = (rng.random((K, 2)) * [W, H]).astype(np.float32)
    chol = np.stack([0.12 + 0.3 * rng.random(K), 0.2 * rng.random(K) - 0.1, 0.12 + 0.3 * rng.random(K)],
                    1).astype(np.float32)
    pi = (0.2 + rng.random(K)).astype(np.float32)
    pi[::9] = 0.0
    experts = rng.random((K, C)).astype(np.float32)
    slopes = (0.05 * rng.standard_normal((K, C, 2))).astype(np.float32) if linear else None
    return SMoE(mu, chol, pi, experts, slopes, rbf=rbf, image_shape=(H, W))


def _render_and_grads(model: SMoE, device: str, backend: str, weights: torch.Tensor, **kw):
    m = model.torch(requires_grad=True, device=device)
    y = render(m, backend=backend, **kw)
    (y * weights.to(device)).sum().backward()
    grads = {k: v.grad.detach().cpu() for k, v in m.fields().items() if v is not None}
    return y.detach().cpu(), grads


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("rbf", [False, True], ids=["smoe", "rbf"])
@pytest.mark.parametrize("linear", [False, True], ids=["const", "linear"])
@pytest.mark.parametrize("C", [1, 3])
def test_cuda_render_matches_cpu(C, linear, rbf):
    model = _random_model(C, linear, rbf, seed=C + 2 * linear + 4 * rbf)
    shape = (37, 45) if C == 1 else (37, 45, C)
    weights = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    y_cpu, g_cpu = _render_and_grads(model, "cpu", "cpu", weights, tile=16)
    y_gpu, g_gpu = _render_and_grads(model, "cuda", "cuda", weights, tile=16)
    torch.testing.assert_close(y_gpu, y_cpu, rtol=1e-4, atol=1e-4)
    assert g_gpu.keys() == g_cpu.keys()
    for name in g_cpu:
        atol = 1e-4 * max(1.0, g_cpu[name].abs().max().item())
        torch.testing.assert_close(g_gpu[name], g_cpu[name], rtol=1e-4, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("tile", [5, 8, 32])
def test_cuda_render_tiles_and_scale(tile):
    model = _random_model(3, True, False, seed=11)
    H, W = round(37 * 1.5), round(45 * 1.5)
    weights = torch.randn(H, W, 3, generator=torch.Generator().manual_seed(2))
    y_cpu, g_cpu = _render_and_grads(model, "cpu", "cpu", weights, tile=tile, scale=1.5)
    y_gpu, g_gpu = _render_and_grads(model, "cuda", "cuda", weights, tile=tile, scale=1.5)
    torch.testing.assert_close(y_gpu, y_cpu, rtol=1e-4, atol=1e-4)
    for name in g_cpu:
        atol = 1e-4 * max(1.0, g_cpu[name].abs().max().item())
        torch.testing.assert_close(g_gpu[name], g_cpu[name], rtol=1e-4, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("rbf", [False, True], ids=["smoe", "rbf"])
def test_cuda_entry_points_match_cpu_build_and_are_deterministic(rbf):
    """out, lse (with its NO_WEIGHT sentinel, fill=0 leaves empty tiles) and every per-entry gradient row
    against the CPU build; two backward passes give bitwise identical rows (no atomics)."""
    mu, chol, logpi, experts, slopes, lists, inv_scale, mode, g = _lists_and_inputs(
        3, True, rbf, K=60, H=40, W=52, tile=16, B=2, fill=0, seed=7, device="cuda")
    out, lse = cuda_build.forward(mu, chol, logpi, experts, slopes, lists, inv_scale, mode)
    cpu = [t.cpu() for t in (mu, chol, logpi, experts, slopes)]
    cpu_lists = lists  # bin_kernels ran on the CPU
    out_c, lse_c = cpu_forward(*cpu, cpu_lists, inv_scale, mode, 1)
    torch.testing.assert_close(out.cpu(), out_c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.cpu(), lse_c, rtol=1e-5, atol=1e-4)
    grad_out = torch.randn(out_c.shape, generator=g)
    rows_c = cpu_backward(*cpu, cpu_lists, inv_scale, mode, grad_out, out_c, lse_c, 1)
    args = (mu, chol, logpi, experts, slopes, lists, inv_scale, mode, grad_out.cuda(), out, lse)
    rows1, rows2 = cuda_build.backward(*args), cuda_build.backward(*args)
    torch.cuda.synchronize()
    assert torch.equal(rows1, rows2)
    _assert_rows_close(rows1.cpu(), rows_c, rtol=1e-4)


@pytest.mark.gpu
@requires_gpu
def test_cuda_build_is_float32_only():
    model = _random_model(1, False, False).torch(device="cuda", dtype=torch.float64)
    with pytest.raises(TypeError, match="float32"):
        render(model, backend="cuda")
