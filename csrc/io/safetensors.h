// safetensors files in C++ (docs/design.md section 3): a memory-mapped, validated
// reader and a writer of pre-sized files. Torch-free: errors are thrown as
// mogen::io::Error (a std::runtime_error) and turned into Python exceptions by
// the binding.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace mogen {
namespace io {

// A file that is not valid safetensors, or a request that does not fit it.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The operating system refused (open, map, write, fsync, ...).
struct OsError : Error {
  using Error::Error;
};

// Bytes per element of a safetensors dtype string ("F32", "BF16", ...); 0 if unknown.
int64_t dtype_itemsize(const std::string& dtype);

constexpr int64_t kMaxHeaderBytes = 100 * 1000 * 1000;

struct TensorEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  int64_t begin = 0;  // byte offsets relative to the start of the data section
  int64_t end = 0;
  int64_t numel() const;
};

// One safetensors file, mapped read-only. Every check of docs/design.md section 3 runs in
// the constructor: the header length against the file's size (and 100 MB), a
// strict JSON parse, known dtypes, non-negative shapes, numel * itemsize equal to
// the byte range (checked arithmetic), and ranges contiguous from 0 to the end of
// the file without gaps, overlaps or duplicate names.
class Reader {
 public:
  explicit Reader(const std::string& path);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  const std::string& path() const { return path_; }
  int64_t file_size() const { return file_size_; }
  int64_t data_offset() const { return data_offset_; }  // 8 + header length
  const std::vector<TensorEntry>& tensors() const { return tensors_; }  // in file order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Address of byte `offset` of the data section (valid while the reader is open).
  const uint8_t* data(int64_t offset = 0) const;
  // Drops this process's mapping of the pages covering data bytes [begin, end)
  // (MADV_DONTNEED): resident memory falls, the page cache keeps them, and a
  // later read maps them again.
  void release(int64_t begin, int64_t end) const;
  // Asks the kernel to read data bytes [begin, end) ahead (MADV_WILLNEED).
  void prefetch(int64_t begin, int64_t end) const;
  // Copies data bytes [offset, offset + len) into `dst` with pread: nothing is
  // mapped, so nothing needs releasing (thread-safe).
  void read(int64_t offset, int64_t len, void* dst) const;
  void close();
  bool closed() const { return base_ == nullptr; }

 private:
  void parse_header(const char* text, int64_t len);
  std::string path_;
  int fd_ = -1;
  uint8_t* base_ = nullptr;  // the whole file, mapped
  int64_t map_len_ = 0;
  int64_t file_size_ = 0;
  int64_t data_offset_ = 0;
  std::vector<TensorEntry> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A safetensors file written in place: the constructor lays out the header for
// `entries` (in the given order, data contiguous), creates `path` (which must
// not exist), writes the header and sizes the file; tensors are then written at
// their offsets in any order and from any thread, and finish() flushes, fsyncs
// (if asked) and closes. A writer destroyed unfinished removes its file.
class Writer {
 public:
  Writer(const std::string& path, const std::vector<TensorEntry>& entries,
         const std::map<std::string, std::string>& metadata);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  const std::string& path() const { return path_; }
  int64_t file_size() const { return file_size_; }
  int64_t data_offset() const { return data_offset_; }
  const std::vector<TensorEntry>& tensors() const { return entries_; }  // begin/end filled in
  int fd() const { return fd_; }
  // Writes `len` bytes at data offset `offset`; thread-safe (pwrite).
  void write(int64_t offset, const void* src, int64_t len) const;
  void finish(bool fsync);
  void abort();  // closes and removes the file
  bool open() const { return fd_ >= 0; }

 private:
  std::string path_;
  int fd_ = -1;
  int64_t file_size_ = 0;
  int64_t data_offset_ = 0;
  std::vector<TensorEntry> entries_;
};

// pwrite of all `len` bytes at absolute file offset `pos`, retrying short
// writes and EINTR; throws Error naming `path` on failure.
void pwrite_all(int fd, const void* src, int64_t len, int64_t pos, const std::string& path);

}  // namespace io
}  // namespace mogen
