// Torch-facing validation of K2 inputs, shared by the CPU and CUDA ops.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

#include "common/value_args.h"

namespace mogen {

// Checks shapes, dtypes, devices and strides of hidden [B, H], weight [V, H],
// ids [B, k] (int32 / int64) and bias [V] (or none), and fills a ValueScoresArgs
// that points into them (they must outlive it). Id values are not read here:
// each backend checks them where it reads them.
ValueScoresArgs make_value_args(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& ids,
                                const std::optional<at::Tensor>& bias);

}  // namespace mogen
