// Raw-pointer launcher of the K3 CUDA kernel. Torch-free: included by
// cuda/merge.cu (nvcc, no torch headers) and cuda/merge.cpp (the torch side).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/merge_args.h"

namespace mogen {
namespace cuda_impl {

// out[j] = cast(sum_i in.coef[i] * in.data[i][j]) for j in [0, n): device pointers,
// fp32 accumulation, round-to-nearest-even on store.
cudaError_t launch_merge(const MergeInputs& in, void* out, DType out_dtype, int64_t n, cudaStream_t stream);

}  // namespace cuda_impl
}  // namespace mogen
