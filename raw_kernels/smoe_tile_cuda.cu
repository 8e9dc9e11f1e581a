// smoe_tile_cuda.cu -- GPU build of the tiled SMoE renderer (R-SMoE, rasterized abstract Fig. 3): CUDA,
// compiled at run time by NVRTC through CuPy's RawModule (smoe_core/_cuda.py), float32 only. The per-pixel
// math comes from smoe_tile.h, the same header as the CPU build (smoe_tile_cpu.cpp).
//
// Layout: identical to the CPU build (see smoe_tile_cpu.cpp):
//   mu (N,2) [x, y]; chol (N,3) [a11, a21, a22]; logpi (N,) (already >= NO_WEIGHT); experts (N,C);
//   slopes (N,C,2) (read only by the _lin kernels; any valid pointer otherwise)
//   tile_start (n_tiles+1,), tile_ids (nnz,): CSR lists of global kernel indices per tile,
//   tile t = (b * tiles_y + ty) * tiles_x + tx over B output images of H x W pixels
//   out (B,H,W,C), lse (B,H,W): log of the gate normalizer (0 for RBF, NO_WEIGHT if the pixel has no weight)
//   grad_entry (nnz, grad_slots): one gradient row per CSR entry, summed over the tile's pixels.
//
// Launch: grid = (n_tiles,), one thread block per tile; block = (tile*tile rounded up to a multiple of 32,),
// one thread per pixel (thread p is pixel (p / tile, p % tile) of the tile; the extra threads and the pixels
// outside the image of edge tiles are inactive but take part in barriers and shuffles); tile <= 32.
// The tile's kernel list is staged in shared memory in chunks of SMOE_CHUNK kernels.
//
// Forward: per pixel an online log-sum-exp over the tile's list (running maximum m, sum S and numerators
// rescaled by exp(m_old - m_new) when the maximum grows) in SMoE mode; a plain sum of exp(l) in RBF mode.
// Backward: for each entry of the tile's list, every thread computes its pixel's contribution with the
// header's dlogweight / accumulate_grad, then a deterministic block reduction: a fixed
// __shfl_down_sync tree inside each warp (offsets 16, 8, 4, 2, 1), warp partials in shared memory, summed
// by thread i (slot i) over the warps in increasing order; one plain store of the row. No atomics, so the
// rows are bitwise reproducible run to run.
//
// Kernels (extern "C", no name mangling): smoe_tile_forward_c{C}[_lin]_f32 and
// smoe_tile_backward_c{C}[_lin]_f32 for C = 1..4, _lin = with linear experts (slopes).

#include "smoe_tile.h"

#define SMOE_MAX_TILE 32
#define SMOE_MAX_THREADS (SMOE_MAX_TILE * SMOE_MAX_TILE)
#define SMOE_MAX_WARPS (SMOE_MAX_THREADS / 32)
#define SMOE_CHUNK 256
#define SMOE_FULL_MASK 0xffffffffu

namespace smoe_cuda {

// Position of this thread's pixel: image b, row r, column c; active = a pixel of the image.
struct PixelSlot {
  int b, r, c;
  bool active;
};

__device__ __forceinline__ PixelSlot pixel_slot(int H, int W, int tile) {
  const int tiles_x = (W + tile - 1) / tile, tiles_y = (H + tile - 1) / tile;
  const int t = blockIdx.x;
  PixelSlot s;
  s.b = t / (tiles_x * tiles_y);
  const int rem = t - s.b * (tiles_x * tiles_y);
  const int ty = rem / tiles_x, tx = rem - ty * tiles_x;
  const int p = threadIdx.x;
  const int lr = p / tile, lc = p - lr * tile;
  s.r = ty * tile + lr;
  s.c = tx * tile + lc;
  s.active = p < tile * tile && s.r < H && s.c < W;
  return s;
}

// Shared-memory copy of one chunk of a tile's kernel list (structure of arrays, per-kernel rows contiguous;
// all threads read the same kernel at a time, so every read is a broadcast).
template <int C, bool LIN>
struct KernelChunk {
  float mu[2 * SMOE_CHUNK];
  float chol[3 * SMOE_CHUNK];
  float logpi[SMOE_CHUNK];
  float experts[C * SMOE_CHUNK];
  float slopes[(LIN ? 2 * C : 1) * SMOE_CHUNK];
};

template <int C, bool LIN>
__device__ __forceinline__ void load_chunk(KernelChunk<C, LIN>& sh, const float* __restrict__ mu,
                                           const float* __restrict__ chol, const float* __restrict__ logpi,
                                           const float* __restrict__ experts, const float* __restrict__ slopes,
                                           const int* __restrict__ ids, int cnt) {
  for (int i = threadIdx.x; i < cnt; i += blockDim.x) {
    const int k = ids[i];
    sh.mu[2 * i] = mu[2 * (size_t)k];
    sh.mu[2 * i + 1] = mu[2 * (size_t)k + 1];
    sh.chol[3 * i] = chol[3 * (size_t)k];
    sh.chol[3 * i + 1] = chol[3 * (size_t)k + 1];
    sh.chol[3 * i + 2] = chol[3 * (size_t)k + 2];
    sh.logpi[i] = logpi[k];
#pragma unroll
    for (int c = 0; c < C; ++c) sh.experts[C * i + c] = experts[(size_t)C * k + c];
    if (LIN) {
#pragma unroll
      for (int c = 0; c < 2 * C; ++c) sh.slopes[2 * C * i + c] = slopes[(size_t)2 * C * k + c];
    }
  }
}

template <int C, bool LIN>
__device__ __forceinline__ void forward_tile(const float* __restrict__ mu, const float* __restrict__ chol,
                                             const float* __restrict__ logpi, const float* __restrict__ experts,
                                             const float* __restrict__ slopes, const int* __restrict__ tile_start,
                                             const int* __restrict__ tile_ids, int B, int H, int W, int tile,
                                             float inv_scale, int mode, float* __restrict__ out,
                                             float* __restrict__ lse) {
  __shared__ KernelChunk<C, LIN> sh;
  const PixelSlot pix = pixel_slot(H, W, tile);
  const float px = smoe::sample_coord<float>(pix.c, inv_scale);
  const float py = smoe::sample_coord<float>(pix.r, inv_scale);
  const float no_weight = smoe::NO_WEIGHT, below = smoe::NO_WEIGHT_BELOW;
  const bool smoe_mode = mode == smoe::MODE_SMOE;

  float m = smoe_mode ? no_weight : 0.0f;  // running maximum of the log-weights (fixed at 0 for RBF)
  float S = 0.0f;                          // sum of exp(l - m)
  float acc[C];                            // sum of exp(l - m) m_j(x)
#pragma unroll
  for (int c = 0; c < C; ++c) acc[c] = 0.0f;

  const int s = tile_start[blockIdx.x], n = tile_start[blockIdx.x + 1] - s;
  for (int base = 0; base < n; base += SMOE_CHUNK) {
    const int cnt = min(SMOE_CHUNK, n - base);
    __syncthreads();  // the previous chunk has been consumed
    load_chunk<C, LIN>(sh, mu, chol, logpi, experts, slopes, tile_ids + s + base, cnt);
    __syncthreads();
    if (pix.active) {
      for (int j = 0; j < cnt; ++j) {
        float dx, dy, u, v;
        const float l = smoe::log_weight<float>(px, py, sh.mu + 2 * j, sh.chol + 3 * j, sh.logpi[j], dx, dy, u, v);
        float w;
        if (smoe_mode) {
          if (l > m) {  // new maximum: rescale what has been summed so far
            const float r = expf(m - l);
            S *= r;
#pragma unroll
            for (int c = 0; c < C; ++c) acc[c] *= r;
            m = l;
          }
          w = expf(l - m);
        } else {
          w = expf(l);
        }
        S += w;
        const float* e = sh.experts + C * j;
        const float* sl = LIN ? sh.slopes + 2 * C * j : nullptr;
#pragma unroll
        for (int c = 0; c < C; ++c) acc[c] += w * smoe::expert_value<float, LIN>(e, sl, c, dx, dy);
      }
    }
  }
  if (!pix.active) return;
  const size_t p = ((size_t)pix.b * H + pix.r) * W + pix.c;
  if (smoe_mode) {
    const bool none = m < below || !(S > 0.0f);  // no kernel with weight at this pixel
    lse[p] = none ? no_weight : m + logf(S);
    const float inv = none ? 0.0f : 1.0f / S;
#pragma unroll
    for (int c = 0; c < C; ++c) out[p * C + c] = none ? 0.0f : acc[c] * inv;
  } else {
    lse[p] = 0.0f;
#pragma unroll
    for (int c = 0; c < C; ++c) out[p * C + c] = acc[c];
  }
}

template <int C, bool LIN>
__device__ __forceinline__ void backward_tile(const float* __restrict__ mu, const float* __restrict__ chol,
                                              const float* __restrict__ logpi, const float* __restrict__ experts,
                                              const float* __restrict__ slopes, const int* __restrict__ tile_start,
                                              const int* __restrict__ tile_ids, int B, int H, int W, int tile,
                                              float inv_scale, int mode, const float* __restrict__ grad_out,
                                              const float* __restrict__ out, const float* __restrict__ lse,
                                              float* __restrict__ grad_entry) {
  constexpr int NS = smoe::grad_slots(C, LIN);
  __shared__ KernelChunk<C, LIN> sh;
  __shared__ float partial[2][SMOE_MAX_WARPS * NS];  // double-buffered: one barrier per entry

  const int s = tile_start[blockIdx.x], n = tile_start[blockIdx.x + 1] - s;
  if (n == 0) return;  // uniform over the block
  const PixelSlot pix = pixel_slot(H, W, tile);
  const float px = smoe::sample_coord<float>(pix.c, inv_scale);
  const float py = smoe::sample_coord<float>(pix.r, inv_scale);
  const float no_weight = smoe::NO_WEIGHT, below = smoe::NO_WEIGHT_BELOW;

  float ls = no_weight, yv[C], gv[C];
#pragma unroll
  for (int c = 0; c < C; ++c) yv[c] = gv[c] = 0.0f;
  if (pix.active) {
    const size_t p = ((size_t)pix.b * H + pix.r) * W + pix.c;
    ls = lse[p];
#pragma unroll
    for (int c = 0; c < C; ++c) {
      yv[c] = out[p * C + c];
      gv[c] = grad_out[p * C + c];
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;

  for (int base = 0; base < n; base += SMOE_CHUNK) {
    const int cnt = min(SMOE_CHUNK, n - base);
    __syncthreads();  // all threads are done with the previous chunk (implied by the last entry's barrier too)
    load_chunk<C, LIN>(sh, mu, chol, logpi, experts, slopes, tile_ids + s + base, cnt);
    __syncthreads();
    for (int j = 0; j < cnt; ++j) {
      float acc[NS];
#pragma unroll
      for (int i = 0; i < NS; ++i) acc[i] = 0.0f;
      if (pix.active) {
        const float* a = sh.chol + 3 * j;
        const float* sl = LIN ? sh.slopes + 2 * C * j : nullptr;
        float dx, dy, u, v;
        const float l = smoe::log_weight<float>(px, py, sh.mu + 2 * j, a, sh.logpi[j], dx, dy, u, v);
        const float gate = (ls < below) ? 0.0f : expf(l - ls);
        float mv[C];
#pragma unroll
        for (int c = 0; c < C; ++c) mv[c] = smoe::expert_value<float, LIN>(sh.experts + C * j, sl, c, dx, dy);
        const float dl = smoe::dlogweight<float, C>(mode, gate, gv, yv, mv);
        smoe::accumulate_grad<float, C, LIN>(acc, dl, gate, gv, a, sl, dx, dy, u, v);
      }
      // deterministic reduction: a fixed shuffle tree per warp ...
#pragma unroll
      for (int i = 0; i < NS; ++i) {
        float x = acc[i];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) x += __shfl_down_sync(SMOE_FULL_MASK, x, off);
        acc[i] = x;
      }
      float* part = partial[(base + j) & 1];
      if (lane == 0) {
#pragma unroll
        for (int i = 0; i < NS; ++i) part[warp * NS + i] = acc[i];
      }
      __syncthreads();
      // ... then the warp partials in increasing warp order, one thread per slot, one store per row
      if (threadIdx.x < NS) {
        float sum = 0.0f;
        for (int w = 0; w < n_warps; ++w) sum += part[w * NS + threadIdx.x];
        grad_entry[(size_t)(s + base + j) * NS + threadIdx.x] = sum;
      }
    }
  }
}

}  // namespace smoe_cuda

#define SMOE_CUDA_KERNELS(CC, LL, SUFFIX)                                                                       \
  extern "C" __global__ void __launch_bounds__(SMOE_MAX_THREADS) smoe_tile_forward_##SUFFIX##_f32(              \
      const float* mu, const float* chol, const float* logpi, const float* experts, const float* slopes,       \
      const int* tile_start, const int* tile_ids, int B, int H, int W, int tile, float inv_scale, int mode,    \
      float* out, float* lse) {                                                                                \
    smoe_cuda::forward_tile<CC, LL>(mu, chol, logpi, experts, slopes, tile_start, tile_ids, B, H, W, tile,     \
                                    inv_scale, mode, out, lse);                                                \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(SMOE_MAX_THREADS) smoe_tile_backward_##SUFFIX##_f32(             \
      const float* mu, const float* chol, const float* logpi, const float* experts, const float* slopes,       \
      const int* tile_start, const int* tile_ids, int B, int H, int W, int tile, float inv_scale, int mode,    \
      const float* grad_out, const float* out, const float* lse, float* grad_entry) {                          \
    smoe_cuda::backward_tile<CC, LL>(mu, chol, logpi, experts, slopes, tile_start, tile_ids, B, H, W, tile,    \
                                     inv_scale, mode, grad_out, out, lse, grad_entry);                         \
  }

SMOE_CUDA_KERNELS(1, false, c1)
SMOE_CUDA_KERNELS(1, true, c1_lin)
SMOE_CUDA_KERNELS(2, false, c2)
SMOE_CUDA_KERNELS(2, true, c2_lin)
SMOE_CUDA_KERNELS(3, false, c3)
SMOE_CUDA_KERNELS(3, true, c3_lin)
SMOE_CUDA_KERNELS(4, false, c4)
SMOE_CUDA_KERNELS(4, true, c4_lin)
