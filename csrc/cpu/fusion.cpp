// K1 on CPU: multi-vocabulary log-ratio fusion (docs/design.md sections 1 and 3).
//
// Phase 1, tasks of (row, input, vocab chunk): an online (max, sum of exp) pass
//   per input (base, each expert, each reference); the chunk partials are then
//   combined into one log-sum-exp per (row, input). Inputs are only read. A
//   guide with a vocabulary map also gets its fp32 difference D = e - r
//   written out, so phase 2 gathers once per base token from one L2-sized row
//   instead of twice from two.
// Phase 2, tasks of (row, vocab chunk): the fused score of every base token,
//   or for top-k the chunk's best k, so the full row is never materialised.
// Rows alone fill the threads when B is large; otherwise the vocabulary is
// split as well so that B = 1 still uses every core.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/fusion_inputs.h"
#include "common/multiversion.h"
#include "ops.h"

namespace mogen {
namespace cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kTile = 2048;        // elements per L1-resident tile
constexpr int64_t kMinChunk = 8192;    // smallest vocab chunk worth a task of its own

// GCC vector extensions: 16 fp32 lanes, lowered to one zmm, two ymm or four
// xmm registers by each target clone. Plain loops over floats do not
// vectorise here: max reductions and the clamp in exp need -ffast-math, which
// would also break the -inf / NaN handling this kernel relies on.
using vf = float __attribute__((vector_size(64)));
using vi = int32_t __attribute__((vector_size(64)));
constexpr int kW = 16;

#define MOGEN_INLINE inline __attribute__((always_inline))

MOGEN_INLINE vf splat(float x) { return vf{} + x; }
MOGEN_INLINE vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
// Lane-wise max; a NaN in `x` never wins (as std::max(acc, x) with acc first).
MOGEN_INLINE vf vmax(vf acc, vf x) { return x > acc ? x : acc; }
MOGEN_INLINE float hmax(vf v) {
  float m = v[0];
  for (int l = 1; l < kW; ++l) m = std::max(m, v[l]);
  return m;
}
MOGEN_INLINE float hsum(vf v) {
  float s = 0.0f;
  for (int l = 0; l < kW; ++l) s += v[l];
  return s;
}

// exp(x) for x <= 0 (every caller passes x - max), relative error ~2.5e-7,
// branch-free so that it runs 16 lanes at a time: x = n ln2 + r with n the
// nearest integer (one FMA), exp(r) = 1 + r + r^2 P(r) with P a cubic fitted
// for least maximum relative error on [-ln2/2, ln2/2], and 2^n built in the
// exponent bits. Inputs below -87 flush to exp(-87) (~1.6e-38), far below what
// a log-sum-exp can resolve; NaN stays NaN.
MOGEN_INLINE vf vexp(vf x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  const vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const vf r = x - n * 0.693147180559945f;
  vf p = splat(8.3125513047e-3f);
  p = p * r + 4.1890107095e-2f;
  p = p * r + 1.6667114198e-1f;
  p = p * r + 4.9999231100e-1f;
  const vf y = p * (r * r) + r + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}
MOGEN_INLINE float exp_approx(float x) { return vexp(splat(x))[0]; }

// Running (max, sum) of one input's scaled logits: lse = m + log(s).
struct Lse {
  float m = kNegInf;
  float s = 0.0f;
};

// Folds x[0, n) * scale into `acc`, a tile at a time: the tile max first, then
// the sum of exp against the new running max (one rescale per tile, not per element).
MOGEN_MULTIVERSION
void lse_update_f32(const float* x, int64_t n, float scale, Lse* acc) {
  float m = acc->m;
  float s = acc->s;
  for (int64_t t = 0; t < n; t += kTile) {
    const float* p = x + t;
    const int64_t len = std::min(kTile, n - t);
    vf mx = splat(kNegInf);
    int64_t i = 0;
    for (; i + kW <= len; i += kW) mx = vmax(mx, load(p + i));
    float tile_max = hmax(mx);
    for (; i < len; ++i) tile_max = std::max(tile_max, p[i]);
    const float m_new = std::max(m, tile_max * scale);  // scale > 0 keeps the argmax
    if (m_new == kNegInf) continue;                      // nothing but -inf so far
    const vf vs = splat(scale), vm = splat(m_new);
    vf sum = splat(0.0f);
    i = 0;
    for (; i + kW <= len; i += kW) sum += vexp(load(p + i) * vs - vm);
    float tile_sum = hsum(sum);
    for (; i < len; ++i) tile_sum += exp_approx(p[i] * scale - m_new);
    s = (m == kNegInf ? 0.0f : s * std::exp(m - m_new)) + tile_sum;
    m = m_new;
  }
  acc->m = m;
  acc->s = s;
}

// out[v] = x[v] * scale - lse
MOGEN_MULTIVERSION
void base_term_f32(const float* x, int64_t n, float scale, float lse, float* out) {
  for (int64_t v = 0; v < n; ++v) out[v] = x[v] * scale - lse;
}

// out[v] += k * (e[v] - r[v]) - d          (shared vocabulary)
MOGEN_MULTIVERSION
void add_ratio_f32(const float* e, const float* r, int64_t n, float k, float d, float* out) {
  for (int64_t v = 0; v < n; ++v) out[v] += k * (e[v] - r[v]) - d;
}

template <typename T>
void to_float(const T* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(x[i]);
}

// Half-precision inputs go through an fp32 tile so every kernel above has one fp32 body.
template <typename T>
void lse_update(const T* x, int64_t n, float scale, Lse* acc) {
  if constexpr (std::is_same_v<T, float>) {
    lse_update_f32(x, n, scale, acc);
  } else {
    float buf[kTile];
    for (int64_t t = 0; t < n; t += kTile) {
      const int64_t len = std::min(kTile, n - t);
      to_float(x + t, len, buf);
      lse_update_f32(buf, len, scale, acc);
    }
  }
}

template <typename T>
void base_term(const T* x, int64_t n, float scale, float lse, float* out) {
  if constexpr (std::is_same_v<T, float>) {
    base_term_f32(x, n, scale, lse, out);
  } else {
    float buf[kTile];
    for (int64_t t = 0; t < n; t += kTile) {
      const int64_t len = std::min(kTile, n - t);
      to_float(x + t, len, buf);
      base_term_f32(buf, len, scale, lse, out + t);
    }
  }
}

template <typename T>
void add_ratio(const T* e, const T* r, int64_t n, float k, float d, float* out) {
  if constexpr (std::is_same_v<T, float>) {
    add_ratio_f32(e, r, n, k, d, out);
  } else {
    float be[kTile], br[kTile];
    for (int64_t t = 0; t < n; t += kTile) {
      const int64_t len = std::min(kTile, n - t);
      to_float(e + t, len, be);
      to_float(r + t, len, br);
      add_ratio_f32(be, br, len, k, d, out + t);
    }
  }
}

// out[v] += map[v] >= 0 ? k * D[map[v]] - d : cu      (D: one row of e - r, fp32)
MOGEN_MULTIVERSION
void add_ratio_mapped(const float* D, const int32_t* map, int64_t n, float k, float d, float cu, float* out) {
  // D is read at random: prefetch a few blocks ahead so that many cache misses
  // are in flight at once (the loop body alone overlaps only a few).
  constexpr int64_t kAhead = 8 * kW;
  int64_t v = 0;
  for (; v + kW <= n; v += kW) {
    if (v + kAhead + kW <= n)
      for (int l = 0; l < kW; ++l) {
        const int32_t j = map[v + kAhead + l];
        __builtin_prefetch(D + (j & ~(j >> 31)));
      }
    // Unmapped lanes load D[0] and are masked below.
    float g[kW];
    for (int l = 0; l < kW; ++l) {
      const int32_t j = map[v + l];
      g[l] = D[j & ~(j >> 31)];
    }
    vi j;
    std::memcpy(&j, map + v, sizeof(j));
    const vf sum = load(out + v) + (j >= 0 ? load(g) * k - d : splat(cu));
    std::memcpy(out + v, &sum, sizeof(sum));
  }
  for (; v < n; ++v) out[v] += map[v] >= 0 ? k * D[map[v]] - d : cu;
}

// D[u] = e[u] - r[u] in fp32.
MOGEN_MULTIVERSION
void diff_row_f32(const float* e, const float* r, int64_t n, float* out) {
  for (int64_t u = 0; u < n; ++u) out[u] = e[u] - r[u];
}

template <typename T>
void diff_row(const T* e, const T* r, int64_t n, float* out) {
  if constexpr (std::is_same_v<T, float>) {
    diff_row_f32(e, r, n, out);
  } else {
    for (int64_t u = 0; u < n; ++u) out[u] = static_cast<float>(e[u]) - static_cast<float>(r[u]);
  }
}

template <typename T>
const T* row_ptr(const LogitsView& x, int64_t b) {
  return static_cast<const T*>(x.data) + b * x.row_stride;
}

int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }
int64_t round_up(int64_t x, int64_t m) { return ceil_div(x, m) * m; }

// Vocab chunk per task: whole rows (any vocabulary) when rows alone keep every
// thread busy, else rows split so that there are a few tasks per thread.
constexpr int64_t kWholeRow = std::numeric_limits<int64_t>::max() / 4;

int64_t pick_chunk(int64_t batch, int64_t vocab) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  if (batch >= 2 * threads) return kWholeRow;
  const int64_t chunk = ceil_div(vocab, ceil_div(4 * threads, std::max<int64_t>(batch, 1)));
  return round_up(std::max(kMinChunk, chunk), kW);
}

// One phase-1 task: row b, unit (0 = base, 1 + i = guide i: its expert and
// reference together), vocab [lo, lo + chunk). Folds into part[j] (the row's
// partials of input j for this chunk, stride `cstride`) and writes D rows.
void phase1_task(const FusionArgs& a, int64_t b, int32_t unit, int64_t lo, int64_t chunk, Lse* part,
                 int64_t cstride, float* diffs, const int64_t* d_offset) {
  if (unit == 0) {
    if (lo >= a.vocab) return;
    dispatch_logits(a.base.dtype, [&](auto tag) {
      using T = decltype(tag);
      lse_update(row_ptr<T>(a.base, b) + lo, std::min(chunk, a.vocab - lo), a.base_inv_temp, &part[0]);
    });
    return;
  }
  const int32_t i = unit - 1;
  const GuideView& g = a.guides[i];
  if (lo >= g.expert.vocab || a.coef(b, i) == 0.0f) return;  // a guide weighted 0 on a row is skipped
  const int64_t n = std::min(chunk, g.expert.vocab - lo);
  dispatch_logits(g.expert.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* e = row_ptr<T>(g.expert, b) + lo;
    const T* r = row_ptr<T>(g.ref, b) + lo;
    lse_update(e, n, g.inv_temp, &part[(1 + 2 * i) * cstride]);
    lse_update(r, n, g.inv_temp, &part[(2 + 2 * i) * cstride]);
    if (g.map != nullptr) diff_row(e, r, n, diffs + d_offset[i] + b * g.expert.vocab + lo);
  });
}

// log-sum-exp from C chunk partials: the max over chunks first, then the rescaled sum.
float combine(const Lse* pc, int64_t C) {
  float m = kNegInf;
  for (int64_t c = 0; c < C; ++c) m = std::max(m, pc[c].m);
  float s = 0.0f;
  if (m != kNegInf)
    for (int64_t c = 0; c < C; ++c)
      if (pc[c].m != kNegInf) s += pc[c].s * std::exp(pc[c].m - m);
  return m + std::log(s);
}

// Phase 2 for one task: fused scores of row b, base ids [lo, lo + n), into out[0, n).
void phase2(const FusionArgs& a, const float* lse, const float* diffs, const int64_t* d_offset, int64_t b,
            int64_t lo, int64_t n, float* out) {
  const float* l = lse + b * a.num_inputs();
  dispatch_logits(a.base.dtype, [&](auto tag) {
    using T = decltype(tag);
    base_term(row_ptr<T>(a.base, b) + lo, n, a.base_inv_temp, l[0], out);
  });
  for (int32_t i = 0; i < a.num_guides; ++i) {
    const GuideView& g = a.guides[i];
    const float c = a.coef(b, i);
    if (c == 0.0f) continue;
    const float k = c * g.inv_temp;
    const float d = c * (l[1 + 2 * i] - l[2 + 2 * i]);
    if (g.map != nullptr) {
      add_ratio_mapped(diffs + d_offset[i] + b * g.expert.vocab, g.map + lo, n, k, d, c * a.unmapped, out);
      continue;
    }
    dispatch_logits(g.expert.dtype, [&](auto tag) {
      using T = decltype(tag);
      add_ratio(row_ptr<T>(g.expert, b) + lo, row_ptr<T>(g.ref, b) + lo, n, k, d, out);
    });
  }
}

// Runs both phases and calls body(task, b, lo, n, lse, diffs, d_offset) for
// every (row, chunk) of phase 2 (task = b * chunks + chunk index), where lse is
// [B, num_inputs]; returns the number of chunks per row.
template <typename Body>
int64_t run_fusion(const FusionArgs& a, int64_t chunk, Body&& body) {
  // D scratch is reused across calls of the calling thread: a fresh allocation
  // per decoding step would page-fault it in every time. (Worker threads reach
  // it through `diffs`; by name they would see their own, empty, instance.)
  thread_local std::vector<float> scratch;
  std::vector<int64_t> d_offset(static_cast<size_t>(a.num_guides), -1);
  int64_t total = 0, max_vocab = a.vocab;
  for (int32_t i = 0; i < a.num_guides; ++i) {
    max_vocab = std::max(max_vocab, a.guides[i].expert.vocab);
    if (a.guides[i].map != nullptr) d_offset[i] = total, total += a.guides[i].expert.vocab * a.batch;
  }
  if (static_cast<int64_t>(scratch.size()) < total) scratch.resize(static_cast<size_t>(total));
  float* const diffs = scratch.data();
  const int32_t ni = a.num_inputs(), units = 1 + a.num_guides;
  const int64_t B = a.batch, chunks = ceil_div(a.vocab, chunk);
  std::vector<float> lse(static_cast<size_t>(B * ni));

  if (chunk >= max_vocab) {
    // Rows alone fill the threads: one task does both phases of a row, which
    // reads its inputs the second time from cache rather than from memory.
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<Lse> part(static_cast<size_t>(ni));
      for (int64_t b = begin; b < end; ++b) {
        std::fill(part.begin(), part.end(), Lse{});
        for (int32_t unit = 0; unit < units; ++unit) phase1_task(a, b, unit, 0, chunk, part.data(), 1, diffs, d_offset.data());
        for (int32_t j = 0; j < ni; ++j) lse[b * ni + j] = combine(&part[j], 1);
        body(b, b, 0, a.vocab, lse.data(), diffs, d_offset.data());
      }
    });
    return chunks;
  }

  // Phase 1 over (row, unit, chunk) tasks, then phase 2 over (row, chunk) tasks.
  const int64_t C = ceil_div(max_vocab, chunk);
  std::vector<Lse> part(static_cast<size_t>(B * ni * C));
  at::parallel_for(0, B * units * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (units * C), c = t % C;
      phase1_task(a, b, static_cast<int32_t>((t / C) % units), c * chunk, chunk, &part[b * ni * C + c], C, diffs,
                  d_offset.data());
    }
  });
  for (int64_t bj = 0; bj < B * ni; ++bj) lse[bj] = combine(&part[bj * C], C);
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / chunks, lo = (t % chunks) * chunk;
      body(t, b, lo, std::min(chunk, a.vocab - lo), lse.data(), diffs, d_offset.data());
    }
  });
  return chunks;
}

// The best of x[0, n) (ids lo, lo + 1, ...) as `better` ranks them. One
// vector pass finds the maximum and whether a NaN is present; a scalar scan
// then finds the first id holding it (NaN first: it ranks above everything).
MOGEN_MULTIVERSION
Scored best_of(const float* x, int64_t n, int64_t lo) {
  vf mx = splat(kNegInf);
  vi nan = vi{};
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    const vf v = load(x + i);
    mx = vmax(mx, v);
    nan |= v != v;
  }
  float m = hmax(mx);
  bool has_nan = false;
  for (int l = 0; l < kW; ++l) has_nan |= nan[l] != 0;
  for (; i < n; ++i) {
    has_nan |= std::isnan(x[i]);
    m = std::max(m, x[i]);  // a NaN x[i] never wins
  }
  for (i = 0; i < n; ++i)
    if (has_nan ? std::isnan(x[i]) : x[i] == m) break;
  return Scored{x[i], lo + i};  // i < n: some element is NaN or equal to the max
}

// Argmax of one phase-2 task: scores are made a tile at a time into an
// L1-resident buffer, so neither the row nor a per-entry record is ever stored.
Scored task_best(const FusionArgs& a, const float* lse, const float* diffs, const int64_t* d_offset, int64_t b,
                 int64_t lo, int64_t n) {
  float buf[kTile];
  Scored best{kNegInf, -1};
  for (int64_t t = 0; t < n; t += kTile) {
    const int64_t len = std::min(kTile, n - t);
    phase2(a, lse, diffs, d_offset, b, lo + t, len, buf);
    const Scored s = best_of(buf, len, lo + t);
    if (best.id < 0 || better(s, best)) best = s;
    if (std::isnan(best.v)) break;  // nothing after it can rank higher
  }
  return best;
}

// Fused argmax of every row into values[b] / ids[b].
void fused_argmax(const FusionArgs& a, float* values, int64_t* ids) {
  const int64_t chunk = pick_chunk(a.batch, a.vocab);
  const int64_t chunks = ceil_div(a.vocab, chunk);
  std::vector<Scored> cand(static_cast<size_t>(a.batch * chunks));  // every chunk is non-empty
  run_fusion(a, chunk, [&](int64_t t, int64_t b, int64_t lo, int64_t n, const float* lse, const float* diffs,
                           const int64_t* d_offset) { cand[t] = task_best(a, lse, diffs, d_offset, b, lo, n); });
  for (int64_t b = 0; b < a.batch; ++b) {
    const auto first = cand.begin() + b * chunks;
    const Scored best = *std::min_element(first, first + chunks, better);  // min under "ranks higher"
    values[b] = best.v;
    ids[b] = best.id;
  }
}

}  // namespace

at::Tensor fused_log_ratio(MOGEN_FUSION_PARAMS) {
  MOGEN_CHECK_ARG(base.device().is_cpu(), "the CPU kernel got base_logits on ", base.device());
  const FusionArgs a = make_fusion_args(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp,
                                        unmapped);
  at::Tensor out = at::empty({a.batch, a.vocab}, base.options().dtype(at::kFloat));
  if (a.batch == 0) return out;
  float* o = out.data_ptr<float>();
  run_fusion(a, pick_chunk(a.batch, a.vocab),
             [&](int64_t, int64_t b, int64_t lo, int64_t n, const float* lse, const float* diffs,
                 const int64_t* d_offset) { phase2(a, lse, diffs, d_offset, b, lo, n, o + b * a.vocab + lo); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> fused_log_ratio_topk(MOGEN_FUSION_PARAMS, int64_t k) {
  MOGEN_CHECK_ARG(base.device().is_cpu(), "the CPU kernel got base_logits on ", base.device());
  const FusionArgs a = make_fusion_args(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp,
                                        unmapped);
  MOGEN_CHECK_ARG(k >= 1 && k <= a.vocab, "k must be in [1, V_b] = [1, ", a.vocab, "], got ", k);
  at::Tensor values = at::empty({a.batch, k}, base.options().dtype(at::kFloat));
  at::Tensor ids = at::empty({a.batch, k}, base.options().dtype(at::kLong));
  if (a.batch == 0) return {values, ids};
  if (k == 1) {  // greedy decoding: no per-entry records, no sort
    fused_argmax(a, values.data_ptr<float>(), ids.data_ptr<int64_t>());
    return {values, ids};
  }
  const int64_t chunk = pick_chunk(a.batch, a.vocab);
  const int64_t chunks = ceil_div(a.vocab, chunk);
  const int64_t per_chunk = std::min(k, chunk);
  // Each task leaves its chunk's best `per_chunk` here: [B, chunks, per_chunk].
  std::vector<Scored> cand(static_cast<size_t>(a.batch * chunks * per_chunk), Scored{kNegInf, -1});
  run_fusion(a, chunk, [&](int64_t t, int64_t b, int64_t lo, int64_t n, const float* lse, const float* diffs,
                           const int64_t* d_offset) {
    std::vector<float> buf(static_cast<size_t>(n));
    std::vector<Scored> sc(static_cast<size_t>(n));
    phase2(a, lse, diffs, d_offset, b, lo, n, buf.data());
    for (int64_t v = 0; v < n; ++v) sc[v] = Scored{buf[v], lo + v};
    const int64_t keep = std::min(per_chunk, n);
    std::partial_sort(sc.begin(), sc.begin() + keep, sc.end(), better);
    std::copy(sc.begin(), sc.begin() + keep, cand.begin() + t * per_chunk);
  });
  float* vo = values.data_ptr<float>();
  int64_t* io = ids.data_ptr<int64_t>();
  const int64_t row_cand = chunks * per_chunk;
  at::parallel_for(0, a.batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      // Unfilled slots (id -1) come from the short last chunk; drop them.
      auto first = cand.begin() + b * row_cand;
      auto last = std::remove_if(first, first + row_cand, [](const Scored& s) { return s.id < 0; });
      std::partial_sort(first, first + k, last, better);
      for (int64_t j = 0; j < k; ++j) {
        vo[b * k + j] = first[j].v;
        io[b * k + j] = first[j].id;
      }
    }
  });
  return {values, ids};
}

std::tuple<at::Tensor, at::Tensor> fused_log_ratio_argmax(MOGEN_FUSION_PARAMS) {
  MOGEN_CHECK_ARG(base.device().is_cpu(), "the CPU kernel got base_logits on ", base.device());
  const FusionArgs a = make_fusion_args(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp,
                                        unmapped);
  at::Tensor values = at::empty({a.batch}, base.options().dtype(at::kFloat));
  at::Tensor ids = at::empty({a.batch}, base.options().dtype(at::kLong));
  if (a.batch > 0) fused_argmax(a, values.data_ptr<float>(), ids.data_ptr<int64_t>());
  return {values, ids};
}

}  // namespace cpu
}  // namespace mogen
