// K2 on CUDA, torch-facing side: checks, device guard, current stream, launch,
// and the id range report.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/checks.h"
#include "common/value_inputs.h"
#include "cuda/value_scores_launch.h"
#include "ops.h"

namespace mogen {
namespace cuda {

at::Tensor topk_value_scores(MOGEN_VALUE_PARAMS) {
  MOGEN_CHECK_ARG(hidden.is_cuda(), "the CUDA kernel got hidden on ", hidden.device());
  const c10::cuda::CUDAGuard guard(hidden.device());
  const ValueScoresArgs a = make_value_args(hidden, weight, ids, bias);
  at::Tensor out = at::empty({a.batch, a.k}, hidden.options().dtype(at::kFloat));
  if (a.batch == 0 || a.k == 0) return out;
  MOGEN_CHECK_ARG((a.batch * a.k + 7) / 8 <= 0x7fffffff, "B * k = ", a.batch * a.k,
                  " candidates is more than one CUDA launch scores; split the batch");
  // [count of out-of-range ids, one of them]; the kernel never reads their rows.
  at::Tensor bad = at::zeros({2}, hidden.options().dtype(at::kLong));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(hidden.get_device()).stream();
  C10_CUDA_CHECK(cuda_impl::launch_topk_value_scores(
      a, out.data_ptr<float>(), reinterpret_cast<unsigned long long*>(bad.data_ptr<int64_t>()), stream));
  // Reading the flag back synchronises the stream once per call: the price of
  // an error (rather than silent NaN) for bad ids from any caller.
  const at::Tensor bad_host = bad.cpu();
  const int64_t* r = bad_host.data_ptr<int64_t>();
  MOGEN_CHECK_ARG(r[0] == 0, "ids holds ", r[0], " id(s) out of range for a value head with V = ", a.vocab,
                  " rows (e.g. ", r[1], "); every id must be in [0, V)");
  return out;
}

}  // namespace cuda
}  // namespace mogen
