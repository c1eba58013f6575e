// Plain description of one K1 (multi-vocabulary log-ratio fusion) problem.
//
// Torch-free on purpose: the CUDA kernels (.cu) and the CPU kernels share it,
// and .cu files must compile without torch headers (see docs/design.md section 4).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MOGEN_HD __host__ __device__ __forceinline__
#else
#define MOGEN_HD inline
#endif

namespace mogen {

enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// One [rows, vocab] logits matrix: vocab dim contiguous, any row stride.
struct LogitsView {
  const void* data = nullptr;
  int64_t row_stride = 0;  // in elements
  int64_t vocab = 0;
  DType dtype = DType::kFloat32;
};

// Kernel arguments travel by value to CUDA kernels, so the guide count is capped.
constexpr int kMaxGuides = 16;

struct GuideView {
  LogitsView expert;
  LogitsView ref;
  const int32_t* map = nullptr;  // [V_b] guide id or -1; nullptr = identity
  float inv_temp = 1.0f;
};

// s[b, v] = (z_b[b, v] * base_inv_temp - lse_b[b])
//         + sum_i c[b, i] * ((e_i[b, j] - r_i[b, j]) * inv_temp_i - (lse_ei[b] - lse_ri[b]))
// with j = map_i[v], c[b, i] = beta * w[b, i], and c[b, i] * unmapped where j == -1.
// lse_x[b] = log sum_u exp(x[b, u] * inv_temp_x).
struct FusionArgs {
  int64_t batch = 0;
  int64_t vocab = 0;  // V_b
  LogitsView base;
  float base_inv_temp = 1.0f;
  int32_t num_guides = 0;
  GuideView guides[kMaxGuides];
  const float* weights = nullptr;  // fp32, element [b, i] at b * w_row_stride + i * w_col_stride
  int64_t w_row_stride = 0;
  int64_t w_col_stride = 1;
  float beta = 1.0f;
  float unmapped = 0.0f;

  // Inputs in LSE order: 0 = base, 1 + 2i = expert i, 2 + 2i = reference i.
  MOGEN_HD int32_t num_inputs() const { return 1 + 2 * num_guides; }
  // The LSE scale of input j (its inverse temperature).
  MOGEN_HD float input_inv_temp(int32_t j) const {
    return j == 0 ? base_inv_temp : guides[(j - 1) / 2].inv_temp;
  }
  MOGEN_HD const LogitsView& input(int32_t j) const {
    if (j == 0) return base;
    const GuideView& g = guides[(j - 1) / 2];
    return (j - 1) % 2 == 0 ? g.expert : g.ref;
  }
  // beta * w[b, i]: the coefficient of guide i's log-ratio on row b.
  MOGEN_HD float coef(int64_t b, int32_t i) const {
    return beta * weights[b * w_row_stride + static_cast<int64_t>(i) * w_col_stride];
  }
};

// A fused score and its base id. `better` ranks them as torch.topk and
// torch.argmax do: NaN above everything, then higher scores, equal scores (and
// NaNs) lower id first. A strict weak order, so sorts and reductions may use it.
struct Scored {
  float v;
  int64_t id;
};
MOGEN_HD bool better(const Scored& x, const Scored& y) {
  const bool xn = x.v != x.v, yn = y.v != y.v;  // isnan without <cmath> on the device side
  if (xn != yn) return xn;
  if (!xn && x.v != y.v) return x.v > y.v;
  return x.id < y.id;
}

}  // namespace mogen
