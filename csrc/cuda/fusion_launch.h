// Raw-pointer launchers of the K1 CUDA kernels. Torch-free: included by
// cuda/fusion.cu (nvcc, no torch headers) and cuda/fusion.cpp (the torch side).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/fusion_args.h"

namespace mogen {
namespace cuda_impl {

// Top-k above this falls back to writing the row and sorting it on the torch side:
// the block-level selection keeps k candidates in one 2048-slot sort tile.
constexpr int64_t kMaxBlockTopk = 1024;

struct FusionPlan {
  int64_t chunk = 0;       // vocab elements per block (all inputs)
  int64_t lse_chunks = 0;  // blocks per (row, input) in the log-sum-exp pass
  int64_t out_chunks = 0;  // blocks per row in the output / top-k pass
  int64_t scratch_floats = 0;  // (max, sum) partials: 2 floats per (row, input, lse chunk)
};

// Splits the vocabulary so that small batches still fill the GPU. Fails (and
// leaves *plan alone) when the device's attributes cannot be read.
cudaError_t plan_fusion(const FusionArgs& a, int device, FusionPlan* plan);

// out: fp32 [B, V_b] contiguous. scratch: plan.scratch_floats floats.
cudaError_t launch_fused_log_ratio(const FusionArgs& a, const FusionPlan& p, float* scratch, float* out,
                                   cudaStream_t stream);

// Per (row, chunk) the chunk's best k, best first: cand_values / cand_ids are
// [B, out_chunks, k]; slots a short chunk cannot fill get id -1. k <= kMaxBlockTopk.
cudaError_t launch_fused_log_ratio_topk(const FusionArgs& a, const FusionPlan& p, float* scratch, int64_t k,
                                        float* cand_values, int64_t* cand_ids, cudaStream_t stream);

// Per (row, chunk) the chunk's best score and its id as `better` ranks them:
// cand_values / cand_ids are [B, out_chunks] (every chunk holds at least one id).
cudaError_t launch_fused_log_ratio_argmax(const FusionArgs& a, const FusionPlan& p, float* scratch,
                                          float* cand_values, int64_t* cand_ids, cudaStream_t stream);

}  // namespace cuda_impl
}  // namespace mogen
