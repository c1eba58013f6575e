// The torch-facing entry points of every op, one declaration per backend.
#pragma once

#include <optional>
#include <tuple>
#include <vector>

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

namespace mogen {

struct MergeSource;
struct MergeSink;

// K1's arguments, in the types the dispatcher passes for the schema in
// library.cpp (Tensor[] -> TensorList, Tensor?[] -> List<optional<Tensor>>,
// float[] -> ArrayRef<double>).
#define MOGEN_FUSION_PARAMS                                                                            \
  const at::Tensor &base, at::TensorList experts, at::TensorList refs,                               \
      const c10::List<std::optional<at::Tensor>>&maps, const at::Tensor &weights,                      \
      at::ArrayRef<double> inv_temps, double beta, double base_inv_temp, double unmapped

// K1 entry points: fused_log_ratio -> fp32 [B, V_b]; _topk -> the k best (values fp32,
// ids int64) [B, k] best first; _argmax -> the best (value fp32, id int64) [B]. Both
// rank as torch.topk: NaN above everything, equal scores lower id first.

// K2: out[b, c] = hidden[b] . weight[ids[b, c]] + bias[ids[b, c]], fp32 [B, k].
#define MOGEN_VALUE_PARAMS \
  const at::Tensor &hidden, const at::Tensor &weight, const at::Tensor &ids, const std::optional<at::Tensor> &bias

namespace cpu {
at::Tensor fused_log_ratio(MOGEN_FUSION_PARAMS);
std::tuple<at::Tensor, at::Tensor> fused_log_ratio_topk(MOGEN_FUSION_PARAMS, int64_t k);
std::tuple<at::Tensor, at::Tensor> fused_log_ratio_argmax(MOGEN_FUSION_PARAMS);
// K2; raises naming `ids` (before reading any row) if an id is outside [0, V).
at::Tensor topk_value_scores(MOGEN_VALUE_PARAMS);
// K3: out[k] = sum_i coef[k * N + i] * src_i over `numel` elements, fp32 (compensated)
// accumulation, cast on store; file-backed sources are read with pread (nothing mapped).
void merge_spans(const std::vector<MergeSource>& srcs, const std::vector<double>& coef,
                 const std::vector<MergeSink>& sinks, int64_t numel);
}  // namespace cpu

#ifdef MOGEN_WITH_CUDA
namespace cuda {
at::Tensor fused_log_ratio(MOGEN_FUSION_PARAMS);
std::tuple<at::Tensor, at::Tensor> fused_log_ratio_topk(MOGEN_FUSION_PARAMS, int64_t k);
std::tuple<at::Tensor, at::Tensor> fused_log_ratio_argmax(MOGEN_FUSION_PARAMS);
// K2; out-of-range ids are never read: the kernel flags them and this raises naming
// `ids` (reading the flag back synchronises the current stream once per call).
at::Tensor topk_value_scores(MOGEN_VALUE_PARAMS);
// Pinned host and device staging buffers of the in-place CUDA merge, grown on
// demand and kept by the caller across the tensors of one merge.
struct MergeStaging {
  at::Tensor host;
  at::Tensor device;
};
// K3 into a CUDA tensor: dst = sum_i coef[i] * src_i (numel = dst.numel()), sources
// staged through `staging` with host-to-device copies overlapped with the
// accumulation kernel. `chunk`: elements per staged chunk (0: automatic, bounded
// by a memory budget). `fail_at_chunk` >= 0 throws before staging that chunk
// (tests of the cleanup path; -1 in normal use).
void merge_spans_to_device(const std::vector<MergeSource>& srcs, const std::vector<double>& coef, at::Tensor& dst,
                           MergeStaging& staging, int64_t chunk = 0, int64_t fail_at_chunk = -1);
// K3's kernel alone on tensors already on the GPU: dst = sum_i coef[i] * srcs[i], all
// contiguous with dst.numel() elements on dst's device, on the current stream (no
// staging, no synchronisation). What the GPU benchmark times against the HBM roofline.
void merge_tensors_on_device(const std::vector<at::Tensor>& srcs, const std::vector<double>& coef, at::Tensor& dst);
}  // namespace cuda
#endif

}  // namespace mogen
