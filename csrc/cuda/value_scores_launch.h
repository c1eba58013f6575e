// Raw-pointer launcher of the K2 CUDA kernel. Torch-free: included by
// cuda/value_scores.cu (nvcc, no torch headers) and cuda/value_scores.cpp (the torch side).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/value_args.h"

namespace mogen {
namespace cuda_impl {

// out: fp32 [B, k] contiguous. bad: two zeroed 64-bit counters in device memory.
// One warp scores one (row, candidate). An id outside [0, V) is never read:
// its output is NaN, bad[0] counts such ids and bad[1] holds one of them, for
// the caller to report. Returns cudaErrorInvalidValue if B * k needs more
// blocks than a grid holds.
cudaError_t launch_topk_value_scores(const ValueScoresArgs& a, float* out, unsigned long long* bad,
                                     cudaStream_t stream);

}  // namespace cuda_impl
}  // namespace mogen
