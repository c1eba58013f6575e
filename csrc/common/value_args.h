// Plain description of one K2 (top-k value scores) problem:
//   out[b, c] = sum_h hidden[b, h] * weight[ids[b, c], h] + bias[ids[b, c]]
// fp32 accumulation over fp32 / bf16 / fp16 inputs (each tensor its own dtype).
//
// Torch-free on purpose: the CUDA kernel (.cu) and the CPU kernel share it, and
// .cu files must compile without torch headers (see docs/design.md section 4).
#pragma once

#include <cstdint>

#include "common/fusion_args.h"  // DType, MOGEN_HD

namespace mogen {

struct ValueScoresArgs {
  int64_t batch = 0;   // B
  int64_t k = 0;       // candidates per row
  int64_t hidden_size = 0;  // H
  int64_t vocab = 0;   // V: rows of the value head

  // hidden [B, H]: H contiguous, any row stride (in elements).
  const void* hidden = nullptr;
  int64_t hidden_row_stride = 0;
  DType hidden_dtype = DType::kFloat32;

  // weight [V, H]: H contiguous, any row stride (in elements).
  const void* weight = nullptr;
  int64_t weight_row_stride = 0;
  DType weight_dtype = DType::kFloat32;

  // bias [V] or nullptr; element v at v * bias_stride.
  const void* bias = nullptr;
  int64_t bias_stride = 1;
  DType bias_dtype = DType::kFloat32;

  // ids [B, k], int32 or int64, element (b, c) at b * ids_row_stride + c * ids_col_stride.
  // Every id must be in [0, V): the CPU kernel checks them all before it reads
  // a row, the CUDA kernel skips (and reports) any that is not.
  const void* ids = nullptr;
  bool ids_int64 = true;
  int64_t ids_row_stride = 0;
  int64_t ids_col_stride = 1;

  MOGEN_HD int64_t id(int64_t b, int64_t c) const {
    const int64_t off = b * ids_row_stride + c * ids_col_stride;
    return ids_int64 ? static_cast<const int64_t*>(ids)[off]
                     : static_cast<int64_t>(static_cast<const int32_t*>(ids)[off]);
  }
};

}  // namespace mogen
