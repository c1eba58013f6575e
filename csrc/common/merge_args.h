// Plain description of one K3 (streaming merge) step: out[k] = sum_i C[k, i] x_i
// over `numel` elements of N inputs of mixed dtypes, fp32 accumulation, cast on
// store. Torch-free: shared by the CPU kernel and the CUDA kernel (.cu).
#pragma once

#include <cstdint>

#include "common/fusion_args.h"  // DType

namespace mogen {

// Inputs per CUDA launch (they travel by value in the kernel's arguments); the
// CPU kernel takes any number.
constexpr int kMaxMergeInputs = 32;

MOGEN_HD int64_t dtype_size(DType d) { return d == DType::kFloat32 ? 4 : 2; }

struct MergeInputs {
  int32_t num_inputs = 0;
  const void* data[kMaxMergeInputs] = {};
  DType dtype[kMaxMergeInputs] = {};
  // One output row of C, each coefficient as an fp32 pair coef + coef_lo (the part
  // of the double the float drops), so rounding C itself costs no accuracy.
  float coef[kMaxMergeInputs] = {};
  float coef_lo[kMaxMergeInputs] = {};
  // The coefficients as given: an element whose compensated sum is inf or NaN is
  // recomputed as the plain fp64 sum over the nonzero ones (see cpu/merge.cpp).
  double coef64[kMaxMergeInputs] = {};
};

}  // namespace mogen
