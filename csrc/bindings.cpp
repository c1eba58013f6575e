// PYBIND11_MODULE(_C): the safetensors reader / writer and the K3 merge, which take
// file objects no dispatcher schema can carry. The tensor ops are registered with
// the dispatcher in library.cpp (torch.ops.mogen.*), from this same library.
#include <torch/csrc/utils/pybind.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ops/empty.h>

#include "common/checks.h"
#include "common/merge_spans.h"
#include "io/safetensors.h"
#include "ops.h"

#ifdef MOGEN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace {

namespace py = pybind11;

// ---------------------------------------------------------------- K3 / safetensors

using ReaderPtr = std::shared_ptr<mogen::io::Reader>;
using WriterPtr = std::shared_ptr<mogen::io::Writer>;
using SourceSpec = std::tuple<ReaderPtr, int64_t, std::string>;  // (reader, data offset, dtype)
using SinkSpec = std::tuple<WriterPtr, int64_t, std::string>;    // (writer, data offset, dtype)

mogen::DType merge_dtype(const std::string& d, const char* what) {
  if (d == "F32") return mogen::DType::kFloat32;
  if (d == "BF16") return mogen::DType::kBFloat16;
  if (d == "F16") return mogen::DType::kFloat16;
  MOGEN_CHECK_ARG(false, what, " has dtype ", d, "; merging takes F32, BF16 or F16");
  return mogen::DType::kFloat32;
}

mogen::DType tensor_dtype(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return mogen::DType::kFloat32;
    case at::kBFloat16:
      return mogen::DType::kBFloat16;
    case at::kHalf:
      return mogen::DType::kFloat16;
    default:
      MOGEN_CHECK_ARG(false, what, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
  return mogen::DType::kFloat32;
}

// True if `count` items of `itemsize` bytes at byte `offset` lie within [0, limit):
// checked arithmetic, so huge or negative values from a caller cannot wrap around.
bool span_within(int64_t offset, int64_t count, int64_t itemsize, int64_t limit) {
  int64_t bytes = 0, end = 0;
  return offset >= 0 && count >= 0 && !__builtin_mul_overflow(count, itemsize, &bytes) &&
         !__builtin_add_overflow(offset, bytes, &end) && end <= limit;
}

int64_t data_bytes(const mogen::io::Reader& r) { return r.file_size() - r.data_offset(); }
int64_t data_bytes(const mogen::io::Writer& w) { return w.file_size() - w.data_offset(); }

std::vector<mogen::MergeSource> make_sources(const std::vector<SourceSpec>& specs, int64_t numel) {
  MOGEN_CHECK_ARG(numel >= 0, "numel must be >= 0, got ", numel);
  std::vector<mogen::MergeSource> out;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& [reader, offset, dtype] = specs[i];
    MOGEN_CHECK_ARG(reader != nullptr && !reader->closed(), "sources[", i, "]: the reader is closed");
    mogen::MergeSource s;
    s.dtype = merge_dtype(dtype, "a source tensor");
    MOGEN_CHECK_ARG(span_within(offset, numel, mogen::dtype_size(s.dtype), data_bytes(*reader)), "sources[", i,
                    "]: ", numel, " elements of ", dtype, " at data offset ", offset, " are outside the data of ",
                    reader->path());
    s.data = reader->data(offset);
    s.reader = reader.get();
    s.offset = offset;
    out.push_back(s);
  }
  return out;
}

void merge_to_files(const std::vector<SourceSpec>& srcs, const std::vector<double>& coef,
                    const std::vector<SinkSpec>& dsts, int64_t numel) {
  std::vector<mogen::MergeSource> sources = make_sources(srcs, numel);
  std::vector<mogen::MergeSink> sinks;
  for (size_t k = 0; k < dsts.size(); ++k) {
    const auto& [writer, offset, dtype] = dsts[k];
    MOGEN_CHECK_ARG(writer != nullptr && writer->open(), "outputs[", k, "]: the writer is closed");
    mogen::MergeSink d;
    d.writer = writer.get();
    d.offset = offset;
    d.dtype = merge_dtype(dtype, "an output tensor");
    MOGEN_CHECK_ARG(span_within(offset, numel, mogen::dtype_size(d.dtype), data_bytes(*writer)), "outputs[", k,
                    "]: ", numel, " elements of ", dtype, " at data offset ", offset, " are outside the data of ",
                    writer->path());
    sinks.push_back(d);
  }
  py::gil_scoped_release nogil;
  mogen::cpu::merge_spans(sources, coef, sinks, numel);
}

// The staging buffers of the in-place CUDA merge, kept by mogen.merge_into across
// the tensors of one merge (an empty holder in builds without CUDA kernels).
struct StagingHolder {
#ifdef MOGEN_WITH_CUDA
  mogen::cuda::MergeStaging staging;
#endif
  // (pinned host bytes, device bytes) held now.
  std::tuple<int64_t, int64_t> nbytes() const {
#ifdef MOGEN_WITH_CUDA
    const auto n = [](const at::Tensor& t) { return t.defined() ? static_cast<int64_t>(t.nbytes()) : int64_t{0}; };
    return {n(staging.host), n(staging.device)};
#else
    return {0, 0};
#endif
  }
};
using StagingPtr = std::shared_ptr<StagingHolder>;

void merge_to_tensor(const std::vector<SourceSpec>& srcs, const std::vector<double>& coef, at::Tensor dst,
                     const StagingPtr& staging, int64_t chunk, int64_t fail_at_chunk) {
  MOGEN_CHECK_ARG(dst.is_contiguous(), "the destination tensor must be contiguous");
  std::vector<mogen::MergeSource> sources = make_sources(srcs, dst.numel());
  MOGEN_CHECK_ARG(coef.size() == sources.size(), "coefficients must be [N] = [", sources.size(), "], got ",
                  coef.size());
  const mogen::DType dt = tensor_dtype(dst, "the destination tensor");
#ifdef MOGEN_WITH_CUDA
  if (dst.is_cuda()) {
    StagingHolder local;
    StagingHolder& st = staging != nullptr ? *staging : local;
    py::gil_scoped_release nogil;
    mogen::cuda::merge_spans_to_device(sources, coef, dst, st.staging, chunk, fail_at_chunk);
    return;
  }
#endif
  MOGEN_CHECK_ARG(dst.device().is_cpu(), "this build of mogen_ext has no CUDA kernels (the destination is on ",
                  dst.device(), ")");
  (void)staging, (void)chunk, (void)fail_at_chunk;  // CUDA staging only
  mogen::MergeSink d;
  d.ptr = static_cast<uint8_t*>(dst.data_ptr());
  d.dtype = dt;
  py::gil_scoped_release nogil;
  mogen::cpu::merge_spans(sources, coef, {d}, dst.numel());
}

// K3's kernel on tensors already on the GPU (the GPU benchmark's kernel-only timing).
void merge_tensors(const std::vector<at::Tensor>& srcs, const std::vector<double>& coef, at::Tensor dst) {
#ifdef MOGEN_WITH_CUDA
  mogen::cuda::merge_tensors_on_device(srcs, coef, dst);
#else
  (void)srcs, (void)coef;
  MOGEN_CHECK_ARG(false, "merge_tensors runs the CUDA kernel, and this build of mogen_ext has no CUDA kernels "
                  "(the destination is on ", dst.device(), "); rebuild with MOGEN_FORCE_CUDA=1");
#endif
}

py::list reader_tensors(const mogen::io::Reader& r) {
  py::list out;
  for (const auto& t : r.tensors()) out.append(py::make_tuple(t.name, t.dtype, t.shape, t.begin, t.end));
  return out;
}

// A copy of data bytes [begin, end) as a uint8 CPU tensor.
at::Tensor reader_read(const mogen::io::Reader& r, int64_t begin, int64_t end, bool release) {
  MOGEN_CHECK_ARG(0 <= begin && begin <= end && end <= data_bytes(r), "byte range [", begin, ", ",
                  end, ") is outside the data of ", r.path());
  at::Tensor out = at::empty({end - begin}, at::TensorOptions().dtype(at::kByte));
  {
    py::gil_scoped_release nogil;
    const uint8_t* src = r.data(begin);
    uint8_t* dst = out.data_ptr<uint8_t>();
    constexpr int64_t kStep = int64_t{1} << 22;
    for (int64_t o = 0; o < end - begin; o += kStep) {
      const int64_t n = std::min(kStep, end - begin - o);
      std::memcpy(dst + o, src + o, static_cast<size_t>(n));
      if (release) r.release(begin + o, begin + o + n);
    }
  }
  return out;
}

void writer_write(const mogen::io::Writer& w, int64_t offset, const at::Tensor& t) {
  MOGEN_CHECK_ARG(t.device().is_cpu() && t.is_contiguous(), "write takes a contiguous CPU tensor");
  const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
  MOGEN_CHECK_ARG(span_within(offset, bytes, 1, data_bytes(w)), bytes, " bytes at data offset ", offset,
                  " are outside the data of ", w.path());
  const void* p = t.data_ptr();
  py::gil_scoped_release nogil;
  w.write(offset, p, bytes);
}

// Bytes [src_offset, src_offset + nbytes) of a mapped file written to a file being written (no copy through Python).
void writer_copy(const mogen::io::Writer& w, int64_t offset, const mogen::io::Reader& r, int64_t src_offset,
                 int64_t nbytes, bool release) {
  MOGEN_CHECK_ARG(span_within(src_offset, nbytes, 1, data_bytes(r)), nbytes, " bytes at data offset ", src_offset,
                  " are outside the data of ", r.path());
  MOGEN_CHECK_ARG(span_within(offset, nbytes, 1, data_bytes(w)), nbytes, " bytes at data offset ", offset,
                  " are outside the data of ", w.path());
  py::gil_scoped_release nogil;
  constexpr int64_t kStep = int64_t{1} << 22;
  for (int64_t o = 0; o < nbytes; o += kStep) {
    const int64_t n = std::min(kStep, nbytes - o);
    w.write(offset + o, r.data(src_offset + o), n);
    if (release) r.release(src_offset + o, src_offset + o + n);
  }
}

void bind_safetensors(py::module_& m) {
  auto base = py::register_exception<mogen::io::Error>(m, "SafetensorsError", PyExc_ValueError);
  py::register_exception<mogen::io::OsError>(m, "SafetensorsOSError", PyExc_OSError);
  (void)base;
  py::class_<mogen::io::Reader, ReaderPtr>(m, "SafetensorsReader",
                                           "A memory-mapped, validated safetensors file (docs/design.md section 3)")
      .def(py::init<const std::string&>(), py::arg("path"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("path", &mogen::io::Reader::path)
      .def_property_readonly("file_size", &mogen::io::Reader::file_size)
      .def_property_readonly("data_offset", &mogen::io::Reader::data_offset)
      .def_property_readonly("metadata", &mogen::io::Reader::metadata)
      .def_property_readonly("closed", &mogen::io::Reader::closed)
      .def("tensors", &reader_tensors, "[(name, dtype, shape, begin, end)] in data order")
      .def("read", &reader_read, py::arg("begin"), py::arg("end"), py::arg("release") = true,
           "a uint8 CPU tensor holding a copy of data bytes [begin, end)")
      .def("release", &mogen::io::Reader::release, py::arg("begin"), py::arg("end"))
      .def("prefetch", &mogen::io::Reader::prefetch, py::arg("begin"), py::arg("end"))
      .def("close", &mogen::io::Reader::close);
  py::class_<mogen::io::Writer, WriterPtr>(m, "SafetensorsWriter",
                                           "A pre-sized safetensors file written at tensor offsets")
      .def(py::init([](const std::string& path,
                       const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>>& entries,
                       const std::map<std::string, std::string>& metadata) {
             std::vector<mogen::io::TensorEntry> es;
             for (const auto& [name, dtype, shape] : entries) {
               mogen::io::TensorEntry e;
               e.name = name;
               e.dtype = dtype;
               e.shape = shape;
               es.push_back(std::move(e));
             }
             return std::make_shared<mogen::io::Writer>(path, es, metadata);
           }),
           py::arg("path"), py::arg("entries"), py::arg("metadata"))
      .def_property_readonly("path", &mogen::io::Writer::path)
      .def_property_readonly("file_size", &mogen::io::Writer::file_size)
      .def_property_readonly("data_offset", &mogen::io::Writer::data_offset)
      .def_property_readonly("is_open", &mogen::io::Writer::open)
      .def("tensors",
           [](const mogen::io::Writer& w) {
             py::list out;
             for (const auto& t : w.tensors()) out.append(py::make_tuple(t.name, t.dtype, t.shape, t.begin, t.end));
             return out;
           })
      .def("write", &writer_write, py::arg("offset"), py::arg("tensor"))
      .def("copy_from", &writer_copy, py::arg("offset"), py::arg("reader"), py::arg("src_offset"), py::arg("nbytes"),
           py::arg("release") = true)
      .def("finish", &mogen::io::Writer::finish, py::arg("fsync") = true, py::call_guard<py::gil_scoped_release>())
      .def("abort", &mogen::io::Writer::abort);
  m.def("merge_to_files", &merge_to_files,
        "K3: out[k] = sum_i coef[k * N + i] * src_i written to (writer, offset) outputs", py::arg("sources"),
        py::arg("coef"), py::arg("outputs"), py::arg("numel"));
  py::class_<StagingHolder, StagingPtr>(m, "MergeStaging",
                                        "Pinned and device staging buffers of the CUDA in-place merge, reused "
                                        "across the tensors of one merge")
      .def(py::init<>())
      .def_property_readonly("nbytes", &StagingHolder::nbytes, "(pinned host bytes, device bytes) held");
  m.def("merge_to_tensor", &merge_to_tensor,
        "K3: dst = sum_i coef[i] * src_i, in place (CPU or CUDA). CUDA only: `staging` (a MergeStaging reused "
        "across calls), `chunk` (elements per staged chunk, 0 = automatic), `fail_at_chunk` (tests: throw before "
        "staging that chunk)",
        py::arg("sources"), py::arg("coef"), py::arg("dst"), py::arg("staging") = StagingPtr(), py::arg("chunk") = 0, py::arg("fail_at_chunk") = -1);
  m.def("merge_tensors", &merge_tensors,
        "K3's CUDA kernel alone: dst = sum_i coef[i] * sources[i], every tensor contiguous on dst's GPU, on the "
        "current stream (no synchronisation)",
        py::arg("sources"), py::arg("coef"), py::arg("dst"));
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
  bind_safetensors(m);
}
