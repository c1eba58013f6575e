// Torch-facing validation of K1 inputs, shared by the CPU and CUDA ops.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "common/fusion_args.h"

namespace mogen {

// The kernel dtype of a float32 / bfloat16 / float16 tensor; a TypeError naming `name` otherwise.
DType to_dtype(const at::Tensor& t, const std::string& name);

// Checks shapes, dtypes and devices and fills a FusionArgs that points into the
// given tensors (which must outlive it). Rows of `weights` may have stride 0.
FusionArgs make_fusion_args(const at::Tensor& base, const std::vector<at::Tensor>& experts,
                            const std::vector<at::Tensor>& refs,
                            const std::vector<std::optional<at::Tensor>>& maps,
                            const at::Tensor& weights, const std::vector<double>& inv_temps,
                            double beta, double base_inv_temp, double unmapped);

}  // namespace mogen
