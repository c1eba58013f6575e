// The spans one K3 step reads and writes, host side: sources are byte ranges of
// safetensors files (read with pread, see read_source), outputs are either memory (a live parameter,
// a pinned buffer) or a range of a safetensors file being written. Torch-free.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/merge_args.h"
#include "io/safetensors.h"

namespace mogen {

struct MergeSource {
  const uint8_t* data = nullptr;       // first element, in memory (used when reader is null)
  DType dtype = DType::kFloat32;
  const io::Reader* reader = nullptr;  // the file the elements are read from (may be null)
  int64_t offset = 0;                  // data offset of the first element in `reader`
};

// Elements [first, first + n) of `s` into `dst`. A file-backed source is read
// with pread rather than through its mapping: the bytes land in a buffer that is
// reused block after block (cache-hot), no page is mapped, so nothing has to be
// released again, and no page-table change sends TLB shootdowns to the other
// threads (mapping and releasing 256 KB blocks cost as much as the merge itself).
inline void read_source(const MergeSource& s, int64_t first, int64_t n, uint8_t* dst) {
  const int64_t isz = dtype_size(s.dtype);
  if (s.reader != nullptr) s.reader->read(s.offset + first * isz, n * isz, dst);
  else std::memcpy(dst, s.data + first * isz, static_cast<size_t>(n * isz));
}

struct MergeSink {
  uint8_t* ptr = nullptr;              // memory output (when writer is null)
  const io::Writer* writer = nullptr;  // file output: data offset `offset` in `writer`
  int64_t offset = 0;
  DType dtype = DType::kFloat32;
};

}  // namespace mogen
