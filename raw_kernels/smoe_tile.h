// smoe_tile.h -- the per-pixel math of the tiled (rasterized) SMoE renderer, shared by the CPU build
// (smoe_tile_cpu.cpp, C++/OpenMP) and the GPU build (smoe_tile_cuda.cu, CUDA through CuPy RawModule).
//
// Model (adaptive-segmentation paper eqs. 2-5; coding paper eqs. 2-8):
//   K_j(x)   = exp(-1/2 (x - mu_j)^T A_j A_j^T (x - mu_j)),  A_j = [[a11, 0], [a21, a22]]
//   l_j(x)   = log(pi_j) - 1/2 q_j(x),  q_j = u^2 + v^2,  u = a11 dx + a21 dy,  v = a22 dy,  d = x - mu_j
//   m_j(x)   = e_j + S_j (x - mu_j)                          (constant expert when there are no slopes S)
//   SMoE:  y(x) = sum_j softmax_j(l(x)) m_j(x)              (evaluated in the log domain, never 0/0)
//   RBF :  y(x) = sum_j exp(l_j(x)) m_j(x)                   (eq. 1 of the segmentation paper, pi folded in)
// Every function here is per (pixel, kernel) and is compiled for both the host and the device, so the CPU
// tests of this file are the tests of the GPU arithmetic.
#pragma once

#ifdef __CUDACC__
#define SMOE_HD __host__ __device__ __forceinline__
#else
#define SMOE_HD inline
#endif

namespace smoe {

// Log-weights are kept finite so the CPU build may use -ffast-math (vectorized exp): a kernel with pi <= 0
// gets log pi = NO_WEIGHT, a pixel whose largest log-weight is below NO_WEIGHT_BELOW has no weight at all
// (output 0, no gradient), and q is clamped at MAX_Q.
constexpr float NO_WEIGHT = -1e30f;
constexpr float NO_WEIGHT_BELOW = -1e29f;
constexpr float MAX_Q = 1e30f;

// Rendering modes: the gate of one kernel at one pixel.
enum Mode { MODE_SMOE = 0, MODE_RBF = 1 };

// Number of per-kernel gradient slots for C channels, with (LIN) or without linear experts:
// [d mu_x, d mu_y, d a11, d a21, d a22, d log pi, d e_0..e_{C-1}, (d S_{c,0}, d S_{c,1}) for each c].
SMOE_HD constexpr int grad_slots(int C, bool LIN) { return 6 + C + (LIN ? 2 * C : 0); }

// Sample position of output pixel (row, col) in image pixel coordinates: x = (col + 0.5)/s - 0.5.
template <typename T>
SMOE_HD T sample_coord(int index, T inv_scale) {
  return (static_cast<T>(index) + T(0.5)) * inv_scale - T(0.5);
}

// Log-gate l_j(x) of one kernel at one point; also returns the offsets and A^T d (needed by the backward).
template <typename T>
SMOE_HD T log_weight(T px, T py, const T* mu, const T* chol, T logpi, T& dx, T& dy, T& u, T& v) {
  dx = px - mu[0];
  dy = py - mu[1];
  u = chol[0] * dx + chol[1] * dy;
  v = chol[2] * dy;
  const T q = u * u + v * v;
  return logpi - T(0.5) * (q < T(MAX_Q) ? q : T(MAX_Q));
}

// Expert value of channel c at offset (dx, dy) from the centre.
template <typename T, bool LIN>
SMOE_HD T expert_value(const T* expert, const T* slope, int c, T dx, T dy) {
  T m = expert[c];
  if (LIN) m += slope[2 * c] * dx + slope[2 * c + 1] * dy;
  return m;
}

// Kernel k's C expert values (and with LIN its 2C slopes) copied into e[C] (and sl[2C]).
template <typename T, int C, bool LIN>
SMOE_HD void load_expert(const T* experts, const T* slopes, int k, T* e, T* sl) {
  for (int c = 0; c < C; ++c) {
    e[c] = experts[(size_t)C * k + c];
    if (LIN) {
      sl[2 * c] = slopes[(size_t)2 * C * k + 2 * c];
      sl[2 * c + 1] = slopes[(size_t)2 * C * k + 2 * c + 1];
    }
  }
}

// d loss / d l_j at one pixel, given the gate g (softmax weight for SMoE, exp(l) for RBF), the upstream
// gradient of the pixel's C channels, the pixel's output y and the kernel's expert values m_j(x).
//   SMoE: dy_c/dl_j = g (m_jc - y_c);   RBF: dy_c/dl_j = g m_jc.
template <typename T, int C>
SMOE_HD T dlogweight(int mode, T gate, const T* grad_out, const T* y, const T* m) {
  T s = T(0);
  for (int c = 0; c < C; ++c) s += grad_out[c] * (mode == MODE_SMOE ? (m[c] - y[c]) : m[c]);
  return gate * s;
}

// Adds one pixel's contribution to one kernel's gradient slots (see grad_slots for the layout).
//   gl   = d loss / d l_j at this pixel
//   gate = the gate (d y / d m_j), grad_out = d loss / d y at this pixel.
template <typename T, int C, bool LIN>
SMOE_HD void accumulate_grad(T* acc, T gl, T gate, const T* grad_out, const T* chol, const T* slope, T dx, T dy,
                             T u, T v) {
  // through q = u^2 + v^2, with d l / d q = -1/2
  acc[0] += gl * u * chol[0];                   // d mu_x: -1/2 * 2u * (-a11)
  acc[1] += gl * (u * chol[1] + v * chol[2]);   // d mu_y: -1/2 * (2u * (-a21) + 2v * (-a22))
  acc[2] -= gl * u * dx;                        // d a11
  acc[3] -= gl * u * dy;                        // d a21
  acc[4] -= gl * v * dy;                        // d a22
  acc[5] += gl;                                 // d log pi
  for (int c = 0; c < C; ++c) {
    T ge = gate * grad_out[c];
    acc[6 + c] += ge;
    if (LIN) {
      acc[6 + C + 2 * c] += ge * dx;
      acc[6 + C + 2 * c + 1] += ge * dy;
      acc[0] -= ge * slope[2 * c];              // m_j depends on mu through (x - mu)
      acc[1] -= ge * slope[2 * c + 1];
    }
  }
}

}  // namespace smoe
