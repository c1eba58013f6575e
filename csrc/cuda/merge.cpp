// K3 on CUDA, torch-facing side: merges checkpoint spans straight into a CUDA
// tensor (a live model's parameter).
//
// Per chunk c of `chunk` elements, slot s = c % 2 (double buffering):
//   host:  wait done[s] (slot s free again), pread each source's chunk into
//          pinned slot s (parallel over sources);
//   copy stream:    cudaMemcpyAsync pinned slot s -> device slot s, record copied[s];
//   compute stream: wait copied[s], launch_merge(device slot s -> dst chunk), record done[s].
// The host copy of chunk c + 1 overlaps the transfer and kernel of chunk c.
//
// Ordering of the buffers, which two streams and the host share:
// - the device staging comes from the caching allocator on the compute stream,
//   which may hand out a block freed there with work still queued; so the copy
//   stream first waits for everything queued on the compute stream, and the block
//   is marked as used by the copy stream (recordStream);
// - on every exit, a normal return or an exception thrown anywhere in the loop,
//   both streams are synchronised before the function returns, so no copy or
//   kernel still uses a buffer that is reused or handed back to its allocator;
// - staging holds min(numel, chunk) elements per source and slot, chunk bounded
//   by a memory budget, and is kept by the caller across tensors (MergeStaging).
#include <algorithm>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDACachingAllocator.h>
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

constexpr int64_t kMaxChunk = int64_t{1} << 22;       // elements per staged chunk (8 MB per bf16 source)
constexpr int64_t kMinChunk = int64_t{1} << 16;
constexpr int64_t kSlotBudget = int64_t{64} << 20;    // bytes of one slot, all sources together

struct Event {
  cudaEvent_t e = nullptr;
  Event() { C10_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)); }
  ~Event() {
    if (e != nullptr) cudaEventDestroy(e);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

// Synchronises both streams when it goes out of scope, however the scope is left.
// Errors are ignored here: a failed synchronisation leaves a sticky error that the
// next CUDA call reports, and a destructor must not throw.
struct DrainOnExit {
  cudaStream_t copy, compute;
  ~DrainOnExit() {
    cudaStreamSynchronize(copy);
    cudaStreamSynchronize(compute);
  }
};

DType dtype_of(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: MOGEN_CHECK_ARG(false, what, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
  return DType::kFloat32;
}

DType out_dtype_of(const at::Tensor& dst) { return dtype_of(dst, "the destination"); }

// Elements per chunk: as many as kSlotBudget allows for one slot of every source,
// within [kMinChunk, kMaxChunk], never more than the tensor holds.
int64_t chunk_elements(const std::vector<MergeSource>& srcs, int64_t numel, int64_t asked) {
  if (asked > 0) return std::min(asked, numel);
  int64_t per_element = 0;
  for (const MergeSource& s : srcs) per_element += dtype_size(s.dtype);
  const int64_t fit = std::clamp(kSlotBudget / per_element, kMinChunk, kMaxChunk);
  return std::min(fit, numel);
}

// Grows `st` to at least 2 * slot_bytes on host (pinned) and on dst's device (on
// the current stream), and marks the device block as used by `copy` too.
void ensure_staging(MergeStaging& st, int64_t slot_bytes, const at::Tensor& dst, const c10::cuda::CUDAStream& copy) {
  const int64_t need = 2 * slot_bytes;
  if (!st.host.defined() || st.host.numel() < need) {
    st.host = at::Tensor();  // the old block goes back first (every use of it has completed)
    st.host = at::empty({need}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  }
  if (!st.device.defined() || st.device.numel() < need || st.device.device() != dst.device()) {
    st.device = at::Tensor();
    st.device = at::empty({need}, dst.options().dtype(at::kByte));
  }
  c10::cuda::CUDACachingAllocator::recordStream(st.device.storage().data_ptr(), copy);
}

// Host side of one chunk: elements [lo, lo + n) of every source read into `slot`
// (pinned), in parallel over sources.
void stage_on_host(const std::vector<MergeSource>& srcs, int64_t lo, int64_t n, uint8_t* slot,
                   const std::vector<int64_t>& off) {
  at::parallel_for(0, static_cast<int64_t>(srcs.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) read_source(srcs[i], lo, n, slot + off[i]);
  });
}

MergeInputs chunk_inputs(const std::vector<MergeSource>& srcs, const std::vector<double>& coef, uint8_t* dev,
                         const std::vector<int64_t>& off) {
  MergeInputs in;
  in.num_inputs = static_cast<int32_t>(srcs.size());
  for (size_t i = 0; i < srcs.size(); ++i) {
    in.data[i] = dev + off[i];
    in.dtype[i] = srcs[i].dtype;
    in.coef[i] = static_cast<float>(coef[i]);
    in.coef_lo[i] = static_cast<float>(coef[i] - static_cast<double>(in.coef[i]));
    in.coef64[i] = coef[i];
  }
  return in;
}

}  // namespace

void merge_spans_to_device(const std::vector<MergeSource>& srcs, const std::vector<double>& coef, at::Tensor& dst,
                           MergeStaging& staging, int64_t chunk, int64_t fail_at_chunk) {
  MOGEN_CHECK_ARG(dst.is_cuda(), "the CUDA merge got a destination on ", dst.device());
  MOGEN_CHECK_ARG(dst.is_contiguous(), "the destination tensor must be contiguous");
  const int32_t ns = static_cast<int32_t>(srcs.size());
  MOGEN_CHECK_ARG(ns >= 1 && ns <= kMaxMergeInputs, "the CUDA merge takes 1 to ", kMaxMergeInputs,
                  " sources, got ", ns);
  MOGEN_CHECK_ARG(static_cast<int32_t>(coef.size()) == ns, "coefficients must be [N] = [", ns, "], got ",
                  coef.size());
  MOGEN_CHECK_ARG(chunk >= 0, "chunk must be >= 0 (0: automatic), got ", chunk);
  const DType out_dtype = out_dtype_of(dst);
  const int64_t numel = dst.numel();
  if (numel == 0) return;
  const c10::cuda::CUDAGuard guard(dst.device());
  const cudaStream_t compute = c10::cuda::getCurrentCUDAStream(dst.get_device()).stream();
  const c10::cuda::CUDAStream copy_stream = c10::cuda::getStreamFromPool(false, dst.get_device());
  const cudaStream_t copy = copy_stream.stream();
  const int64_t step = chunk_elements(srcs, numel, chunk);

  // Per slot, each source's chunk at a 256-byte-aligned offset.
  std::vector<int64_t> off(static_cast<size_t>(ns) + 1, 0);
  for (int32_t i = 0; i < ns; ++i) off[i + 1] = off[i] + (step * dtype_size(srcs[i].dtype) + 255) / 256 * 256;
  const int64_t slot_bytes = off[ns];
  Event ready, copied[2], done[2];
  const DrainOnExit drain{copy, compute};  // after the events: runs before they are destroyed
  ensure_staging(staging, slot_bytes, dst, copy_stream);
  // The copy stream writes the device staging only after the compute stream's queued work.
  C10_CUDA_CHECK(cudaEventRecord(ready.e, compute));
  C10_CUDA_CHECK(cudaStreamWaitEvent(copy, ready.e, 0));
  uint8_t* host = staging.host.data_ptr<uint8_t>();
  uint8_t* dev = staging.device.data_ptr<uint8_t>();
  uint8_t* out = static_cast<uint8_t*>(dst.data_ptr());
  const int64_t out_isz = dtype_size(out_dtype);

  const int64_t chunks = (numel + step - 1) / step;
  for (int64_t c = 0; c < chunks; ++c) {
    const int s = static_cast<int>(c & 1);
    const int64_t lo = c * step, n = std::min(step, numel - lo);
    if (c >= 2) C10_CUDA_CHECK(cudaEventSynchronize(done[s].e));  // slot s is free again
    MOGEN_CHECK(c != fail_at_chunk, "merge into ", dst.device(), " stopped before chunk ", c,
                " (fail_at_chunk, a test of the cleanup path)");
    stage_on_host(srcs, lo, n, host + s * slot_bytes, off);
    for (int32_t i = 0; i < ns; ++i)
      C10_CUDA_CHECK(cudaMemcpyAsync(dev + s * slot_bytes + off[i], host + s * slot_bytes + off[i],
                                     static_cast<size_t>(n * dtype_size(srcs[i].dtype)), cudaMemcpyHostToDevice,
                                     copy));
    C10_CUDA_CHECK(cudaEventRecord(copied[s].e, copy));
    C10_CUDA_CHECK(cudaStreamWaitEvent(compute, copied[s].e, 0));
    const MergeInputs in = chunk_inputs(srcs, coef, dev + s * slot_bytes, off);
    C10_CUDA_CHECK(cuda_impl::launch_merge(in, out + lo * out_isz, out_dtype, n, compute));
    C10_CUDA_CHECK(cudaEventRecord(done[s].e, compute));
  }
}

void merge_tensors_on_device(const std::vector<at::Tensor>& srcs, const std::vector<double>& coef, at::Tensor& dst) {
  MOGEN_CHECK_ARG(dst.is_cuda() && dst.is_contiguous(), "the destination must be a contiguous CUDA tensor, got ",
                  dst.device(), dst.is_contiguous() ? "" : " (not contiguous)");
  const int32_t ns = static_cast<int32_t>(srcs.size());
  MOGEN_CHECK_ARG(ns >= 1 && ns <= kMaxMergeInputs, "the CUDA merge takes 1 to ", kMaxMergeInputs,
                  " sources, got ", ns);
  MOGEN_CHECK_ARG(static_cast<int32_t>(coef.size()) == ns, "coefficients must be [N] = [", ns, "], got ",
                  coef.size());
  MergeInputs in;
  in.num_inputs = ns;
  for (int32_t i = 0; i < ns; ++i) {
    const at::Tensor& s = srcs[i];
    MOGEN_CHECK_ARG(s.device() == dst.device() && s.is_contiguous() && s.numel() == dst.numel(), "sources[", i,
                    "] must be a contiguous tensor of ", dst.numel(), " elements on ", dst.device(), ", got ",
                    s.numel(), " elements on ", s.device(), s.is_contiguous() ? "" : " (not contiguous)");
    in.data[i] = s.data_ptr();
    in.dtype[i] = dtype_of(s, "a source");
    in.coef[i] = static_cast<float>(coef[i]);
    in.coef_lo[i] = static_cast<float>(coef[i] - static_cast<double>(in.coef[i]));
    in.coef64[i] = coef[i];
  }
  const c10::cuda::CUDAGuard guard(dst.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dst.get_device()).stream();
  C10_CUDA_CHECK(cuda_impl::launch_merge(in, dst.data_ptr(), out_dtype_of(dst), dst.numel(), stream));
}

}  // namespace cuda
}  // namespace mogen
