// The spans one K3 step reads and writes, host side: sources are byte ranges of
// memory-mapped safetensors files, outputs are either memory (a live parameter,
// a pinned buffer) or a range of a safetensors file being written. Torch-free.
#pragma once

#include <cstdint>

#include "common/merge_args.h"
#include "io/safetensors.h"

namespace mogen {

struct MergeSource {
  const uint8_t* data = nullptr;       // first element
  DType dtype = DType::kFloat32;
  const io::Reader* reader = nullptr;  // for releasing pages behind the cursor (may be null)
  int64_t offset = 0;                  // data offset of `data` in `reader`
};

struct MergeSink {
  uint8_t* ptr = nullptr;              // memory output (when writer is null)
  const io::Writer* writer = nullptr;  // file output: data offset `offset` in `writer`
  int64_t offset = 0;
  DType dtype = DType::kFloat32;
};

}  // namespace mogen
