// dtype dispatch for host code: calls f(T{}) with T the C++ type of `dt`.
// (CUDA code dispatches in its .cu files over the cuda_fp16 / cuda_bf16 types.)
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/fusion_args.h"

namespace mogen {

template <typename F>
void dispatch_logits(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat32:
      f(float{});
      break;
    case DType::kBFloat16:
      f(c10::BFloat16{});
      break;
    case DType::kFloat16:
      f(c10::Half{});
      break;
  }
}

}  // namespace mogen
