// Torch-facing validation of K1 inputs, shared by the CPU and CUDA ops.
#pragma once

#include <string>

#include <ATen/core/Tensor.h>

#include "common/fusion_args.h"
#include "ops.h"  // MOGEN_FUSION_PARAMS

namespace mogen {

// The kernel dtype of a float32 / bfloat16 / float16 tensor; a TypeError naming `name` otherwise.
DType to_dtype(const at::Tensor& t, const std::string& name);

// Checks shapes, dtypes and devices and fills a FusionArgs that points into the
// given tensors (which must outlive it). Rows of `weights` may have stride 0.
// Maps are range-checked here (once per map, cached by identity and version).
FusionArgs make_fusion_args(MOGEN_FUSION_PARAMS);

}  // namespace mogen
