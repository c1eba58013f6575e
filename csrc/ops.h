// The torch-facing entry points of every op, one declaration per backend.
#pragma once

#include <optional>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>

namespace mogen {

#define MOGEN_FUSION_PARAMS                                                                            \
  const at::Tensor &base, const std::vector<at::Tensor>&experts, const std::vector<at::Tensor>&refs, \
      const std::vector<std::optional<at::Tensor>>&maps, const at::Tensor &weights,                    \
      const std::vector<double>&inv_temps, double beta, double base_inv_temp, double unmapped

namespace cpu {
at::Tensor fused_log_ratio(MOGEN_FUSION_PARAMS);
std::tuple<at::Tensor, at::Tensor> fused_log_ratio_topk(MOGEN_FUSION_PARAMS, int64_t k);
}  // namespace cpu

#ifdef MOGEN_WITH_CUDA
namespace cuda {
at::Tensor fused_log_ratio(MOGEN_FUSION_PARAMS);
std::tuple<at::Tensor, at::Tensor> fused_log_ratio_topk(MOGEN_FUSION_PARAMS, int64_t k);
}  // namespace cuda
#endif

}  // namespace mogen
