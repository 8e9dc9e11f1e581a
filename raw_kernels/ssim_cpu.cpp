// SSIM of an image against a fixed reference, forward and backward, on the CPU (C++/OpenMP).
//
// Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image Quality Assessment: From Error Visibility to
// Structural Similarity", IEEE Trans. Image Processing 13(4), 2004, with its defaults as the coding paper uses
// them (R. Jongebloed, E. Bochinski, L. Lange and T. Sikora, "Quantized and Regularized Optimization for Coding
// Images Using Steered Mixtures-of-Experts", DCC 2019, eq. 9): a separable window g (11 taps, Gaussian sigma 1.5),
// population statistics, the mean over the valid window positions (no padding). The same function as
// smoe_core.metrics.ssim_torch with an SSIMReference target, which the tests compare against.
//
// Images are (H, W, C) with channels interleaved (the renderer's layout); the window slides over the
// Hv x Wv = (H - n + 1) x (W - n + 1) valid positions. The reference's blurred mean and blurred square are given
// ((Hv, Wv, C)); the image's three blurred statistics (mean, square, product with the reference) are computed in
// one horizontal and one vertical pass over rows, each a sum over the n taps in tap order (so the result does
// not depend on the thread count). Per valid position, with A1 = 2 mx my + c1, A2 = 2 sxy + c2,
// B1 = mx^2 + my^2 + c1, B2 = sxx + syy + c2, D = B1 B2 and S = A1 A2 / D, the forward pass also writes the
// partial derivatives of S in the three blurred statistics of the image:
//   dS/dmx  = (2 my (A2 - A1) - 2 mx S (B2 - B1)) / D     (sxx = exx - mx^2 and sxy = exy - mx my depend on mx)
//   dS/dexx = -S / B2,     dS/dexy = 2 A1 / D.
// The backward pass scales them by dL/dSSIM_c / (Hv Wv), applies the adjoint of the valid blur (a zero-padded
// "full" correlation with the reversed window; g is symmetric but the code does not rely on it) and combines
//   dL/dx = B*(d mx) + 2 x B*(d exx) + y B*(d exy).
// Per-channel means are summed in double, row by row, then over rows in order.
#include <cstddef>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

template <typename T>
void horizontal_valid(const T* src, int W, int C, const T* g, int n, T* dst) {
  // dst[j * C + c] = sum_k g[k] src[(j + k) * C + c], j < W - n + 1
  const int len = (W - n + 1) * C;
  for (int i = 0; i < len; ++i) dst[i] = T(0);
  for (int k = 0; k < n; ++k) {
    const T gk = g[k];
    const T* s = src + k * C;
    for (int i = 0; i < len; ++i) dst[i] += gk * s[i];
  }
}

template <typename T>
int forward(const T* x, const T* y, const T* my, const T* eyy, const T* g, int n, int H, int W, int C, T c1, T c2,
            double* per, T* dmx, T* dexx, T* dexy, int n_threads) {
  if (n < 1 || H < n || W < n || C < 1) return 1;
  const int Hv = H - n + 1, Wv = W - n + 1, len = Wv * C;
  // horizontal pass of x, x * x and x * y over every row: (H, Wv * C) each
  std::vector<T> hx((std::size_t)H * len), hxx((std::size_t)H * len), hxy((std::size_t)H * len);
#pragma omp parallel num_threads(n_threads)
  {
    std::vector<T> sq((std::size_t)W * C), pr((std::size_t)W * C);
#pragma omp for schedule(static)
    for (int r = 0; r < H; ++r) {
      const T* xr = x + (std::size_t)r * W * C;
      const T* yr = y + (std::size_t)r * W * C;
      for (int i = 0; i < W * C; ++i) {
        sq[i] = xr[i] * xr[i];
        pr[i] = xr[i] * yr[i];
      }
      horizontal_valid(xr, W, C, g, n, hx.data() + (std::size_t)r * len);
      horizontal_valid(sq.data(), W, C, g, n, hxx.data() + (std::size_t)r * len);
      horizontal_valid(pr.data(), W, C, g, n, hxy.data() + (std::size_t)r * len);
    }
  }
  std::vector<double> row_sums((std::size_t)Hv * C, 0.0);
#pragma omp parallel num_threads(n_threads)
  {
    std::vector<T> mx(len), exx(len), exy(len), ssim(len);
#pragma omp for schedule(static)
    for (int i = 0; i < Hv; ++i) {
      for (int t = 0; t < len; ++t) mx[t] = exx[t] = exy[t] = T(0);
      for (int k = 0; k < n; ++k) {
        const T gk = g[k];
        const std::size_t o = (std::size_t)(i + k) * len;
        for (int t = 0; t < len; ++t) {
          mx[t] += gk * hx[o + t];
          exx[t] += gk * hxx[o + t];
          exy[t] += gk * hxy[o + t];
        }
      }
      const std::size_t o = (std::size_t)i * len;
      for (int t = 0; t < len; ++t) {
        const T m1 = mx[t], m2 = my[o + t];
        const T a1 = T(2) * m1 * m2 + c1;
        const T a2 = T(2) * (exy[t] - m1 * m2) + c2;
        const T b1 = m1 * m1 + m2 * m2 + c1;
        const T b2 = (exx[t] - m1 * m1) + (eyy[o + t] - m2 * m2) + c2;
        const T d = b1 * b2;
        const T s = a1 * a2 / d;
        ssim[t] = s;
        dmx[o + t] = (T(2) * m2 * (a2 - a1) - T(2) * m1 * s * (b2 - b1)) / d;
        dexx[o + t] = -s / b2;
        dexy[o + t] = T(2) * a1 / d;
      }
      double* sums = row_sums.data() + (std::size_t)i * C;
      for (int j = 0; j < Wv; ++j)
        for (int c = 0; c < C; ++c) sums[c] += (double)ssim[(std::size_t)j * C + c];
    }
  }
  for (int c = 0; c < C; ++c) per[c] = 0.0;
  for (int i = 0; i < Hv; ++i)
    for (int c = 0; c < C; ++c) per[c] += row_sums[(std::size_t)i * C + c];
  for (int c = 0; c < C; ++c) per[c] /= (double)Hv * (double)Wv;
  return 0;
}

template <typename T>
int backward(const T* x, const T* y, const T* g, int n, int H, int W, int C, const T* scale, const T* dmx,
             const T* dexx, const T* dexy, T* dx, int n_threads) {
  if (n < 1 || H < n || W < n || C < 1) return 1;
  const int Hv = H - n + 1, Wv = W - n + 1, len = Wv * C;
  std::vector<T> srow(len);  // dL/dSSIM_c / (Hv Wv) of each entry's channel
  for (int t = 0; t < len; ++t) srow[t] = scale[t % C];
  // one output row at a time: the adjoint of the vertical pass (u[r] = sum_k g[k] d[r - k] over 0 <= r - k < Hv)
  // of the three scaled maps, then the adjoint of the horizontal pass, then dL/dx = A(a) + 2 x A(b) + y A(e)
#pragma omp parallel num_threads(n_threads)
  {
    std::vector<T> a(len), b(len), e(len), fa((std::size_t)W * C), fb((std::size_t)W * C), fe((std::size_t)W * C);
#pragma omp for schedule(static)
    for (int r = 0; r < H; ++r) {
      for (int t = 0; t < len; ++t) a[t] = b[t] = e[t] = T(0);
      for (int k = 0; k < n; ++k) {
        const int i = r - k;
        if (i < 0 || i >= Hv) continue;
        const T gk = g[k];
        const std::size_t o = (std::size_t)i * len;
        for (int t = 0; t < len; ++t) {
          const T gs = gk * srow[t];
          a[t] += gs * dmx[o + t];
          b[t] += gs * dexx[o + t];
          e[t] += gs * dexy[o + t];
        }
      }
      for (int t = 0; t < W * C; ++t) fa[t] = fb[t] = fe[t] = T(0);
      for (int k = 0; k < n; ++k) {
        const T gk = g[k];
        T* pa = fa.data() + (std::size_t)k * C;
        T* pb = fb.data() + (std::size_t)k * C;
        T* pe = fe.data() + (std::size_t)k * C;
        for (int t = 0; t < len; ++t) {  // output column j = j' + k gets g[k] times input column j'
          pa[t] += gk * a[t];
          pb[t] += gk * b[t];
          pe[t] += gk * e[t];
        }
      }
      const std::size_t o = (std::size_t)r * W * C;
      for (int t = 0; t < W * C; ++t) dx[o + t] = fa[t] + T(2) * x[o + t] * fb[t] + y[o + t] * fe[t];
    }
  }
  return 0;
}

}  // namespace

#define SSIM_EXPORT(SUFFIX, T)                                                                                 \
  extern "C" int smoe_ssim_forward_##SUFFIX(const T* x, const T* y, const T* my, const T* eyy, const T* g,     \
                                            int n, int H, int W, int C, T c1, T c2, double* per, T* dmx,       \
                                            T* dexx, T* dexy, int n_threads) {                                 \
    return forward<T>(x, y, my, eyy, g, n, H, W, C, c1, c2, per, dmx, dexx, dexy, n_threads);                \
  }                                                                                                            \
  extern "C" int smoe_ssim_backward_##SUFFIX(const T* x, const T* y, const T* g, int n, int H, int W, int C,  \
                                             const T* scale, const T* dmx, const T* dexx, const T* dexy,      \
                                             T* dx, int n_threads) {                                           \
    return backward<T>(x, y, g, n, H, W, C, scale, dmx, dexx, dexy, dx, n_threads);                           \
  }

SSIM_EXPORT(f32, float)
SSIM_EXPORT(f64, double)
