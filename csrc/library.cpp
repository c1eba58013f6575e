// The dispatcher registration of every tensor op: ONE schema table (namespace
// `mogen`) and its CPU and CUDA kernels. Called as torch.ops.mogen.<op>, the
// ops trace under torch.compile (their fake kernels are in mogen/ops/fakes.py,
// registered by mogen.ops, the module set_python_module below names), show up by
// name in the profiler, and release the GIL while they run (torch.ops does that
// for every op).
//
// K3 (the streaming merge) stays a pybind11 function in bindings.cpp: it takes
// safetensors reader and writer objects and byte offsets into their files, which
// no schema type can carry, and returns nothing a graph could use.
#include <ATen/core/enum_tag.h>
#include <torch/library.h>

#include "ops.h"

// K1 arguments, shared by its three schemas:
//   base       [B, V_b] float32 / bfloat16 / float16, last dim contiguous, any row stride
//   experts    M tensors [B, V_i], refs M tensors [B, V_i] (expert i and ref i: one shape, one dtype)
//   maps       M entries: int32 [V_b] (guide id or -1, each in [-1, V_i), checked by the op) or None
//   weights    float32 [B, M], any strides (a stride-0 expand of [M] serves every row)
//   inv_temps  M floats > 0; beta, base_inv_temp, unmapped: floats (docs/design.md section 1)
#define MOGEN_K1_ARGS                                                                                          \
  "Tensor base, Tensor[] experts, Tensor[] refs, Tensor?[] maps, Tensor weights, float[] inv_temps, float beta, " \
  "float base_inv_temp, float unmapped"

TORCH_LIBRARY(mogen, m) {
  m.set_python_module("mogen.ops");
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  // K1 -> float32 [B, V_b]
  m.def("fused_log_ratio(" MOGEN_K1_ARGS ") -> Tensor", tags);
  // K1, the k best per row -> (values float32 [B, k], ids int64 [B, k]) best first; k in [1, V_b]
  m.def("fused_log_ratio_topk(" MOGEN_K1_ARGS ", int k) -> (Tensor values, Tensor ids)", tags);
  // K1, the best per row (greedy) -> (values float32 [B], ids int64 [B])
  m.def("fused_log_ratio_argmax(" MOGEN_K1_ARGS ") -> (Tensor values, Tensor ids)", tags);
  // K2: hidden [B, H], weight [V, H] (last dims contiguous), ids int32/int64 [B, k] each in [0, V)
  // (checked by the op), bias [V] or None -> float32 [B, k]
  m.def("topk_value_scores(Tensor hidden, Tensor weight, Tensor ids, Tensor? bias) -> Tensor", tags);
}

TORCH_LIBRARY_IMPL(mogen, CPU, m) {
  m.impl("fused_log_ratio", &mogen::cpu::fused_log_ratio);
  m.impl("fused_log_ratio_topk", &mogen::cpu::fused_log_ratio_topk);
  m.impl("fused_log_ratio_argmax", &mogen::cpu::fused_log_ratio_argmax);
  m.impl("topk_value_scores", &mogen::cpu::topk_value_scores);
}

#ifdef MOGEN_WITH_CUDA
TORCH_LIBRARY_IMPL(mogen, CUDA, m) {
  m.impl("fused_log_ratio", &mogen::cuda::fused_log_ratio);
  m.impl("fused_log_ratio_topk", &mogen::cuda::fused_log_ratio_topk);
  m.impl("fused_log_ratio_argmax", &mogen::cuda::fused_log_ratio_argmax);
  m.impl("topk_value_scores", &mogen::cuda::topk_value_scores);
}
#endif
