// K2 on CPU: top-k value scores (docs/design.md sections 1 and 3).
//
//   out[b, c] = sum_h hidden[b, h] * weight[ids[b, c], h] + bias[ids[b, c]]
//
// k dot products of length H per row instead of the V of a full value head.
// Every id is range-checked before any row is read. Tasks are (row, group of up
// to four candidates); a group streams its four weight rows side by side
// against one load of the hidden state, so four independent fp32 accumulators
// (and four memory streams) are in flight per core. Each candidate's sum has
// the same order whether it is computed alone or in a group, so results do not
// depend on grouping or thread count.
#include <algorithm>
#include <cstring>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/multiversion.h"
#include "common/value_inputs.h"
#include "ops.h"

namespace mogen {
namespace cpu {
namespace {

// GCC vector extensions as in cpu/fusion.cpp: 16 fp32 lanes, lowered to one
// zmm, two ymm or four xmm registers by each target clone.
using vf = float __attribute__((vector_size(64)));
using vu16 = uint16_t __attribute__((vector_size(32)));
using vu32 = uint32_t __attribute__((vector_size(64)));
constexpr int kW = 16;
constexpr int kGroup = 4;  // candidates per task

#define MOGEN_INLINE inline __attribute__((always_inline))

// bf16 is the top half of an fp32: widening is a shift. fp16 goes through
// _Float16 where the compiler has it (vcvtph2ps in the AVX2 / AVX-512 clones),
// else through c10::Half one element at a time.
struct Bf16Bits {
  uint16_t bits;
};
#if defined(__FLT16_MAX__)
#define MOGEN_HAVE_FLOAT16 1
using F16 = _Float16;
using vh = _Float16 __attribute__((vector_size(32)));
#else
using F16 = c10::Half;
#endif

MOGEN_INLINE vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
MOGEN_INLINE vf load(const Bf16Bits* p) {
  vu16 h;
  std::memcpy(&h, p, sizeof(h));
  const vu32 w = __builtin_convertvector(h, vu32) << 16;
  vf v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}
MOGEN_INLINE vf load(const F16* p) {
#ifdef MOGEN_HAVE_FLOAT16
  vh h;
  std::memcpy(&h, p, sizeof(h));
  return __builtin_convertvector(h, vf);
#else
  vf v;
  for (int l = 0; l < kW; ++l) v[l] = static_cast<float>(p[l]);
  return v;
#endif
}

MOGEN_INLINE float to_float(float x) { return x; }
MOGEN_INLINE float to_float(Bf16Bits x) {
  const uint32_t w = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &w, sizeof(f));
  return f;
}
MOGEN_INLINE float to_float(F16 x) { return static_cast<float>(x); }

MOGEN_INLINE float hsum(vf v) {
  float s = 0.0f;
  for (int l = 0; l < kW; ++l) s += v[l];
  return s;
}

// out[j] = sum_i h[i] * w[j][i], j < N: lane l of row j's accumulator sums
// elements i = l mod 16 of the full 16-blocks, the lanes are then added in
// order, then the tail elements in order. The same order for every N.
template <int N, typename T>
MOGEN_INLINE void dot_rows(const float* h, const T* const* w, int64_t H, float* out) {
  vf acc[N];
  for (int j = 0; j < N; ++j) acc[j] = vf{};
  int64_t i = 0;
  for (; i + kW <= H; i += kW) {
    const vf hv = load(h + i);
    for (int j = 0; j < N; ++j) acc[j] += hv * load(w[j] + i);
  }
  for (int j = 0; j < N; ++j) {
    float s = hsum(acc[j]);
    for (int64_t t = i; t < H; ++t) s += h[t] * to_float(w[j][t]);
    out[j] = s;
  }
}

// n <= kGroup rows against one fp32 hidden state.
template <typename T>
MOGEN_INLINE void dot_group(const float* h, const T* const* w, int n, int64_t H, float* out) {
  switch (n) {
    case 4:
      dot_rows<4>(h, w, H, out);
      break;
    case 3:
      dot_rows<3>(h, w, H, out);
      break;
    case 2:
      dot_rows<2>(h, w, H, out);
      break;
    default:
      dot_rows<1>(h, w, H, out);
  }
}

MOGEN_MULTIVERSION
void dot_group_f32(const float* h, const float* const* w, int n, int64_t H, float* out) {
  dot_group(h, w, n, H, out);
}
MOGEN_MULTIVERSION
void dot_group_bf16(const float* h, const Bf16Bits* const* w, int n, int64_t H, float* out) {
  dot_group(h, w, n, H, out);
}
MOGEN_MULTIVERSION
void dot_group_f16(const float* h, const F16* const* w, int n, int64_t H, float* out) {
  dot_group(h, w, n, H, out);
}

// The storage type each weight dtype is read as, and its multiversioned kernel.
void dot_group_any(DType dt, const float* h, const void* const* w, int n, int64_t H, float* out) {
  switch (dt) {
    case DType::kFloat32:
      dot_group_f32(h, reinterpret_cast<const float* const*>(w), n, H, out);
      break;
    case DType::kBFloat16:
      dot_group_bf16(h, reinterpret_cast<const Bf16Bits* const*>(w), n, H, out);
      break;
    case DType::kFloat16:
      dot_group_f16(h, reinterpret_cast<const F16* const*>(w), n, H, out);
      break;
  }
}

float read_float(DType dt, const void* p, int64_t idx) {
  float v = 0.0f;
  dispatch_logits(dt, [&](auto tag) {
    using T = decltype(tag);
    v = static_cast<float>(static_cast<const T*>(p)[idx]);
  });
  return v;
}

// Raises naming `ids` (before any weight row is read) unless every id is in [0, V).
void check_ids(const ValueScoresArgs& a) {
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t c = 0; c < a.k; ++c) {
      const int64_t id = a.id(b, c);
      MOGEN_CHECK_ARG(id >= 0 && id < a.vocab, "ids[", b, ", ", c, "] = ", id,
                      " is out of range for a value head with V = ", a.vocab, " rows; every id must be in [0, V)");
    }
}

}  // namespace

at::Tensor topk_value_scores(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& ids,
                             const std::optional<at::Tensor>& bias) {
  MOGEN_CHECK_ARG(hidden.device().is_cpu(), "the CPU kernel got hidden on ", hidden.device());
  const ValueScoresArgs a = make_value_args(hidden, weight, ids, bias);
  at::Tensor out = at::empty({a.batch, a.k}, hidden.options().dtype(at::kFloat));
  if (a.batch == 0 || a.k == 0) return out;
  check_ids(a);
  float* o = out.data_ptr<float>();
  const int64_t H = a.hidden_size;
  const int64_t wsize = a.weight_dtype == DType::kFloat32 ? 4 : 2;

  // The hidden states in fp32, once per row (B x H is small next to the k rows read per row).
  // The scratch is reused across calls of the calling thread, as in cpu/fusion.cpp.
  thread_local std::vector<float> scratch;
  const float* h32 = static_cast<const float*>(a.hidden);
  int64_t h_stride = a.hidden_row_stride;
  if (a.hidden_dtype != DType::kFloat32) {
    if (static_cast<int64_t>(scratch.size()) < a.batch * H) scratch.resize(static_cast<size_t>(a.batch * H));
    float* dst = scratch.data();
    dispatch_logits(a.hidden_dtype, [&](auto tag) {
      using T = decltype(tag);
      const T* src = static_cast<const T*>(a.hidden);
      for (int64_t b = 0; b < a.batch; ++b)
        for (int64_t i = 0; i < H; ++i) dst[b * H + i] = static_cast<float>(src[b * a.hidden_row_stride + i]);
    });
    h32 = dst;
    h_stride = H;
  }

  const int64_t groups = (a.k + kGroup - 1) / kGroup;
  // At least ~64 KB of weight rows per thread chunk: below that a fork costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, kGroup * H * wsize));
  at::parallel_for(0, a.batch * groups, grain, [&](int64_t begin, int64_t end) {
    const void* rows[kGroup];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / groups, c0 = (t % groups) * kGroup;
      const int n = static_cast<int>(std::min<int64_t>(kGroup, a.k - c0));
      for (int j = 0; j < n; ++j)
        rows[j] = static_cast<const char*>(a.weight) + a.id(b, c0 + j) * a.weight_row_stride * wsize;
      float* dst = o + b * a.k + c0;
      dot_group_any(a.weight_dtype, h32 + b * h_stride, rows, n, H, dst);
      if (a.bias != nullptr)
        for (int j = 0; j < n; ++j) dst[j] += read_float(a.bias_dtype, a.bias, a.id(b, c0 + j) * a.bias_stride);
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace mogen
