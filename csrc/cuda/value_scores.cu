// K2 on CUDA: top-k value scores. Torch-free (see docs/design.md section 4).
//
//   out[b, c] = sum_h hidden[b, h] * weight[ids[b, c], h] + bias[ids[b, c]]
//
// One warp per (row, candidate); the eight warps of a block take consecutive
// candidates of the same row, so the hidden state is read from L1/L2 after the
// first warp. Each lane reads 16-byte packs of the weight row (and the matching
// hidden elements), accumulates in fp32, and the warp reduces with shuffles.
// Same math as cpu/value_scores.cpp (fp32 products and sums of the exactly
// widened inputs), different summation order: here lane l sums the packs
// l, l + 32, ... then a butterfly adds the 32 lanes; the CPU sums 16 strided
// lanes then the tail. Results agree to fp32 rounding, not bit for bit.
// Offsets are int64 throughout: V x H exceeds 2^31 elements for real heads.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/value_scores_launch.h"

namespace mogen {
namespace cuda_impl {
namespace {

constexpr int kWarps = 8;  // warps (candidates) per block
constexpr int kThreads = 32 * kWarps;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ float load_float(DType dt, const void* p, int64_t idx) {
  switch (dt) {
    case DType::kBFloat16:
      return to_float(static_cast<const __nv_bfloat16*>(p)[idx]);
    case DType::kFloat16:
      return to_float(static_cast<const __half*>(p)[idx]);
    default:
      return static_cast<const float*>(p)[idx];
  }
}

// N elements of T at p (aligned to N * sizeof(T), which is 8, 16 or 32 bytes)
// widened to fp32, with 16-byte (or, for 8 bytes, one 8-byte) loads.
template <typename T, int N>
__device__ __forceinline__ void load_pack(const T* p, float* out) {
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  static_assert(kBytes % 8 == 0, "packs are whole 8-byte words");
  if constexpr (kBytes % 16 == 0) {
    constexpr int kPer = 16 / sizeof(T);
#pragma unroll
    for (int q = 0; q < kBytes / 16; ++q) {
      const uint4 raw = reinterpret_cast<const uint4*>(p)[q];
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < kPer; ++i) out[q * kPer + i] = to_float(e[i]);
    }
  } else {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_float(e[i]);
  }
}

// grid (ceil(B * k / kWarps)), block kThreads. kVec: every row of weight and
// hidden starts on a 16-byte boundary (checked by the launcher), so full packs
// are read with vector loads; otherwise one element per lane per step.
template <typename TH, typename TW, bool kVec>
__global__ void __launch_bounds__(kThreads)
    topk_value_scores_kernel(ValueScoresArgs a, float* out, unsigned long long* bad) {
  const int lane = threadIdx.x % 32;
  const int64_t task = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (task >= a.batch * a.k) return;  // uniform across the warp
  const int64_t b = task / a.k, c = task % a.k;
  const int64_t id = a.id(b, c);
  if (id < 0 || id >= a.vocab) {  // never read outside the head: flag it for the host
    if (lane == 0) {
      atomicAdd(&bad[0], 1ULL);
      bad[1] = static_cast<unsigned long long>(id);
      out[task] = __int_as_float(0x7fc00000);  // NaN
    }
    return;
  }
  const int64_t H = a.hidden_size;
  const TW* w = static_cast<const TW*>(a.weight) + id * a.weight_row_stride;
  const TH* h = static_cast<const TH*>(a.hidden) + b * a.hidden_row_stride;
  float acc = 0.0f;
  int64_t tail = 0;
  if constexpr (kVec) {
    constexpr int kPack = 16 / sizeof(TW);  // one 16-byte load of weight per step
    const int64_t full = H / kPack * kPack;
#pragma unroll 4
    for (int64_t i = static_cast<int64_t>(lane) * kPack; i < full; i += 32 * kPack) {
      float wv[kPack], hv[kPack];
      load_pack<TW, kPack>(w + i, wv);
      load_pack<TH, kPack>(h + i, hv);
#pragma unroll
      for (int j = 0; j < kPack; ++j) acc += hv[j] * wv[j];
    }
    tail = full;
  }
  for (int64_t i = tail + lane; i < H; i += 32) acc += to_float(h[i]) * to_float(w[i]);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) {
    if (a.bias != nullptr) acc += load_float(a.bias_dtype, a.bias, id * a.bias_stride);
    out[task] = acc;
  }
}

int64_t dtype_bytes(DType d) { return d == DType::kFloat32 ? 4 : 2; }

bool aligned16(const void* p, int64_t row_stride, DType d) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (row_stride * dtype_bytes(d)) % 16 == 0;
}

template <typename TH, typename TW>
cudaError_t launch_typed(const ValueScoresArgs& a, unsigned blocks, float* out, unsigned long long* bad,
                         cudaStream_t stream) {
  if (aligned16(a.hidden, a.hidden_row_stride, a.hidden_dtype) &&
      aligned16(a.weight, a.weight_row_stride, a.weight_dtype))
    topk_value_scores_kernel<TH, TW, true><<<blocks, kThreads, 0, stream>>>(a, out, bad);
  else
    topk_value_scores_kernel<TH, TW, false><<<blocks, kThreads, 0, stream>>>(a, out, bad);
  return cudaGetLastError();
}

template <typename TH>
cudaError_t launch_weight(const ValueScoresArgs& a, unsigned blocks, float* out, unsigned long long* bad,
                          cudaStream_t stream) {
  switch (a.weight_dtype) {
    case DType::kBFloat16:
      return launch_typed<TH, __nv_bfloat16>(a, blocks, out, bad, stream);
    case DType::kFloat16:
      return launch_typed<TH, __half>(a, blocks, out, bad, stream);
    default:
      return launch_typed<TH, float>(a, blocks, out, bad, stream);
  }
}

}  // namespace

cudaError_t launch_topk_value_scores(const ValueScoresArgs& a, float* out, unsigned long long* bad,
                                     cudaStream_t stream) {
  const int64_t tasks = a.batch * a.k;
  if (tasks == 0) return cudaSuccess;
  const int64_t blocks = (tasks + kWarps - 1) / kWarps;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const unsigned nb = static_cast<unsigned>(blocks);
  switch (a.hidden_dtype) {
    case DType::kBFloat16:
      return launch_weight<__nv_bfloat16>(a, nb, out, bad, stream);
    case DType::kFloat16:
      return launch_weight<__half>(a, nb, out, bad, stream);
    default:
      return launch_weight<float>(a, nb, out, bad, stream);
  }
}

}  // namespace cuda_impl
}  // namespace mogen
