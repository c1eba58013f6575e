// K3 on CUDA, torch-facing side: merges memory-mapped checkpoint spans straight
// into a CUDA tensor (a live model's parameter).
//
// Per chunk of kChunk elements and per slot s of two (double buffering):
//   host:  copy each source's chunk from the mapping into pinned slot s
//          (parallel), then release the mapped pages behind the cursor;
//   copy stream:    cudaMemcpyAsync pinned slot s -> device slot s, record copied[s];
//   compute stream: wait copied[s], launch_merge(device slot s -> dst chunk), record done[s].
// Before slot s is reused (chunk c + 2) the host waits for done[s]: the host copy of
// chunk c + 1 overlaps the transfer and kernel of chunk c, and transfers overlap kernels.
#include <algorithm>
#include <cstring>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/checks.h"
#include "common/merge_spans.h"
#include "cuda/merge_launch.h"
#include "ops.h"

namespace mogen {
namespace cuda {
namespace {

constexpr int64_t kChunk = int64_t{1} << 22;  // elements per staged chunk (8 MB per bf16 source)

struct Events {
  cudaEvent_t copied[2] = {nullptr, nullptr};
  cudaEvent_t done[2] = {nullptr, nullptr};
  Events() {
    for (int s = 0; s < 2; ++s) {
      C10_CUDA_CHECK(cudaEventCreateWithFlags(&copied[s], cudaEventDisableTiming));
      C10_CUDA_CHECK(cudaEventCreateWithFlags(&done[s], cudaEventDisableTiming));
    }
  }
  ~Events() {
    for (int s = 0; s < 2; ++s) {
      if (copied[s] != nullptr) cudaEventDestroy(copied[s]);
      if (done[s] != nullptr) cudaEventDestroy(done[s]);
    }
  }
};

}  // namespace

void merge_spans_to_device(const std::vector<MergeSource>& srcs, const std::vector<double>& coef, at::Tensor& dst,
                           bool release) {
  MOGEN_CHECK_ARG(dst.is_cuda(), "the CUDA merge got a destination on ", dst.device());
  MOGEN_CHECK_ARG(dst.is_contiguous(), "the destination tensor must be contiguous");
  const int32_t ns = static_cast<int32_t>(srcs.size());
  MOGEN_CHECK_ARG(ns >= 1 && ns <= kMaxMergeInputs, "the CUDA merge takes 1 to ", kMaxMergeInputs,
                  " sources, got ", ns);
  MOGEN_CHECK_ARG(static_cast<int32_t>(coef.size()) == ns, "coefficients must be [N] = [", ns, "], got ",
                  coef.size());
  DType out_dtype = DType::kFloat32;
  switch (dst.scalar_type()) {
    case at::kFloat: out_dtype = DType::kFloat32; break;
    case at::kBFloat16: out_dtype = DType::kBFloat16; break;
    case at::kHalf: out_dtype = DType::kFloat16; break;
    default: MOGEN_CHECK_ARG(false, "the destination must be float32, bfloat16 or float16, got ", dst.scalar_type());
  }
  const int64_t numel = dst.numel();
  if (numel == 0) return;
  const c10::cuda::CUDAGuard guard(dst.device());
  const cudaStream_t compute = c10::cuda::getCurrentCUDAStream(dst.get_device()).stream();
  const cudaStream_t copy = c10::cuda::getStreamFromPool(false, dst.get_device()).stream();

  // Per slot, each source's chunk at a 256-byte-aligned offset.
  std::vector<int64_t> off(static_cast<size_t>(ns) + 1, 0);
  for (int32_t i = 0; i < ns; ++i) off[i + 1] = off[i] + (kChunk * dtype_size(srcs[i].dtype) + 255) / 256 * 256;
  const int64_t slot_bytes = off[ns];
  at::Tensor pinned = at::empty({2 * slot_bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  at::Tensor staged = at::empty({2 * slot_bytes}, dst.options().dtype(at::kByte));
  uint8_t* host = pinned.data_ptr<uint8_t>();
  uint8_t* dev = staged.data_ptr<uint8_t>();
  uint8_t* out = static_cast<uint8_t*>(dst.data_ptr());
  const int64_t out_isz = dtype_size(out_dtype);
  Events ev;

  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  for (int64_t c = 0; c < chunks; ++c) {
    const int s = static_cast<int>(c & 1);
    const int64_t lo = c * kChunk, n = std::min(kChunk, numel - lo);
    if (c >= 2) C10_CUDA_CHECK(cudaEventSynchronize(ev.done[s]));  // slot s is free again
    // Host: mapped pages -> pinned slot (the page faults and copies run on all threads).
    at::parallel_for(0, ns, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t isz = dtype_size(srcs[i].dtype);
        std::memcpy(host + s * slot_bytes + off[i], srcs[i].data + lo * isz, static_cast<size_t>(n * isz));
        if (release && srcs[i].reader != nullptr)
          srcs[i].reader->release(srcs[i].offset + lo * isz, srcs[i].offset + (lo + n) * isz);
      }
    });
    MergeInputs in;
    in.num_inputs = ns;
    for (int32_t i = 0; i < ns; ++i) {
      const int64_t bytes = n * dtype_size(srcs[i].dtype);
      C10_CUDA_CHECK(cudaMemcpyAsync(dev + s * slot_bytes + off[i], host + s * slot_bytes + off[i],
                                     static_cast<size_t>(bytes), cudaMemcpyHostToDevice, copy));
      in.data[i] = dev + s * slot_bytes + off[i];
      in.dtype[i] = srcs[i].dtype;
      in.coef[i] = static_cast<float>(coef[i]);
      in.coef_lo[i] = static_cast<float>(coef[i] - static_cast<double>(in.coef[i]));
    }
    C10_CUDA_CHECK(cudaEventRecord(ev.copied[s], copy));
    C10_CUDA_CHECK(cudaStreamWaitEvent(compute, ev.copied[s], 0));
    C10_CUDA_CHECK(cuda_impl::launch_merge(in, out + lo * out_isz, out_dtype, n, compute));
    C10_CUDA_CHECK(cudaEventRecord(ev.done[s], compute));
  }
  // The staging buffers are freed on return: wait for the last two chunks.
  for (int s = 0; s < 2; ++s)
    if (chunks > s) C10_CUDA_CHECK(cudaEventSynchronize(ev.done[s]));
  // As on CPU: fault-around may have mapped pages behind a released chunk again.
  if (release)
    for (const MergeSource& src : srcs)
      if (src.reader != nullptr) src.reader->release(src.offset, src.offset + numel * dtype_size(src.dtype));
}

}  // namespace cuda
}  // namespace mogen
