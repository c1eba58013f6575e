// K1 on CUDA, torch-facing side: checks, device guard, current stream, scratch
// allocation, and the final merge of per-chunk top-k / argmax candidates.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/checks.h"
#include "common/fusion_inputs.h"
#include "cuda/fusion_launch.h"
#include "ops.h"

namespace mogen {
namespace cuda {
namespace {

struct Prepared {
  FusionArgs args;
  cuda_impl::FusionPlan plan;
  at::Tensor scratch;
};

Prepared prepare(MOGEN_FUSION_PARAMS) {
  MOGEN_CHECK_ARG(base.is_cuda(), "the CUDA kernel got base_logits on ", base.device());
  Prepared p;
  p.args = make_fusion_args(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped);
  MOGEN_CHECK_ARG(p.args.batch <= 65535, "the CUDA kernel takes at most 65535 rows (a grid dimension), got ",
                  p.args.batch, "; split the batch");
  C10_CUDA_CHECK(cuda_impl::plan_fusion(p.args, base.get_device(), &p.plan));
  p.scratch = at::empty({std::max<int64_t>(p.plan.scratch_floats, 1)}, base.options().dtype(at::kFloat));
  return p;
}

// (values desc, NaN first, ties by lower id) over [B, n] candidates; the first k columns.
std::tuple<at::Tensor, at::Tensor> best_k(at::Tensor values, at::Tensor ids, int64_t k, int64_t vocab) {
  // Empty slots (id -1) rank after every real score, -inf included.
  const at::Tensor empty = ids.lt(0);
  values = values.masked_fill(empty, -std::numeric_limits<float>::infinity());
  ids = ids.masked_fill(empty, vocab);
  auto [ids_sorted, by_id] = at::sort(ids, /*stable=*/true, /*dim=*/1, /*descending=*/false);
  values = values.gather(1, by_id);
  auto [vals_sorted, by_val] = at::sort(values, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  ids = ids_sorted.gather(1, by_val);
  return {vals_sorted.narrow(1, 0, k).contiguous(), ids.narrow(1, 0, k).contiguous()};
}

// The best (value, id) of each row into [B, 1] tensors: one candidate per
// (row, chunk) from the kernel, then torch.argmax across the chunks, which ranks
// as `better` does (NaN first, the first, i.e. lowest-id, chunk on ties).
std::tuple<at::Tensor, at::Tensor> argmax_2d(const at::Tensor& base, Prepared& p) {
  const FusionArgs& a = p.args;
  at::Tensor cand_v = at::empty({a.batch, p.plan.out_chunks}, base.options().dtype(at::kFloat));
  at::Tensor cand_i = at::empty({a.batch, p.plan.out_chunks}, base.options().dtype(at::kLong));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(base.get_device()).stream();
  C10_CUDA_CHECK(cuda_impl::launch_fused_log_ratio_argmax(a, p.plan, p.scratch.data_ptr<float>(),
                                                          cand_v.data_ptr<float>(), cand_i.data_ptr<int64_t>(),
                                                          stream));
  if (p.plan.out_chunks == 1) return {cand_v, cand_i};
  const at::Tensor chunk = at::argmax(cand_v, /*dim=*/1, /*keepdim=*/true);
  return {cand_v.gather(1, chunk), cand_i.gather(1, chunk)};
}

}  // namespace

at::Tensor fused_log_ratio(MOGEN_FUSION_PARAMS) {
  const c10::cuda::CUDAGuard guard(base.device());
  Prepared p = prepare(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped);
  at::Tensor out = at::empty({p.args.batch, p.args.vocab}, base.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(base.get_device()).stream();
  C10_CUDA_CHECK(cuda_impl::launch_fused_log_ratio(p.args, p.plan, p.scratch.data_ptr<float>(),
                                                   out.data_ptr<float>(), stream));
  return out;
}

std::tuple<at::Tensor, at::Tensor> fused_log_ratio_topk(MOGEN_FUSION_PARAMS, int64_t k) {
  const c10::cuda::CUDAGuard guard(base.device());
  Prepared p = prepare(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped);
  const FusionArgs& a = p.args;
  MOGEN_CHECK_ARG(k >= 1 && k <= a.vocab, "k must be in [1, V_b] = [1, ", a.vocab, "], got ", k);
  if (k == 1) return argmax_2d(base, p);  // greedy decoding: no sort tile
  const auto fopts = base.options().dtype(at::kFloat);
  const auto lopts = base.options().dtype(at::kLong);
  if (k > cuda_impl::kMaxBlockTopk) {
    // k this large is most of a row anyway: write the row and sort it.
    at::Tensor scores = fused_log_ratio(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped);
    at::Tensor ids = at::arange(a.vocab, lopts).unsqueeze(0).expand({a.batch, a.vocab}).contiguous();
    return best_k(scores, ids, k, a.vocab);
  }
  at::Tensor cand_v = at::empty({a.batch, p.plan.out_chunks * k}, fopts);
  at::Tensor cand_i = at::empty({a.batch, p.plan.out_chunks * k}, lopts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(base.get_device()).stream();
  C10_CUDA_CHECK(cuda_impl::launch_fused_log_ratio_topk(a, p.plan, p.scratch.data_ptr<float>(), k,
                                                        cand_v.data_ptr<float>(), cand_i.data_ptr<int64_t>(),
                                                        stream));
  if (p.plan.out_chunks == 1) return {cand_v, cand_i};  // one chunk per row: already the sorted best k
  return best_k(cand_v, cand_i, k, a.vocab);
}

std::tuple<at::Tensor, at::Tensor> fused_log_ratio_argmax(MOGEN_FUSION_PARAMS) {
  const c10::cuda::CUDAGuard guard(base.device());
  Prepared p = prepare(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped);
  auto [values, ids] = argmax_2d(base, p);
  return {values.view({p.args.batch}), ids.view({p.args.batch})};
}

}  // namespace cuda
}  // namespace mogen
