// K1 on CPU: multi-vocabulary log-ratio fusion (DESIGN.md sections 1 and 3).
//
// Two phases over a grid of (row, vocab chunk) tasks:
//   1. per input (base, each expert, each reference) and chunk, an online
//      (max, sum of exp) pass; chunks are then combined into one log-sum-exp
//      per (row, input). Inputs are only read here, never written.
//   2. per (row, chunk) one pass over V_b that gathers every guide's log-ratio
//      through its vocabulary map and writes the fused score (or, for top-k,
//      keeps the chunk's best k so the full row is never materialised).
// Rows alone fill the threads when B is large; otherwise the vocabulary is
// split as well so that B = 1 still uses every core.
// 64-byte vector arguments of the always-inline helpers only matter for ABI if not inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

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
#include "ops.h"

// The hot loops are compiled once per ISA level and picked at load time, so a
// generic x86-64 build still runs AVX2 / AVX-512 code where the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define MOGEN_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOGEN_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MOGEN_MULTIVERSION
#endif

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

// exp(x) for x <= 88 with ~1 ulp error, branch-free so it runs 16 lanes at a
// time: Cody-Waite reduction x = n ln2 + r, a degree-6 minimax polynomial for
// exp(r) on [-ln2/2, ln2/2], and 2^n built in the exponent bits. Inputs below
// -87 flush to exp(-87) (~1.6e-38), far below what a log-sum-exp can resolve.
MOGEN_INLINE vf vexp(vf x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  const vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  vf r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vf y = p * r * r + r + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  return y * reinterpret_cast<const vf&>(bits);
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

// out[v] += map[v] >= 0 ? k * (e[j] - r[j]) - d : cu     with j = map[v]
template <typename T>
void add_ratio_mapped(const T* e, const T* r, const int32_t* map, int64_t n, float k, float d, float cu,
                      float* out) {
  for (int64_t v = 0; v < n; ++v) {
    const int32_t j = map[v];
    out[v] += j >= 0 ? k * (static_cast<float>(e[j]) - static_cast<float>(r[j])) - d : cu;
  }
}

MOGEN_MULTIVERSION
void add_ratio_mapped_f32(const float* e, const float* r, const int32_t* map, int64_t n, float k, float d,
                          float cu, float* out) {
  for (int64_t v = 0; v < n; ++v) {
    const int32_t j = map[v];
    const int32_t jj = j & ~(j >> 31);  // max(j, 0) without a branch: loads stay unconditional
    const float term = k * (e[jj] - r[jj]) - d;
    out[v] += j >= 0 ? term : cu;
  }
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

template <typename T>
const T* row_ptr(const LogitsView& x, int64_t b) {
  return static_cast<const T*>(x.data) + b * x.row_stride;
}

// Vocab chunk per task: whole rows when rows alone keep every thread busy,
// else rows split so that there are a few tasks per thread.
int64_t pick_chunk(int64_t batch, int64_t max_vocab) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  if (batch >= 2 * threads) return std::max<int64_t>(max_vocab, 1);
  const int64_t pieces = (4 * threads + batch - 1) / std::max<int64_t>(batch, 1);
  const int64_t chunk = (max_vocab + pieces - 1) / pieces;
  return std::max(kMinChunk, (chunk + kW - 1) / kW * kW);
}

// Whether row b needs input j (guides weighted 0 on a row are skipped entirely).
bool input_active(const FusionArgs& a, int64_t b, int32_t j) {
  return j == 0 || a.coef(b, (j - 1) / 2) != 0.0f;
}

// Phase 1: log-sum-exp of every active input on every row, [B, num_inputs].
std::vector<float> all_lse(const FusionArgs& a, int64_t chunk) {
  const int32_t ni = a.num_inputs();
  int64_t cmax = 1;
  for (int32_t j = 0; j < ni; ++j) cmax = std::max(cmax, (a.input(j).vocab + chunk - 1) / chunk);
  std::vector<Lse> part(static_cast<size_t>(a.batch * ni * cmax));
  at::parallel_for(0, a.batch * ni * cmax, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (ni * cmax);
      const int32_t j = static_cast<int32_t>((t / cmax) % ni);
      const int64_t lo = (t % cmax) * chunk;
      const LogitsView& x = a.input(j);
      if (lo >= x.vocab || !input_active(a, b, j)) continue;
      const int64_t n = std::min(chunk, x.vocab - lo);
      dispatch_logits(x.dtype, [&](auto tag) {
        using T = decltype(tag);
        lse_update(row_ptr<T>(x, b) + lo, n, a.input_inv_temp(j), &part[t]);
      });
    }
  });
  std::vector<float> lse(static_cast<size_t>(a.batch * ni), 0.0f);
  for (int64_t bj = 0; bj < a.batch * ni; ++bj) {
    float m = kNegInf;
    for (int64_t c = 0; c < cmax; ++c) m = std::max(m, part[bj * cmax + c].m);
    float s = 0.0f;
    if (m != kNegInf)
      for (int64_t c = 0; c < cmax; ++c) {
        const Lse& p = part[bj * cmax + c];
        if (p.m != kNegInf) s += p.s * std::exp(p.m - m);
      }
    lse[bj] = m + std::log(s);
  }
  return lse;
}

// Phase 2 for one task: fused scores of row b, base ids [lo, lo + n), into out[0, n).
void fused_chunk(const FusionArgs& a, const float* lse, int64_t b, int64_t lo, int64_t n, float* out) {
  dispatch_logits(a.base.dtype, [&](auto tag) {
    using T = decltype(tag);
    base_term(row_ptr<T>(a.base, b) + lo, n, a.base_inv_temp, lse[0], out);
  });
  for (int32_t i = 0; i < a.num_guides; ++i) {
    const float c = a.coef(b, i);
    if (c == 0.0f) continue;
    const GuideView& g = a.guides[i];
    const float k = c * g.inv_temp;
    const float d = c * (lse[1 + 2 * i] - lse[2 + 2 * i]);
    dispatch_logits(g.expert.dtype, [&](auto tag) {
      using T = decltype(tag);
      const T* e = row_ptr<T>(g.expert, b);
      const T* r = row_ptr<T>(g.ref, b);
      if (g.map == nullptr) {
        add_ratio(e + lo, r + lo, n, k, d, out);
      } else if constexpr (std::is_same_v<T, float>) {
        add_ratio_mapped_f32(e, r, g.map + lo, n, k, d, c * a.unmapped, out);
      } else {
        add_ratio_mapped(e, r, g.map + lo, n, k, d, c * a.unmapped, out);
      }
    });
  }
}

// Ranking for top-k: higher score first, NaN above everything (as torch.topk),
// equal scores lower id first. A strict weak order, so std::sort is safe.
struct Scored {
  float v;
  int64_t id;
};
inline bool better(const Scored& x, const Scored& y) {
  const bool xn = std::isnan(x.v), yn = std::isnan(y.v);
  if (xn != yn) return xn;
  if (!xn && x.v != y.v) return x.v > y.v;
  return x.id < y.id;
}

}  // namespace

at::Tensor fused_log_ratio(MOGEN_FUSION_PARAMS) {
  MOGEN_CHECK_ARG(base.device().is_cpu(), "the CPU kernel got base_logits on ", base.device());
  const FusionArgs a = make_fusion_args(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp,
                                        unmapped);
  at::Tensor out = at::empty({a.batch, a.vocab}, base.options().dtype(at::kFloat));
  if (a.batch == 0) return out;
  const int64_t chunk = pick_chunk(a.batch, a.vocab);
  const std::vector<float> lse = all_lse(a, chunk);
  const int32_t ni = a.num_inputs();
  const int64_t chunks = (a.vocab + chunk - 1) / chunk;
  float* o = out.data_ptr<float>();
  at::parallel_for(0, a.batch * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / chunks;
      const int64_t lo = (t % chunks) * chunk;
      fused_chunk(a, lse.data() + b * ni, b, lo, std::min(chunk, a.vocab - lo), o + b * a.vocab + lo);
    }
  });
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
  const int64_t chunk = pick_chunk(a.batch, a.vocab);
  const std::vector<float> lse = all_lse(a, chunk);
  const int32_t ni = a.num_inputs();
  const int64_t chunks = (a.vocab + chunk - 1) / chunk;
  const int64_t per_chunk = std::min(k, chunk);
  // Each task leaves its chunk's best `per_chunk` here: [B, chunks, per_chunk].
  std::vector<Scored> cand(static_cast<size_t>(a.batch * chunks * per_chunk), Scored{kNegInf, -1});
  at::parallel_for(0, a.batch * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(static_cast<size_t>(chunk));
    std::vector<Scored> sc(static_cast<size_t>(chunk));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / chunks;
      const int64_t lo = (t % chunks) * chunk;
      const int64_t n = std::min(chunk, a.vocab - lo);
      fused_chunk(a, lse.data() + b * ni, b, lo, n, buf.data());
      for (int64_t v = 0; v < n; ++v) sc[v] = Scored{buf[v], lo + v};
      const int64_t keep = std::min(per_chunk, n);
      std::partial_sort(sc.begin(), sc.begin() + keep, sc.begin() + n, better);
      std::copy(sc.begin(), sc.begin() + keep, cand.begin() + t * per_chunk);
    }
  });
  float* vo = values.data_ptr<float>();
  int64_t* io = ids.data_ptr<int64_t>();
  const int64_t row_cand = chunks * per_chunk;
  at::parallel_for(0, a.batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      // Unfilled slots (id -1) come from chunks shorter than per_chunk; drop them.
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

}  // namespace cpu
}  // namespace mogen
