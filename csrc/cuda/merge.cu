// K3 on CUDA: one accumulation step of the streaming merge, on device-resident
// staging buffers. Torch-free (see docs/design.md section 4); the pinned staging and
// copy/compute overlap live in cuda/merge.cpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/merge_launch.h"

namespace mogen {
namespace cuda_impl {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float load_as_float(const void* p, DType dt, int64_t j) {
  switch (dt) {
    case DType::kBFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[j]);
    case DType::kFloat16:
      return __half2float(static_cast<const __half*>(p)[j]);
    default:
      return static_cast<const float*>(p)[j];
  }
}

__device__ __forceinline__ void store_from_float(void* p, DType dt, int64_t j, float v) {
  switch (dt) {
    case DType::kBFloat16:
      static_cast<__nv_bfloat16*>(p)[j] = __float2bfloat16_rn(v);
      break;
    case DType::kFloat16:
      static_cast<__half*>(p)[j] = __float2half_rn(v);
      break;
    default:
      static_cast<float*>(p)[j] = v;
  }
}

// Element j as the plain fp64 sum of coef64[i] * x_i[j], in input order, over the
// nonzero coefficients: where the compensated fp32 sum is inf or NaN its error
// terms hold inf - inf, so (as the CPU kernel) such elements take fp64's result.
// Rare (non-finite inputs, fp32 overflow), so the divergence costs nothing.
__device__ __noinline__ float fp64_sum(const MergeInputs& in, int64_t j) {
  double sum = 0.0;
  for (int i = 0; i < in.num_inputs; ++i)
    if (in.coef64[i] != 0.0)
      sum = __dadd_rn(sum, __dmul_rn(in.coef64[i], static_cast<double>(load_as_float(in.data[i], in.dtype[i], j))));
  return __double2float_rn(sum);
}

// Grid-stride over elements; the input loop is uniform across the block, so the
// dtype switches do not diverge. int64 indices throughout.
__global__ void merge_kernel(MergeInputs in, void* out, DType out_dtype, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += stride) {
    // As the CPU kernel: the sum as an fp32 pair hi + lo with every product's and
    // addition's rounding error kept in lo (FMA product error, TwoSum). The _rn
    // intrinsics are never contracted into FMAs, which would break the pair.
    float hi = 0.0f, lo = 0.0f;
    for (int i = 0; i < in.num_inputs; ++i) {
      const float c = in.coef[i], x = load_as_float(in.data[i], in.dtype[i], j);
      const float p = __fmul_rn(c, x);
      const float p_err = __fadd_rn(fmaf(c, x, -p), __fmul_rn(in.coef_lo[i], x));
      const float s = __fadd_rn(hi, p);
      const float b = __fsub_rn(s, hi);
      const float s_err = __fadd_rn(__fsub_rn(hi, __fsub_rn(s, b)), __fsub_rn(p, b));
      hi = s;
      lo = __fadd_rn(lo, __fadd_rn(s_err, p_err));
    }
    float r = __fadd_rn(hi, lo);
    if (!isfinite(r)) r = fp64_sum(in, j);
    store_from_float(out, out_dtype, j, r);
  }
}

}  // namespace

cudaError_t launch_merge(const MergeInputs& in, void* out, DType out_dtype, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const int64_t want = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(want < int64_t{sms} * 8 ? want : int64_t{sms} * 8);
  merge_kernel<<<blocks, kThreads, 0, stream>>>(in, out, out_dtype, n);
  return cudaGetLastError();
}

}  // namespace cuda_impl
}  // namespace mogen
