// PYBIND11_MODULE(_C): every op, routed to its CPU or CUDA implementation by device.
#include <torch/csrc/utils/pybind.h>

#include <string>

#include "common/checks.h"
#include "ops.h"

#ifdef MOGEN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace {

bool on_cuda(const at::Tensor& t) {
#ifdef MOGEN_WITH_CUDA
  return t.is_cuda();
#else
  MOGEN_CHECK_ARG(!t.is_cuda(), "this build of mogen_ext has no CUDA kernels (base_logits is on ", t.device(),
                  "); rebuild with a CUDA toolkit and a CUDA build of torch");
  return false;
#endif
}

at::Tensor fused_log_ratio(MOGEN_FUSION_PARAMS) {
#ifdef MOGEN_WITH_CUDA
  if (on_cuda(base))
    return mogen::cuda::fused_log_ratio(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped);
#else
  on_cuda(base);
#endif
  return mogen::cpu::fused_log_ratio(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped);
}

std::tuple<at::Tensor, at::Tensor> fused_log_ratio_topk(MOGEN_FUSION_PARAMS, int64_t k) {
#ifdef MOGEN_WITH_CUDA
  if (on_cuda(base))
    return mogen::cuda::fused_log_ratio_topk(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp,
                                             unmapped, k);
#else
  on_cuda(base);
#endif
  return mogen::cpu::fused_log_ratio_topk(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp,
                                          unmapped, k);
}

pybind11::dict build_info() {
  pybind11::dict d;
#ifdef MOGEN_WITH_CUDA
  d["compiled_with_cuda"] = true;
  d["cudart_version_compiled"] = CUDART_VERSION;
#else
  d["compiled_with_cuda"] = false;
#endif
  d["cxx_standard"] = static_cast<long>(__cplusplus);
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mogen compiled kernels (CPU always, CUDA when built with it)";
  m.def("compiled_with_cuda", []() {
#ifdef MOGEN_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("build_info", &build_info);
  m.def("fused_log_ratio", &fused_log_ratio, "K1: fused log-ratio scores [B, V_b] float32", pybind11::arg("base"),
        pybind11::arg("experts"), pybind11::arg("refs"), pybind11::arg("maps"), pybind11::arg("weights"),
        pybind11::arg("inv_temps"), pybind11::arg("beta"), pybind11::arg("base_inv_temp"), pybind11::arg("unmapped"));
  m.def("fused_log_ratio_topk", &fused_log_ratio_topk, "K1: the k best fused scores per row (values, ids)",
        pybind11::arg("base"), pybind11::arg("experts"), pybind11::arg("refs"), pybind11::arg("maps"),
        pybind11::arg("weights"), pybind11::arg("inv_temps"), pybind11::arg("beta"), pybind11::arg("base_inv_temp"),
        pybind11::arg("unmapped"), pybind11::arg("k"));
}
