// K3 on CPU: streaming merge (docs/design.md sections 1 and 3).
//
// out[k][j] = cast(sum_i C[k, i] * x_i[j]) for j in [0, numel), x_i spans of
// safetensors files of mixed dtypes (fp32 / bf16 / fp16). Blocks of kBlock
// elements run in parallel (at::parallel_for): each thread preads the block of
// every source into its own buffer (L2-sized, reused), then, within the block,
// tiles of kTile elements are upcast once per input and accumulated into K fp32
// rows that stay in L1, and cast on store either straight into memory (a live
// parameter) or into a per-thread staging buffer that the same thread pwrites to
// its offset in the output shard. Nothing is mapped, so resident memory is a few
// blocks per thread whatever the size of the model.
#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstring>
#include <exception>
#include <mutex>
#include <vector>

#include <ATen/Parallel.h>

#include "common/checks.h"
#include "common/merge_spans.h"
#include "common/multiversion.h"
#include "ops.h"

#if defined(__FLT16_MAX__)
#define MOGEN_HAVE_FLOAT16 1
#else
#include <c10/util/Half.h>
#endif

namespace mogen {
namespace cpu {
namespace {

constexpr int64_t kTile = 2048;         // elements per L1-resident tile
constexpr int64_t kBlock = int64_t{1} << 16;  // elements per parallel task (and per pwrite)

// ---- conversions (exact upcasts; round-to-nearest-even downcasts, NaN kept NaN)

MOGEN_MULTIVERSION
void bf16_to_f32(const uint16_t* x, int64_t n, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t bits = static_cast<uint32_t>(x[j]) << 16;
    std::memcpy(out + j, &bits, 4);
  }
}

MOGEN_MULTIVERSION
void f16_to_f32(const uint16_t* x, int64_t n, float* out) {
#ifdef MOGEN_HAVE_FLOAT16
  for (int64_t j = 0; j < n; ++j) {
    _Float16 h;
    std::memcpy(&h, x + j, 2);
    out[j] = static_cast<float>(h);
  }
#else
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(c10::Half(x[j], c10::Half::from_bits()));
#endif
}

MOGEN_MULTIVERSION
void f32_to_bf16(const float* x, int64_t n, uint16_t* out) {
  for (int64_t j = 0; j < n; ++j) {
    uint32_t bits;
    std::memcpy(&bits, x + j, 4);
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
    out[j] = static_cast<uint16_t>(nan ? ((bits >> 16) | 0x40u) : rounded);
  }
}

MOGEN_MULTIVERSION
void f32_to_f16(const float* x, int64_t n, uint16_t* out) {
#ifdef MOGEN_HAVE_FLOAT16
  for (int64_t j = 0; j < n; ++j) {
    const _Float16 h = static_cast<_Float16>(x[j]);
    std::memcpy(out + j, &h, 2);
  }
#else
  for (int64_t j = 0; j < n; ++j) out[j] = c10::Half(x[j]).x;
#endif
}

// The sum sum_i c_i x_i is kept as an unevaluated fp32 pair hi + lo: each
// product's rounding error (an FMA gives it exactly) and each addition's (TwoSum)
// go into lo. Still fp32 arithmetic, but the result is within about one fp32 ulp
// of the exact sum even when the terms cancel, so a bf16 / fp16 output is the
// exact result rounded, at most 1 ulp off. fp-contract=off: a compiler-fused
// c * x + hi would break the error-free transformations.
#define MOGEN_EXACT_FP __attribute__((optimize("fp-contract=off")))

// The coefficient is a pair too: c + c_lo (the part of the double the float drops).

// hi + lo = (c + c_lo) * x[j]
MOGEN_MULTIVERSION MOGEN_EXACT_FP
void product_into(const float* x, int64_t n, float c, float c_lo, float* hi, float* lo) {
  for (int64_t j = 0; j < n; ++j) {
    const float p = c * x[j];
    hi[j] = p;
    lo[j] = std::fma(c, x[j], -p) + c_lo * x[j];
  }
}

// hi + lo += (c + c_lo) * x[j]
MOGEN_MULTIVERSION MOGEN_EXACT_FP
void product_add(const float* x, int64_t n, float c, float c_lo, float* hi, float* lo) {
  for (int64_t j = 0; j < n; ++j) {
    const float p = c * x[j];
    const float p_err = std::fma(c, x[j], -p) + c_lo * x[j];
    const float s = hi[j] + p;
    const float b = s - hi[j];
    const float s_err = (hi[j] - (s - b)) + (p - b);
    hi[j] = s;
    lo[j] += s_err + p_err;
  }
}

// The same sum for up to kFusedSources sources at once: hi and lo stay in
// registers across the sources and only hi + lo is stored, where the passes
// above load and store both per source and output (K outputs x N sources
// passes over the tile). The operations, and their order, are those of
// product_into then product_add, so the result is bitwise the same.
constexpr int32_t kFusedSources = 4;
#define MOGEN_FUSED_SUM(NS)                                                                            \
  MOGEN_MULTIVERSION MOGEN_EXACT_FP void fused_sum_##NS(const float* const* x, const float* c,          \
                                                        const float* c_lo, float* __restrict out,        \
                                                        int64_t n) {                                     \
    for (int64_t j = 0; j < n; ++j) {                                                                    \
      const float x0 = x[0][j], p0 = c[0] * x0;                                                          \
      float hi = p0, lo = std::fma(c[0], x0, -p0) + c_lo[0] * x0;                                        \
      for (int32_t i = 1; i < NS; ++i) {                                                                 \
        const float xi = x[i][j], p = c[i] * xi;                                                         \
        const float p_err = std::fma(c[i], xi, -p) + c_lo[i] * xi;                                       \
        const float s = hi + p;                                                                          \
        const float b = s - hi;                                                                          \
        const float s_err = (hi - (s - b)) + (p - b);                                                    \
        hi = s;                                                                                          \
        lo += s_err + p_err;                                                                             \
      }                                                                                                  \
      out[j] = hi + lo;                                                                                  \
    }                                                                                                    \
  }
MOGEN_FUSED_SUM(1)
MOGEN_FUSED_SUM(2)
MOGEN_FUSED_SUM(3)
MOGEN_FUSED_SUM(4)
#undef MOGEN_FUSED_SUM

// out = sum_i (c[i] + c_lo[i]) * x[i] over n elements, for 1 <= ns <= kFusedSources.
void fused_sum(int32_t ns, const float* const* x, const float* c, const float* c_lo, float* out, int64_t n) {
  switch (ns) {
    case 1: return fused_sum_1(x, c, c_lo, out, n);
    case 2: return fused_sum_2(x, c, c_lo, out, n);
    case 3: return fused_sum_3(x, c, c_lo, out, n);
    default: return fused_sum_4(x, c, c_lo, out, n);
  }
}

// hi[j] = hi[j] + lo[j]: the pair rounded to one fp32.
MOGEN_MULTIVERSION MOGEN_EXACT_FP
void collapse(float* hi, const float* lo, int64_t n) {
  for (int64_t j = 0; j < n; ++j) hi[j] += lo[j];
}

// True if any of x[0, n) is inf or NaN (all exponent bits set): one vectorisable pass.
MOGEN_MULTIVERSION
bool any_non_finite(const float* x, int64_t n) {
  uint32_t bad = 0;
  for (int64_t j = 0; j < n; ++j) {
    uint32_t bits;
    std::memcpy(&bits, x + j, 4);
    bad |= static_cast<uint32_t>((bits & 0x7F800000u) == 0x7F800000u);
  }
  return bad != 0;
}

// Element `j` of `x` (dtype `dt`) as fp32 (an exact upcast).
float load_f32(const uint8_t* x, DType dt, int64_t j) {
  const uint8_t* p = x + j * dtype_size(dt);
  float v = 0.0f;
  switch (dt) {
    case DType::kFloat32:
      std::memcpy(&v, p, 4);
      break;
    case DType::kBFloat16:
      bf16_to_f32(reinterpret_cast<const uint16_t*>(p), 1, &v);
      break;
    case DType::kFloat16:
      f16_to_f32(reinterpret_cast<const uint16_t*>(p), 1, &v);
      break;
  }
  return v;
}

// Where the compensated sum is inf or NaN (an input is, or an fp32 product or
// partial sum overflowed), its error terms hold inf - inf and say nothing; those
// elements are recomputed as the plain fp64 sum of c_i x_i, in input order, over
// the nonzero coefficients (an input with coefficient 0 is not part of the
// output, as when the engine does not read it at all). So non-finite results are
// exactly fp64's: same-sign infinities stay infinite, NaN only where fp64 has it.
// cuda/merge.cu does the same per element.
MOGEN_EXACT_FP
void redo_non_finite(const uint8_t* const* x, const MergeSource* srcs, int32_t ns, const double* coef_row,
                     int64_t first, float* hi, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    if (std::isfinite(hi[j])) continue;
    double sum = 0.0;
    for (int32_t i = 0; i < ns; ++i)
      if (coef_row[i] != 0.0) sum += coef_row[i] * static_cast<double>(load_f32(x[i], srcs[i].dtype, first + j));
    hi[j] = static_cast<float>(sum);
  }
}

// Upcasts x[0, n) of dtype `dt` to fp32: a pointer to fp32 data (the input
// itself when it already is fp32, else `buf`).
const float* as_f32(const uint8_t* x, DType dt, int64_t n, float* buf) {
  switch (dt) {
    case DType::kFloat32:
      return reinterpret_cast<const float*>(x);  // 4-byte aligned: a 64-byte slot, or checked by merge_spans
    case DType::kBFloat16:
      bf16_to_f32(reinterpret_cast<const uint16_t*>(x), n, buf);
      return buf;
    case DType::kFloat16:
      f16_to_f32(reinterpret_cast<const uint16_t*>(x), n, buf);
      return buf;
  }
  return buf;
}

void store(const float* acc, int64_t n, DType dt, uint8_t* out) {
  switch (dt) {
    case DType::kFloat32:
      std::memcpy(out, acc, static_cast<size_t>(n) * 4);
      break;
    case DType::kBFloat16:
      f32_to_bf16(acc, n, reinterpret_cast<uint16_t*>(out));
      break;
    case DType::kFloat16:
      f32_to_f16(acc, n, reinterpret_cast<uint16_t*>(out));
      break;
  }
}

// [K, N] coefficients: each as an fp32 pair (hi + lo) for the compensated sum, and the double itself.
struct Coefs {
  const float* hi;
  const float* lo;
  const double* f64;
};

// A thread's buffers, reused block after block.
struct Scratch {
  std::vector<float> acc;           // sum tiles and upcast tiles (see merge_block)
  std::vector<uint8_t> in;          // the block of every file-backed source
  std::vector<uint8_t> stage;       // the block of every file-backed output
  std::vector<const uint8_t*> src;  // first element of the block, per source
};

// Where block [lo, lo + n) of each source is: read into `sc.in` (64-byte aligned
// slots) from its file, or in place for a source in memory.
void load_block(const MergeSource* srcs, int32_t ns, int64_t lo, int64_t n, Scratch& sc) {
  const auto slot = [n](const MergeSource& s) { return (n * dtype_size(s.dtype) + 63) / 64 * 64; };
  int64_t bytes = 0;
  for (int32_t i = 0; i < ns; ++i)
    if (srcs[i].reader != nullptr) bytes += slot(srcs[i]);
  if (static_cast<int64_t>(sc.in.size()) < bytes + 64) sc.in.resize(static_cast<size_t>(bytes + 64));
  uint8_t* p = sc.in.data() + (64 - reinterpret_cast<uintptr_t>(sc.in.data()) % 64) % 64;
  sc.src.resize(static_cast<size_t>(ns));
  for (int32_t i = 0; i < ns; ++i) {
    const MergeSource& s = srcs[i];
    if (s.reader == nullptr) {
      sc.src[i] = s.data + lo * dtype_size(s.dtype);
      continue;
    }
    read_source(s, lo, n, p);
    sc.src[i] = p;
    p += slot(s);
  }
}

// One block [lo, lo + n) of every output.
void merge_block(const MergeSource* srcs, int32_t ns, const Coefs& coef, const MergeSink* sinks, int32_t nk,
                 int64_t lo, int64_t n, Scratch& sc) {
  load_block(srcs, ns, lo, n, sc);
  // [nk] sum (hi) tiles; then [nk] lo tiles and one upcast tile, or (fused) one upcast tile per source.
  sc.acc.resize(static_cast<size_t>((nk + std::max(nk + 1, std::min(ns, kFusedSources))) * kTile));
  float* const acc = sc.acc.data();
  float* const lo_acc = acc + nk * kTile;
  float* const xbuf = acc + 2 * nk * kTile;
  // Byte offset of each output's staging area (only sinks written through a file use it).
  int64_t stage_bytes = 0;
  for (int32_t k = 0; k < nk; ++k)
    if (sinks[k].writer != nullptr) stage_bytes += n * dtype_size(sinks[k].dtype);
  if (static_cast<int64_t>(sc.stage.size()) < stage_bytes) sc.stage.resize(static_cast<size_t>(stage_bytes));
  for (int64_t t = 0; t < n; t += kTile) {
    const int64_t len = std::min(kTile, n - t);
    if (ns <= kFusedSources) {
      // Every source's tile upcast once (fp32 sources are read in place), then one pass per output.
      const float* x[kFusedSources];
      for (int32_t i = 0; i < ns; ++i) {
        const DType dt = srcs[i].dtype;
        x[i] = as_f32(sc.src[i] + t * dtype_size(dt), dt, len, lo_acc + i * kTile);
      }
      for (int32_t k = 0; k < nk; ++k) fused_sum(ns, x, coef.hi + k * ns, coef.lo + k * ns, acc + k * kTile, len);
    } else {
      for (int32_t i = 0; i < ns; ++i) {
        const DType dt = srcs[i].dtype;
        const float* x = as_f32(sc.src[i] + t * dtype_size(dt), dt, len, xbuf);
        for (int32_t k = 0; k < nk; ++k) {
          const float c = coef.hi[k * ns + i], c_lo = coef.lo[k * ns + i];
          if (i == 0) product_into(x, len, c, c_lo, acc + k * kTile, lo_acc + k * kTile);
          else product_add(x, len, c, c_lo, acc + k * kTile, lo_acc + k * kTile);
        }
      }
      for (int32_t k = 0; k < nk; ++k) collapse(acc + k * kTile, lo_acc + k * kTile, len);
    }
    for (int32_t k = 0; k < nk; ++k) {
      float* const hi = acc + k * kTile;
      if (any_non_finite(hi, len)) redo_non_finite(sc.src.data(), srcs, ns, coef.f64 + k * ns, t, hi, len);
    }
    int64_t soff = 0;
    for (int32_t k = 0; k < nk; ++k) {
      const MergeSink& d = sinks[k];
      const int64_t isz = dtype_size(d.dtype);
      uint8_t* out = d.writer != nullptr ? sc.stage.data() + soff + t * isz : d.ptr + (lo + t) * isz;
      store(acc + k * kTile, len, d.dtype, out);
      if (d.writer != nullptr) soff += n * isz;
    }
  }
  int64_t soff = 0;
  for (int32_t k = 0; k < nk; ++k) {
    const MergeSink& d = sinks[k];
    if (d.writer == nullptr) continue;
    const int64_t isz = dtype_size(d.dtype);
    d.writer->write(d.offset + lo * isz, sc.stage.data() + soff, n * isz);
    soff += n * isz;
  }
}

}  // namespace

void merge_spans(const std::vector<MergeSource>& srcs, const std::vector<double>& coef,
                 const std::vector<MergeSink>& sinks, int64_t numel) {
  const int32_t ns = static_cast<int32_t>(srcs.size()), nk = static_cast<int32_t>(sinks.size());
  MOGEN_CHECK_ARG(ns >= 1, "merge needs at least one source");
  MOGEN_CHECK_ARG(nk >= 1, "merge needs at least one output");
  MOGEN_CHECK_ARG(static_cast<int64_t>(coef.size()) == int64_t{ns} * nk, "coefficients must be [K, N] = [", nk,
                  ", ", ns, "], got ", coef.size(), " values");
  MOGEN_CHECK_ARG(numel >= 0, "numel must be >= 0, got ", numel);
  for (int32_t i = 0; i < ns; ++i)
    MOGEN_CHECK_ARG(srcs[i].reader != nullptr || srcs[i].dtype != DType::kFloat32 ||
                        reinterpret_cast<uintptr_t>(srcs[i].data) % 4 == 0,
                    "source ", i, ": fp32 data in memory is not 4-byte aligned");
  if (numel == 0) return;
  std::vector<float> c_hi(coef.size()), c_lo(coef.size());
  for (size_t q = 0; q < coef.size(); ++q) {
    MOGEN_CHECK_ARG(std::isfinite(coef[q]), "coefficients must be finite, got ", coef[q]);
    c_hi[q] = static_cast<float>(coef[q]);
    c_lo[q] = static_cast<float>(coef[q] - static_cast<double>(c_hi[q]));
  }
  const int64_t blocks = (numel + kBlock - 1) / kBlock;
  // Exceptions (a failed write) must not cross the OpenMP region: the first is kept and rethrown.
  std::exception_ptr error;
  std::mutex error_mutex;
  std::atomic<bool> failed{false};
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    Scratch scratch;
    for (int64_t b = b0; b < b1 && !failed.load(std::memory_order_relaxed); ++b) {
      const int64_t lo = b * kBlock, n = std::min(kBlock, numel - lo);
      try {
        merge_block(srcs.data(), ns, Coefs{c_hi.data(), c_lo.data(), coef.data()}, sinks.data(), nk, lo, n,
                    scratch);
      } catch (...) {
        const std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        failed.store(true);
        return;
      }
    }
  });
  if (error) std::rethrow_exception(error);
}

}  // namespace cpu
}  // namespace mogen
