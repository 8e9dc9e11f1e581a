// smoe_tile_cpu.cpp -- CPU build of the tiled SMoE renderer (R-SMoE, rasterized abstract Fig. 3):
// C++ with OpenMP over tiles, the per-pixel math from smoe_tile.h. Compiled on first use by
// smoe_core/render/cpu.py and loaded with ctypes; exported for float (training) and double (gradcheck).
//
// Two builds (smoe_core/render/build.py): the fast one (-march=native -ffast-math) and the reproducible one
// (SMOE_REPRODUCIBLE defined; the architecture's baseline, no fast-math, -ffp-contract=off), whose float results
// are the same on every machine: every operation is rounded as written, in source order (the backward's
// per-kernel sums over a tile's pixels run in pixel order, where fast-math lets the compiler reassociate them
// for its vector width), and its exp is exp_portable below (IEEE operations only, no libm call).
//
// Layout (shared with the CUDA build and smoe_core/_tiled_torch.py, the pure-PyTorch reference):
//   mu (N,2) [x, y]; chol (N,3) [a11, a21, a22]; logpi (N,); experts (N,C); slopes (N,C,2) or null
//   tile_start (n_tiles+1,), tile_ids (nnz,): CSR lists of global kernel indices per tile,
//   tile t = (b * tiles_y + ty) * tiles_x + tx over B output images of H x W pixels
//   out (B,H,W,C), lse (B,H,W): per-pixel log of the gate normalizer (0 for RBF, NO_WEIGHT if the pixel has no weight)
//   grad_entry (nnz, grad_slots): one gradient row per CSR entry, summed over the tile's pixels;
//   the caller adds the rows of each kernel (deterministic: no atomics, fixed order within a tile).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>
#include <algorithm>
#include <type_traits>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "smoe_tile.h"

namespace {

struct TileGeom {
  int b, r0, r1, c0, c1, npix;
};

inline TileGeom tile_geometry(int t, int H, int W, int tile) {
  const int tiles_x = (W + tile - 1) / tile, tiles_y = (H + tile - 1) / tile;
  TileGeom g;
  g.b = t / (tiles_x * tiles_y);
  const int rem = t % (tiles_x * tiles_y);
  const int ty = rem / tiles_x, tx = rem % tiles_x;
  g.r0 = ty * tile;
  g.r1 = std::min(H, g.r0 + tile);
  g.c0 = tx * tile;
  g.c1 = std::min(W, g.c0 + tile);
  g.npix = (g.r1 - g.r0) * (g.c1 - g.c0);
  return g;
}

// exp(x) of a gate's log-domain argument, exactly 0 where the result is below TINY (2e-38 in float, 4e-308 in
// double, just above the smallest normal numbers; the dropped mass is below TINY per pair). Not a semantic cut
// but a speed one: glibc's vector exp (libmvec, what -ffast-math vectorizes std::exp into) computes every lane
// whose result underflows (x < -87.3 in float) with a call of the scalar exp (errno included), and such lanes
// are common (a kernel is evaluated over every pixel of each tile its box touches; kernels with pi <= 0 have
// log-weights near NO_WEIGHT). The argument is clamped at CUT (exp(CUT) < TINY) so every lane stays on the
// fast path; the test is on the result, since a test on x lets the compiler drop the clamp.
template <typename T>
struct ExpLimits;
template <>
struct ExpLimits<float> {
  static constexpr float cut = -87.0f, tiny = 2e-38f;
};
template <>
struct ExpLimits<double> {
  static constexpr double cut = -708.0, tiny = 4e-308;
};

#ifdef SMOE_REPRODUCIBLE
// exp(x) in float from IEEE operations alone (no libm call, whose variants differ between CPUs with and without
// FMA; no FMA contraction, -ffp-contract=off), so the same bits on every machine, and vectorizable: Cody-Waite
// reduction x = n ln2 + r (n = round(x / ln2) by the 1.5 * 2^23 trick, ln2 split in two so n * C1 is exact), the
// Cephes minimax polynomial for exp(r) (relative error about 1e-7), then 2^n written into the exponent bits
// (read off the rounded sum's low bits: no float-to-int conversion). For x in [-87.5, 88.3]: the callers clamp
// below at -87; above 88.3 it saturates at exp(88.3) = 2.2e38 (an RBF gate with pi > 1e38).
inline float exp_portable(float x) {
  x = x > 88.3f ? 88.3f : x;
  const float t = x * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  int32_t tb;
  std::memcpy(&tb, &t, sizeof tb);
  const int32_t bits = (tb - 0x4B400000 + 127) << 23;  // t = 1.5 * 2^23 + n: its low bits hold n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}
inline float exp_any(float x) { return exp_portable(x); }
inline double exp_any(double x) { return std::exp(x); }  // double (gradcheck only): libm
#else
template <typename T>
inline T exp_any(T x) { return std::exp(x); }
#endif

template <typename T>
inline T exp_gate(T x) {
  const T e = exp_any(x < ExpLimits<T>::cut ? ExpLimits<T>::cut : x);
  return e < ExpLimits<T>::tiny ? T(0) : e;
}

template <typename T>
void fill_coords(const TileGeom& g, T inv_scale, T* px, T* py) {
  int p = 0;
  for (int r = g.r0; r < g.r1; ++r)
    for (int c = g.c0; c < g.c1; ++c, ++p) {
      px[p] = smoe::sample_coord<T>(c, inv_scale);
      py[p] = smoe::sample_coord<T>(r, inv_scale);
    }
}

template <typename T, int C, bool LIN>
void forward_impl(const T* mu, const T* chol, const T* logpi, const T* experts, const T* slopes,
                  const int32_t* tile_start, const int32_t* tile_ids, int B, int H, int W, int tile, T inv_scale,
                  int mode, T* out, T* lse) {
  const int tiles_x = (W + tile - 1) / tile, tiles_y = (H + tile - 1) / tile;
  const int n_tiles = B * tiles_x * tiles_y;
  const T no_weight = T(smoe::NO_WEIGHT), below = T(smoe::NO_WEIGHT_BELOW);
#pragma omp parallel
  {
    const int tp = tile * tile;
    std::vector<T> px(tp), py(tp), mx(tp), S(tp), acc(C * tp), L;
#pragma omp for schedule(dynamic, 2)
    for (int t = 0; t < n_tiles; ++t) {
      const TileGeom g = tile_geometry(t, H, W, tile);
      const int s = tile_start[t], n = tile_start[t + 1] - s, np = g.npix;
      fill_coords<T>(g, inv_scale, px.data(), py.data());
      if ((int)L.size() < n * np) L.resize(n * np);
      for (int j = 0; j < n; ++j) {
        const int k = tile_ids[s + j];
        T* Lj = L.data() + (size_t)j * np;
        for (int p = 0; p < np; ++p) {
          T dx, dy, u, v;
          Lj[p] = smoe::log_weight<T>(px[p], py[p], mu + 2 * k, chol + 3 * k, logpi[k], dx, dy, u, v);
        }
      }
      for (int p = 0; p < np; ++p) mx[p] = (mode == smoe::MODE_SMOE) ? no_weight : T(0);
      if (mode == smoe::MODE_SMOE)
        for (int j = 0; j < n; ++j) {
          const T* Lj = L.data() + (size_t)j * np;
          for (int p = 0; p < np; ++p) mx[p] = std::max(mx[p], Lj[p]);
        }
      std::fill(S.begin(), S.begin() + np, T(0));
      std::fill(acc.begin(), acc.end(), T(0));
      // The kernel's parameters are copied to locals and the buffers are accessed through restrict pointers,
      // so the compiler sees no aliasing and vectorizes the pixel loop (with the vector exp) for every C:
      // without this, the C > 1 loop stayed scalar (one libm expf call per pixel-kernel pair).
      T* __restrict Sp = S.data();
      T* __restrict accp = acc.data();
      const T* mxp = mx.data();
      const T* __restrict pxp = px.data();
      const T* __restrict pyp = py.data();
      for (int j = 0; j < n; ++j) {
        const int k = tile_ids[s + j];
        const T* __restrict Lj = L.data() + (size_t)j * np;
        const T mux = mu[2 * k], muy = mu[2 * k + 1];
        T e[C], sl[2 * C];
        smoe::load_expert<T, C, LIN>(experts, slopes, k, e, sl);
#pragma omp simd
        for (int p = 0; p < np; ++p) {
          // both operands loaded unconditionally, so the select is if-converted (vectorized) also without
          // fast-math (a load under the condition may not be speculated)
          const T l = Lj[p], mxv = mxp[p];
          const T w = (mxv < below) ? T(0) : exp_gate<T>(l - mxv);
          Sp[p] += w;
          const T dx = pxp[p] - mux, dy = pyp[p] - muy;
          for (int c = 0; c < C; ++c) accp[c * tp + p] += w * smoe::expert_value<T, LIN>(e, sl, c, dx, dy);
        }
      }
      {
        // Per-pixel results, vectorized over the tile's pixels (in place: lse in mx, out in acc), then written
        // to the (B, H, W[, C]) layout.
        T* __restrict lsep = mx.data();
        if (mode == smoe::MODE_SMOE) {
#pragma omp simd
          for (int p = 0; p < np; ++p) {
            const bool none = !(Sp[p] > T(0));
            const T Sd = none ? T(1) : Sp[p];
            lsep[p] = none ? no_weight : lsep[p] + std::log(Sd);
            for (int c = 0; c < C; ++c) accp[c * tp + p] = none ? T(0) : accp[c * tp + p] / Sd;
          }
        } else {
          for (int p = 0; p < np; ++p) lsep[p] = T(0);
        }
        int p = 0;
        for (int r = g.r0; r < g.r1; ++r)
          for (int c = g.c0; c < g.c1; ++c, ++p) {
            const size_t pix = ((size_t)g.b * H + r) * W + c;
            lse[pix] = lsep[p];
            for (int ch = 0; ch < C; ++ch) out[pix * C + ch] = accp[ch * tp + p];
          }
      }
    }
  }
}

template <typename T, int C, bool LIN>
void backward_impl(const T* mu, const T* chol, const T* logpi, const T* experts, const T* slopes,
                   const int32_t* tile_start, const int32_t* tile_ids, int B, int H, int W, int tile, T inv_scale,
                   int mode, const T* grad_out, const T* out, const T* lse, T* grad_entry) {
  const int tiles_x = (W + tile - 1) / tile, tiles_y = (H + tile - 1) / tile;
  const int n_tiles = B * tiles_x * tiles_y;
  constexpr int NS = smoe::grad_slots(C, LIN);
  const T no_weight = T(smoe::NO_WEIGHT), below = T(smoe::NO_WEIGHT_BELOW);
#pragma omp parallel
  {
    const int tp = tile * tile;
    std::vector<T> px(tp), py(tp), gl(tp), y(C * tp), go(C * tp), ls(tp);
#pragma omp for schedule(dynamic, 2)
    for (int t = 0; t < n_tiles; ++t) {
      const TileGeom g = tile_geometry(t, H, W, tile);
      const int s = tile_start[t], n = tile_start[t + 1] - s, np = g.npix;
      if (n == 0) continue;
      fill_coords<T>(g, inv_scale, px.data(), py.data());
      int p = 0;
      for (int r = g.r0; r < g.r1; ++r)
        for (int c = g.c0; c < g.c1; ++c, ++p) {
          const size_t pix = ((size_t)g.b * H + r) * W + c;
          ls[p] = lse[pix];
          for (int ch = 0; ch < C; ++ch) {
            y[ch * tp + p] = out[pix * C + ch];
            go[ch * tp + p] = grad_out[pix * C + ch];
          }
        }
      // Per kernel two pixel loops: the gates (the only call, the vector exp, which clobbers every vector
      // register), then the gradient sums with all accumulators in registers; one loop with the call inside
      // spilled and reloaded every accumulator around each call. The mode is a compile-time constant in the
      // loops (no per-pixel select, no masked loads of y in RBF mode).
      auto kernels = [&](auto mode_c) {
        constexpr int MODE = decltype(mode_c)::value;
        T* __restrict G = gl.data();
        const T* __restrict pxp = px.data();
        const T* __restrict pyp = py.data();
        const T* __restrict lsp = ls.data();
        const T* __restrict yp = y.data();
        const T* __restrict gop = go.data();
        for (int j = 0; j < n; ++j) {
          const int k = tile_ids[s + j];
          T m[2] = {mu[2 * k], mu[2 * k + 1]}, a[3] = {chol[3 * k], chol[3 * k + 1], chol[3 * k + 2]};
          const T lp = logpi[k];
          T e[C], sl[2 * C];
          smoe::load_expert<T, C, LIN>(experts, slopes, k, e, sl);
#pragma omp simd
          for (int p = 0; p < np; ++p) {
            T dx, dy, u, v;
            const T l = smoe::log_weight<T>(pxp[p], pyp[p], m, a, lp, dx, dy, u, v);
            G[p] = (lsp[p] < below) ? T(0) : exp_gate<T>(l - lsp[p]);
          }
          T acc[NS];
          for (int i = 0; i < NS; ++i) acc[i] = T(0);
          for (int p = 0; p < np; ++p) {
            T dx, dy, u, v;
            smoe::log_weight<T>(pxp[p], pyp[p], m, a, lp, dx, dy, u, v);  // the offsets again (l unused)
            const T gate = G[p];
            T mv[C], yv[C], gv[C];
            for (int ch = 0; ch < C; ++ch) {
              mv[ch] = smoe::expert_value<T, LIN>(e, sl, ch, dx, dy);
              yv[ch] = MODE == smoe::MODE_SMOE ? yp[ch * tp + p] : T(0);
              gv[ch] = gop[ch * tp + p];
            }
            const T dl = smoe::dlogweight<T, C>(MODE, gate, gv, yv, mv);
            smoe::accumulate_grad<T, C, LIN>(acc, dl, gate, gv, a, sl, dx, dy, u, v);
          }
          T* ge = grad_entry + (size_t)(s + j) * NS;
          for (int i = 0; i < NS; ++i) ge[i] = acc[i];
        }
      };
      if (mode == smoe::MODE_SMOE)
        kernels(std::integral_constant<int, smoe::MODE_SMOE>());
      else
        kernels(std::integral_constant<int, smoe::MODE_RBF>());
    }
  }
}

template <typename T>
int dispatch_forward(const T* mu, const T* chol, const T* logpi, const T* experts, const T* slopes,
                     const int32_t* ts, const int32_t* ids, int B, int H, int W, int C, int tile, T inv_scale,
                     int mode, T* out, T* lse, int n_threads) {
#ifdef _OPENMP
  if (n_threads > 0) omp_set_num_threads(n_threads);
#endif
#define SMOE_FWD(CC, LL) \
  forward_impl<T, CC, LL>(mu, chol, logpi, experts, slopes, ts, ids, B, H, W, tile, inv_scale, mode, out, lse)
  const bool lin = slopes != nullptr;
  switch (C) {
    case 1: lin ? SMOE_FWD(1, true) : SMOE_FWD(1, false); return 0;
    case 2: lin ? SMOE_FWD(2, true) : SMOE_FWD(2, false); return 0;
    case 3: lin ? SMOE_FWD(3, true) : SMOE_FWD(3, false); return 0;
    case 4: lin ? SMOE_FWD(4, true) : SMOE_FWD(4, false); return 0;
    default: return 1;
  }
#undef SMOE_FWD
}

template <typename T>
int dispatch_backward(const T* mu, const T* chol, const T* logpi, const T* experts, const T* slopes,
                      const int32_t* ts, const int32_t* ids, int B, int H, int W, int C, int tile, T inv_scale,
                      int mode, const T* grad_out, const T* out, const T* lse, T* grad_entry, int n_threads) {
#ifdef _OPENMP
  if (n_threads > 0) omp_set_num_threads(n_threads);
#endif
#define SMOE_BWD(CC, LL)                                                                                  \
  backward_impl<T, CC, LL>(mu, chol, logpi, experts, slopes, ts, ids, B, H, W, tile, inv_scale, mode, grad_out, \
                           out, lse, grad_entry)
  const bool lin = slopes != nullptr;
  switch (C) {
    case 1: lin ? SMOE_BWD(1, true) : SMOE_BWD(1, false); return 0;
    case 2: lin ? SMOE_BWD(2, true) : SMOE_BWD(2, false); return 0;
    case 3: lin ? SMOE_BWD(3, true) : SMOE_BWD(3, false); return 0;
    case 4: lin ? SMOE_BWD(4, true) : SMOE_BWD(4, false); return 0;
    default: return 1;
  }
#undef SMOE_BWD
}

}  // namespace

#define SMOE_EXPORT(SUFFIX, T)                                                                                 \
  extern "C" int smoe_tile_forward_##SUFFIX(const T* mu, const T* chol, const T* logpi, const T* experts,      \
                                            const T* slopes, const int32_t* ts, const int32_t* ids, int B,     \
                                            int H, int W, int C, int tile, T inv_scale, int mode, T* out,      \
                                            T* lse, int n_threads) {                                           \
    return dispatch_forward<T>(mu, chol, logpi, experts, slopes, ts, ids, B, H, W, C, tile, inv_scale, mode,   \
                               out, lse, n_threads);                                                          \
  }                                                                                                            \
  extern "C" int smoe_tile_backward_##SUFFIX(const T* mu, const T* chol, const T* logpi, const T* experts,     \
                                             const T* slopes, const int32_t* ts, const int32_t* ids, int B,    \
                                             int H, int W, int C, int tile, T inv_scale, int mode,             \
                                             const T* grad_out, const T* out, const T* lse, T* grad_entry,     \
                                             int n_threads) {                                                  \
    return dispatch_backward<T>(mu, chol, logpi, experts, slopes, ts, ids, B, H, W, C, tile, inv_scale, mode,  \
                                grad_out, out, lse, grad_entry, n_threads);                                   \
  }

SMOE_EXPORT(f32, float)
SMOE_EXPORT(f64, double)

// ---------------------------------------------------------------------------------------------------------
// Binning (CPU): per-tile kernel lists as CSR by a counting sort, O(K + nnz), kernels ascending in each tile.
// rect (K, 5) int32: [tile_x0, tile_x1, tile_y0, tile_y1, model] of each kernel's coverage box, model < 0 for
// a kernel that covers no output pixel. Extra (tile, kernel) pairs (the kernels that fill empty tiles, sorted)
// are appended to their tiles. The same lists as smoe_core/_binning.py's torch path.
namespace {
template <typename F>
void for_each_entry(int K, const int32_t* rect, int tiles_x, int tiles_y, F f) {
  for (int k = 0; k < K; ++k) {
    const int32_t* r = rect + 5 * k;
    if (r[4] < 0) continue;
    const int base = r[4] * tiles_x * tiles_y;
    for (int ty = r[2]; ty <= r[3]; ++ty)
      for (int tx = r[0]; tx <= r[1]; ++tx) f(base + ty * tiles_x + tx, k);
  }
}
}  // namespace

extern "C" int64_t smoe_bin_count(int K, const int32_t* rect, int tiles_x, int tiles_y, int n_tiles, int32_t* counts) {
  for (int t = 0; t < n_tiles; ++t) counts[t] = 0;
  int64_t total = 0;
  for_each_entry(K, rect, tiles_x, tiles_y, [&](int t, int) { ++counts[t]; ++total; });
  return total;
}

extern "C" int smoe_bin_fill(int K, const int32_t* rect, int tiles_x, int tiles_y, int n_tiles, int n_extra,
                             const int32_t* extra_tile, const int32_t* extra_kernel, int32_t* tile_start,
                             int32_t* ids) {
  std::vector<int64_t> count(n_tiles + 1, 0);
  for_each_entry(K, rect, tiles_x, tiles_y, [&](int t, int) { ++count[t]; });
  for (int e = 0; e < n_extra; ++e) ++count[extra_tile[e]];
  int64_t run = 0;
  for (int t = 0; t < n_tiles; ++t) {
    tile_start[t] = (int32_t)run;
    const int64_t c = count[t];
    count[t] = run;  // becomes the write cursor
    run += c;
  }
  tile_start[n_tiles] = (int32_t)run;
  for_each_entry(K, rect, tiles_x, tiles_y, [&](int t, int k) { ids[count[t]++] = k; });
  for (int e = 0; e < n_extra; ++e) ids[count[extra_tile[e]]++] = extra_kernel[e];
  return 0;
}
