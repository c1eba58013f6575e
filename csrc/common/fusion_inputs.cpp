#include "common/fusion_inputs.h"

#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include <ATen/ops/aminmax.h>
#include <c10/core/TensorImpl.h>

#include "common/checks.h"

namespace mogen {

std::pair<int32_t, int32_t> compute_range(const at::Tensor& map) {
  if (map.numel() == 0) return {0, -1};
  const auto [lo, hi] = at::aminmax(map);
  return {lo.item<int32_t>(), hi.item<int32_t>()};
}

// [min, max] of a vocabulary map, computed once per map and cached as mogen.ops
// caches it (a pass over the map per decoding step would cost as much as the
// fusion itself). An entry is keyed by the map's TensorImpl and holds a weak
// reference to it, so the address cannot be reused by another tensor while the
// entry exists; it is used only while that tensor lives, with the same data
// pointer, size and version (an in-place edit bumps the version). Inference
// tensors keep no version counter: they are checked on every call.
std::pair<int32_t, int32_t> map_range(const at::Tensor& map) {
  if (map.is_inference()) return compute_range(map);
  struct Entry {
    c10::weak_intrusive_ptr<c10::TensorImpl> impl;
    const void* data;
    int64_t numel;
    uint32_t version;
    std::pair<int32_t, int32_t> range;
  };
  static std::mutex mutex;
  static std::unordered_map<const c10::TensorImpl*, Entry> cache;
  const c10::TensorImpl* key = map.unsafeGetTensorImpl();
  const uint32_t version = map.unsafeGetTensorImpl()->version_counter().current_version();
  const void* data = map.data_ptr();
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end() && !it->second.impl.expired() && it->second.data == data &&
        it->second.numel == map.numel() && it->second.version == version)
      return it->second.range;
  }
  const std::pair<int32_t, int32_t> range = compute_range(map);  // unlocked: may wait for a GPU
  const std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() >= 64) {  // drop entries of maps that are gone
    for (auto it = cache.begin(); it != cache.end();) it = it->second.impl.expired() ? cache.erase(it) : std::next(it);
    if (cache.size() >= 64) cache.clear();
  }
  cache.insert_or_assign(key, Entry{c10::weak_intrusive_ptr<c10::TensorImpl>(map.getIntrusivePtr()), data,
                                    map.numel(), version, range});
  return range;
}

DType to_dtype(const at::Tensor& t, const std::string& name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kHalf:
      return DType::kFloat16;
    default:
      MOGEN_CHECK_TYPE(false, name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
  return DType::kFloat32;  // unreachable
}

namespace {

LogitsView view_of(const at::Tensor& t, const std::string& name, int64_t batch, const at::Device& device) {
  MOGEN_CHECK_ARG(t.dim() == 2, name, " must be 2-D [B, V], got ", t.sizes());
  MOGEN_CHECK_ARG(t.size(0) == batch, name, " has batch size ", t.size(0), " but base_logits has ", batch);
  MOGEN_CHECK_ARG(t.device() == device, name, " is on ", t.device(), " but base_logits is on ", device);
  MOGEN_CHECK_ARG(t.size(1) > 0, name, " has an empty vocabulary");
  MOGEN_CHECK_ARG(t.size(1) == 1 || t.stride(1) == 1, name,
                  " must be contiguous in its last dim (any row stride is fine), got strides ", t.strides());
  LogitsView v;
  v.data = t.data_ptr();
  v.row_stride = t.stride(0);
  v.vocab = t.size(1);
  v.dtype = to_dtype(t, name);
  return v;
}

}  // namespace

FusionArgs make_fusion_args(MOGEN_FUSION_PARAMS) {
  FusionArgs a;
  MOGEN_CHECK_ARG(base.dim() == 2, "base_logits must be 2-D [B, V_b], got ", base.sizes());
  a.batch = base.size(0);
  a.vocab = base.size(1);
  const at::Device device = base.device();
  a.base = view_of(base, "base_logits", a.batch, device);
  a.base_inv_temp = static_cast<float>(base_inv_temp);

  const size_t m = experts.size();
  MOGEN_CHECK_ARG(m <= static_cast<size_t>(kMaxGuides), "at most ", kMaxGuides, " guides are supported, got ", m);
  MOGEN_CHECK_ARG(refs.size() == m, "expert_logits has ", m, " tensors but ref_logits has ", refs.size());
  MOGEN_CHECK_ARG(maps.size() == m, "vocab_maps has ", maps.size(), " entries but there are ", m, " guides");
  MOGEN_CHECK_ARG(inv_temps.size() == m, "temperatures has ", inv_temps.size(), " entries but there are ", m,
                  " guides");
  a.num_guides = static_cast<int32_t>(m);
  for (size_t i = 0; i < m; ++i) {
    const std::string si = std::to_string(i);
    GuideView& g = a.guides[i];
    g.expert = view_of(experts[i], "expert_logits[" + si + "]", a.batch, device);
    g.ref = view_of(refs[i], "ref_logits[" + si + "]", a.batch, device);
    MOGEN_CHECK_ARG(g.expert.vocab == g.ref.vocab, "expert_logits[", i, "] has vocabulary ", g.expert.vocab,
                    " but ref_logits[", i, "] has ", g.ref.vocab);
    MOGEN_CHECK_TYPE(g.expert.dtype == g.ref.dtype, "expert_logits[", i, "] and ref_logits[", i,
                     "] must share a dtype");
    MOGEN_CHECK_ARG(inv_temps[i] > 0.0, "temperatures[", i, "] must be > 0");
    g.inv_temp = static_cast<float>(inv_temps[i]);
    const std::optional<at::Tensor> map = maps.get(i);  // the list keeps the tensor alive
    if (map.has_value()) {
      const at::Tensor& mp = *map;
      MOGEN_CHECK_TYPE(mp.scalar_type() == at::kInt, "vocab_maps[", i, "] must be int32, got ", mp.scalar_type());
      MOGEN_CHECK_ARG(mp.dim() == 1 && mp.size(0) == a.vocab, "vocab_maps[", i, "] must have shape [V_b] = [",
                      a.vocab, "], got ", mp.sizes());
      MOGEN_CHECK_ARG(mp.device() == device, "vocab_maps[", i, "] is on ", mp.device(), " but base_logits is on ",
                      device);
      MOGEN_CHECK_ARG(mp.is_contiguous(), "vocab_maps[", i, "] must be contiguous");
      const auto [lo, hi] = map_range(mp);
      MOGEN_CHECK_ARG(lo >= -1 && hi < g.expert.vocab, "vocab_maps[", i, "] holds ids in [", lo, ", ", hi,
                      "] but guide ", i, " has vocabulary size ", g.expert.vocab,
                      "; entries must be -1 (unmapped) or in [0, ", g.expert.vocab, ")");
      g.map = mp.data_ptr<int32_t>();
    } else {
      MOGEN_CHECK_ARG(g.expert.vocab == a.vocab, "expert_logits[", i, "] has vocabulary ", g.expert.vocab,
                      " but base_logits has ", a.vocab, "; pass vocab_maps[", i, "]");
    }
  }
  MOGEN_CHECK_TYPE(weights.scalar_type() == at::kFloat, "weights must be float32, got ", weights.scalar_type());
  MOGEN_CHECK_ARG(weights.dim() == 2 && weights.size(0) == a.batch && weights.size(1) == static_cast<int64_t>(m),
                  "weights must be [B, M] = [", a.batch, ", ", m, "], got ", weights.sizes());
  MOGEN_CHECK_ARG(weights.device() == device, "weights is on ", weights.device(), " but base_logits is on ",
                  device);
  a.weights = weights.data_ptr<float>();
  a.w_row_stride = weights.stride(0);
  a.w_col_stride = weights.stride(1);
  a.beta = static_cast<float>(beta);
  a.unmapped = static_cast<float>(unmapped);
  return a;
}

}  // namespace mogen
