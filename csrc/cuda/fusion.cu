// K1 on CUDA: multi-vocabulary log-ratio fusion. Torch-free (see docs/design.md section 4).
//
// Mirrors cpu/fusion.cpp step for step:
//   1. lse_partials: per (row, input, vocab chunk) one block computes the
//      running (max, sum of exp) of the scaled logits with 16-byte loads, reduced
//      across the block with cub.
//   2. fused_output / fused_topk / fused_argmax: per (row, vocab chunk) one block combines the
//      partials into one log-sum-exp per input (max over chunks first, then the
//      rescaled sum, as the CPU does), then gathers every guide's log-ratio and
//      writes the fused score, keeps the chunk's best k in shared memory, or
//      reduces the chunk to its best (value, id) with one cub block reduction.
// Small batches split the vocabulary across blocks so that B = 1 fills the GPU.
// exp is the CUDA library's expf where the CPU uses its own vectorised
// polynomial; both are within ~2.5e-7 relative, far inside the tests' tolerance.
#include <cfloat>
#include <climits>
#include <cstdint>

#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/fusion_launch.h"

namespace mogen {
namespace cuda_impl {
namespace {

constexpr int kThreads = 256;
constexpr int kSortItems = 8;                          // per thread: a 2048-slot top-k tile
constexpr int64_t kMinChunk = 8192;                    // as the CPU kernel
constexpr int kMaxInputs = 1 + 2 * kMaxGuides;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ const T* row_ptr(const LogitsView& x, int64_t b) {
  return static_cast<const T*>(x.data) + b * x.row_stride;
}

__device__ __forceinline__ float load_logit(const LogitsView& x, int64_t b, int64_t idx) {
  switch (x.dtype) {
    case DType::kBFloat16:
      return to_float(row_ptr<__nv_bfloat16>(x, b)[idx]);
    case DType::kFloat16:
      return to_float(row_ptr<__half>(x, b)[idx]);
    default:
      return row_ptr<float>(x, b)[idx];
  }
}

// Running (max, sum) of scaled logits: lse = m + log(s).
struct Lse {
  float m;
  float s;
};

__device__ __forceinline__ Lse lse_push(Lse acc, float pack_max, const float* xs, int n, float scale) {
  const float m_new = fmaxf(acc.m, pack_max * scale);  // scale > 0 keeps the argmax
  if (m_new == -INFINITY) return acc;
  float s = acc.m == -INFINITY ? 0.0f : acc.s * expf(acc.m - m_new);
  for (int i = 0; i < n; ++i) s += expf(xs[i] * scale - m_new);
  return Lse{m_new, s};
}

struct LseCombine {
  __device__ __forceinline__ Lse operator()(const Lse& a, const Lse& b) const {
    const float m = fmaxf(a.m, b.m);
    if (m == -INFINITY) return Lse{m, 0.0f};
    const float sa = a.m == -INFINITY ? 0.0f : a.s * expf(a.m - m);
    const float sb = b.m == -INFINITY ? 0.0f : b.s * expf(b.m - m);
    return Lse{m, sa + sb};
  }
};

// One thread's share of x[0, n): a scalar head up to 16-byte alignment, then
// 16-byte packs, then a scalar tail.
template <typename T>
__device__ Lse thread_lse(const T* x, int64_t n, float scale) {
  constexpr int kPack = 16 / sizeof(T);
  Lse acc{-INFINITY, 0.0f};
  const uintptr_t addr = reinterpret_cast<uintptr_t>(x);
  int64_t head = static_cast<int64_t>(((16 - addr % 16) % 16) / sizeof(T));
  if (addr % sizeof(T) != 0 || head > n) head = n;
  for (int64_t i = threadIdx.x; i < head; i += blockDim.x) {
    const float v = to_float(x[i]);
    acc = lse_push(acc, v, &v, 1, scale);
  }
  const int64_t packs = (n - head) / kPack;
  const uint4* vec = reinterpret_cast<const uint4*>(x + head);
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    const uint4 raw = vec[p];
    const T* elems = reinterpret_cast<const T*>(&raw);
    float xs[kPack];
    float pack_max = -INFINITY;
#pragma unroll
    for (int i = 0; i < kPack; ++i) {
      xs[i] = to_float(elems[i]);
      pack_max = fmaxf(pack_max, xs[i]);
    }
    acc = lse_push(acc, pack_max, xs, kPack, scale);
  }
  for (int64_t i = head + packs * kPack + threadIdx.x; i < n; i += blockDim.x) {
    const float v = to_float(x[i]);
    acc = lse_push(acc, v, &v, 1, scale);
  }
  return acc;
}

__device__ __forceinline__ bool input_active(const FusionArgs& a, int64_t b, int32_t j) {
  return j == 0 || a.coef(b, (j - 1) / 2) != 0.0f;
}

// grid (lse_chunks, B, num_inputs): partial (max, sum) of one chunk of one input.
__global__ void __launch_bounds__(kThreads) lse_partials(FusionArgs a, int64_t chunk, int64_t chunks, Lse* part) {
  using Reduce = cub::BlockReduce<Lse, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t c = blockIdx.x, b = blockIdx.y;
  const int32_t j = blockIdx.z;
  const LogitsView& x = a.input(j);
  const int64_t lo = c * chunk;
  Lse acc{-INFINITY, 0.0f};
  if (lo < x.vocab && input_active(a, b, j)) {  // uniform across the block
    const int64_t n = min(chunk, x.vocab - lo);
    const float scale = a.input_inv_temp(j);
    switch (x.dtype) {
      case DType::kBFloat16:
        acc = thread_lse(row_ptr<__nv_bfloat16>(x, b) + lo, n, scale);
        break;
      case DType::kFloat16:
        acc = thread_lse(row_ptr<__half>(x, b) + lo, n, scale);
        break;
      default:
        acc = thread_lse(row_ptr<float>(x, b) + lo, n, scale);
    }
  }
  const Lse total = Reduce(tmp).Reduce(acc, LseCombine());
  if (threadIdx.x == 0) part[(b * a.num_inputs() + j) * chunks + c] = total;
}

// Every input's log-sum-exp of row b into shared `lse`, from the chunk partials
// (the max over chunks first, then the rescaled sum, as the CPU combines them).
__device__ void row_lse(const FusionArgs& a, const Lse* part, int64_t chunks, int64_t b, float* lse) {
  const int32_t ni = a.num_inputs();
  for (int32_t j = threadIdx.x; j < ni; j += blockDim.x) {
    const Lse* p = part + (b * ni + j) * chunks;
    float m = -INFINITY;
    for (int64_t c = 0; c < chunks; ++c) m = fmaxf(m, p[c].m);
    float s = 0.0f;
    if (m != -INFINITY)
      for (int64_t c = 0; c < chunks; ++c)
        if (p[c].m != -INFINITY) s += p[c].s * expf(p[c].m - m);
    lse[j] = m + logf(s);
  }
  __syncthreads();
}

// The fused score of base id v on row b (same operation order as the CPU kernel).
__device__ __forceinline__ float fused_score(const FusionArgs& a, const float* lse, int64_t b, int64_t v) {
  float acc = load_logit(a.base, b, v) * a.base_inv_temp - lse[0];
  for (int32_t i = 0; i < a.num_guides; ++i) {
    const float c = a.coef(b, i);
    if (c == 0.0f) continue;
    const GuideView& g = a.guides[i];
    const float k = c * g.inv_temp;
    const float d = c * (lse[1 + 2 * i] - lse[2 + 2 * i]);
    const int32_t j = g.map == nullptr ? static_cast<int32_t>(v) : g.map[v];
    acc += j >= 0 ? k * (load_logit(g.expert, b, j) - load_logit(g.ref, b, j)) - d : c * a.unmapped;
  }
  return acc;
}

// grid (out_chunks, B): out[b, v] for v in the block's chunk.
__global__ void __launch_bounds__(kThreads)
    fused_output(FusionArgs a, int64_t chunk, const Lse* part, int64_t lse_chunks, float* out) {
  __shared__ float lse[kMaxInputs];
  const int64_t b = blockIdx.y;
  row_lse(a, part, lse_chunks, b, lse);
  const int64_t lo = blockIdx.x * chunk;
  const int64_t hi = min(lo + chunk, a.vocab);
  for (int64_t v = lo + threadIdx.x; v < hi; v += blockDim.x) out[b * a.vocab + v] = fused_score(a, lse, b, v);
}

// grid (out_chunks, B): the chunk's best k (k <= kMaxBlockTopk) kept in shared
// memory. Each 2048-slot tile holds the current best k followed by the next
// 2048 - k scores; one stable descending radix sort keeps the best k. Tiles
// with no score above the current k-th are skipped without sorting.
__global__ void __launch_bounds__(kThreads) fused_topk(FusionArgs a, int64_t chunk, const Lse* part,
                                                       int64_t lse_chunks, int64_t k, float* cand_values,
                                                       int64_t* cand_ids) {
  using Sort = cub::BlockRadixSort<float, kThreads, kSortItems, int32_t>;
  constexpr int64_t kTile = kThreads * kSortItems;
  __shared__ typename Sort::TempStorage tmp;
  __shared__ float lse[kMaxInputs];
  __shared__ float top_v[kMaxBlockTopk];
  __shared__ int32_t top_i[kMaxBlockTopk];
  // -NaN orders below -inf in the radix sort's float order: empty slots sink to the end.
  const float kEmpty = __int_as_float(0xffffffff);
  const int64_t b = blockIdx.y;
  row_lse(a, part, lse_chunks, b, lse);
  const int64_t lo = blockIdx.x * chunk;
  const int64_t hi = min(lo + chunk, a.vocab);
  for (int64_t s = threadIdx.x; s < k; s += blockDim.x) {
    top_v[s] = kEmpty;
    top_i[s] = -1;
  }
  __syncthreads();
  int64_t filled = 0;
  for (int64_t pos = lo; pos < hi; pos += kTile - k) {
    const int64_t fresh = min(kTile - k, hi - pos);
    const float thresh = top_v[k - 1];
    float keys[kSortItems];
    int32_t ids[kSortItems];
    int any = 0;
#pragma unroll
    for (int it = 0; it < kSortItems; ++it) {
      const int64_t slot = threadIdx.x * kSortItems + it;
      if (slot < k) {
        keys[it] = top_v[slot];
        ids[it] = top_i[slot];
      } else if (slot - k < fresh) {
        const int64_t v = pos + slot - k;
        const float score = fused_score(a, lse, b, v);
        // NaN ranks above everything (as torch.topk); ties go to the lower id, already kept.
        const bool wins = filled < k || !(score <= thresh);
        keys[it] = wins ? score : kEmpty;
        ids[it] = wins ? static_cast<int32_t>(v) : -1;
        any |= wins;
      } else {
        keys[it] = kEmpty;
        ids[it] = -1;
      }
    }
    filled = min(k, filled + fresh);
    if (!__syncthreads_or(any)) continue;
    Sort(tmp).SortDescending(keys, ids);
#pragma unroll
    for (int it = 0; it < kSortItems; ++it) {
      const int64_t slot = threadIdx.x * kSortItems + it;
      if (slot < k) {
        top_v[slot] = keys[it];
        top_i[slot] = ids[it];
      }
    }
    __syncthreads();
  }
  const int64_t base = (b * gridDim.x + blockIdx.x) * k;
  for (int64_t s = threadIdx.x; s < k; s += blockDim.x) {
    cand_values[base + s] = top_v[s];
    cand_ids[base + s] = top_i[s];
  }
}

// The better of two (score, id) pairs, as `better` ranks them (NaN first, ties to the lower id).
struct BetterOf {
  __device__ __forceinline__ Scored operator()(const Scored& x, const Scored& y) const {
    return better(y, x) ? y : x;
  }
};

// grid (out_chunks, B): the chunk's best (value, id). Each thread walks its
// strided ids in ascending order keeping its best, then one block reduction;
// no shared tile and no sort, so greedy decoding pays one pass over the scores.
__global__ void __launch_bounds__(kThreads) fused_argmax(FusionArgs a, int64_t chunk, const Lse* part,
                                                         int64_t lse_chunks, float* cand_values, int64_t* cand_ids) {
  using Reduce = cub::BlockReduce<Scored, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float lse[kMaxInputs];
  const int64_t b = blockIdx.y;
  row_lse(a, part, lse_chunks, b, lse);
  const int64_t lo = blockIdx.x * chunk;
  const int64_t hi = min(lo + chunk, a.vocab);
  Scored best{-INFINITY, LLONG_MAX};  // loses to any real id, -inf scores included
  for (int64_t v = lo + threadIdx.x; v < hi; v += blockDim.x) {
    const Scored s{fused_score(a, lse, b, v), v};
    if (better(s, best)) best = s;
  }
  best = Reduce(tmp).Reduce(best, BetterOf());
  if (threadIdx.x == 0) {
    cand_values[b * gridDim.x + blockIdx.x] = best.v;
    cand_ids[b * gridDim.x + blockIdx.x] = best.id;
  }
}

int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }

}  // namespace

cudaError_t plan_fusion(const FusionArgs& a, int device, FusionPlan* plan) {
  static_assert(sizeof(Lse) == 2 * sizeof(float), "partials are stored as float pairs");
  int sms = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;  // reported here, not later as a launch failure
  if (sms <= 0) sms = 108;
  int64_t max_vocab = a.vocab;
  for (int32_t j = 0; j < a.num_inputs(); ++j) max_vocab = max_vocab > a.input(j).vocab ? max_vocab : a.input(j).vocab;
  // Aim for about four blocks per SM across all rows, never chunks under kMinChunk.
  const int64_t batch = a.batch > 0 ? a.batch : 1;
  const int64_t pieces = ceil_div(4 * static_cast<int64_t>(sms), batch);
  int64_t chunk = ceil_div(max_vocab, pieces);
  chunk = chunk < kMinChunk ? kMinChunk : ceil_div(chunk, 16) * 16;
  FusionPlan p;
  p.chunk = chunk;
  p.lse_chunks = ceil_div(max_vocab, chunk);
  p.out_chunks = ceil_div(a.vocab, chunk);
  p.scratch_floats = 2 * a.batch * a.num_inputs() * p.lse_chunks;
  *plan = p;
  return cudaSuccess;
}

static cudaError_t launch_lse(const FusionArgs& a, const FusionPlan& p, float* scratch, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.lse_chunks), static_cast<unsigned>(a.batch),
                  static_cast<unsigned>(a.num_inputs()));
  lse_partials<<<grid, kThreads, 0, stream>>>(a, p.chunk, p.lse_chunks, reinterpret_cast<Lse*>(scratch));
  return cudaGetLastError();
}

cudaError_t launch_fused_log_ratio(const FusionArgs& a, const FusionPlan& p, float* scratch, float* out,
                                   cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  cudaError_t err = launch_lse(a, p, scratch, stream);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(p.out_chunks), static_cast<unsigned>(a.batch));
  fused_output<<<grid, kThreads, 0, stream>>>(a, p.chunk, reinterpret_cast<const Lse*>(scratch), p.lse_chunks, out);
  return cudaGetLastError();
}

cudaError_t launch_fused_log_ratio_topk(const FusionArgs& a, const FusionPlan& p, float* scratch, int64_t k,
                                        float* cand_values, int64_t* cand_ids, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  if (k < 1 || k > kMaxBlockTopk) return cudaErrorInvalidValue;
  cudaError_t err = launch_lse(a, p, scratch, stream);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(p.out_chunks), static_cast<unsigned>(a.batch));
  fused_topk<<<grid, kThreads, 0, stream>>>(a, p.chunk, reinterpret_cast<const Lse*>(scratch), p.lse_chunks, k,
                                             cand_values, cand_ids);
  return cudaGetLastError();
}

cudaError_t launch_fused_log_ratio_argmax(const FusionArgs& a, const FusionPlan& p, float* scratch,
                                          float* cand_values, int64_t* cand_ids, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  cudaError_t err = launch_lse(a, p, scratch, stream);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(p.out_chunks), static_cast<unsigned>(a.batch));
  fused_argmax<<<grid, kThreads, 0, stream>>>(a, p.chunk, reinterpret_cast<const Lse*>(scratch), p.lse_chunks,
                                               cand_values, cand_ids);
  return cudaGetLastError();
}

}  // namespace cuda_impl
}  // namespace mogen
