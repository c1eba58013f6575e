// safetensors reader (mmap, validated) and writer (pre-sized, pwrite at offsets).
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>

namespace mogen {
namespace io {
namespace {

// Length of the well-formed UTF-8 sequence (RFC 3629: no overlong forms, no
// UTF-16 surrogates, nothing above U+10FFFF) at p[0, n), or 0 if there is none.
int utf8_length(const unsigned char* p, int64_t n) {
  const unsigned char c = p[0];
  if (c < 0x80) return 1;
  int len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (c >= 0xC2 && c <= 0xDF) len = 2;
  else if (c == 0xE0) len = 3, lo = 0xA0;
  else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) len = 3;
  else if (c == 0xED) len = 3, hi = 0x9F;
  else if (c == 0xF0) len = 4, lo = 0x90;
  else if (c >= 0xF1 && c <= 0xF3) len = 4;
  else if (c == 0xF4) len = 4, hi = 0x8F;
  else return 0;
  if (n < len || p[1] < lo || p[1] > hi) return 0;
  for (int k = 2; k < len; ++k)
    if (p[k] < 0x80 || p[k] > 0xBF) return 0;
  return len;
}

// `s` with every byte that is not part of well-formed UTF-8 written as \xNN, so
// that an error message quoting bytes of a corrupt file still reaches Python as
// a message (pybind11 would raise a bare UnicodeDecodeError instead).
std::string printable(const std::string& s) {
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const int64_t n = static_cast<int64_t>(s.size());
  for (int64_t j = 0; j < n;) {
    const int len = utf8_length(p + j, n - j);
    if (len > 0) {
      out.append(s, static_cast<size_t>(j), static_cast<size_t>(len));
      j += len;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", p[j++]);
      out += buf;
    }
  }
  return out;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error(printable("mogen: " + path + ": " + what));
}

[[noreturn]] void fail_os(const std::string& path, const std::string& what, int err) {
  throw OsError(printable("mogen: " + path + ": " + what + ": " + std::strerror(err)));
}

int64_t page_size() {
  static const int64_t ps = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096;
  return ps;
}

bool mul_overflows(int64_t a, int64_t b, int64_t* out) { return __builtin_mul_overflow(a, b, out); }
bool add_overflows(int64_t a, int64_t b, int64_t* out) { return __builtin_add_overflow(a, b, out); }

// ------------------------------------------------------------ strict JSON

// A small strict JSON parser for safetensors headers: objects, arrays, strings
// (with escapes, decoded to UTF-8), non-negative integers, true/false/null.
// Fractions, exponents and negative numbers are rejected where integers are
// expected (every number in a header is a shape or an offset).
struct Json {
  enum Kind { kNull, kBool, kInt, kString, kArray, kObject } kind = kNull;
  int64_t i = 0;
  bool b = false;
  std::string s;
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> members;  // in order, duplicates rejected
};

class Parser {
 public:
  Parser(const char* p, int64_t n, const std::string& path) : p_(p), end_(p + n), path_(path) {}

  Json document() {
    Json v = value(0);
    ws();
    if (p_ != end_) bad("unexpected trailing characters");
    return v;
  }

 private:
  [[noreturn]] void bad(const std::string& what) {
    std::ostringstream m;
    m << "corrupt header: " << what << " at byte " << (8 + (p_ - start_offset_base()));
    fail(path_, m.str());
  }
  const char* start_offset_base() const { return end_ - total_; }
  void ws() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  void expect(char c) {
    ws();
    if (p_ == end_ || *p_ != c) bad(std::string("expected '") + c + "'");
    ++p_;
  }
  bool literal(const char* word) {
    const size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) >= n && std::memcmp(p_, word, n) == 0) {
      p_ += n;
      return true;
    }
    return false;
  }
  Json value(int depth) {
    if (depth > 16) bad("nesting too deep");
    ws();
    if (p_ == end_) bad("unexpected end of header");
    Json v;
    const char c = *p_;
    if (c == '{') {
      v.kind = Json::kObject;
      ++p_;
      ws();
      if (p_ != end_ && *p_ == '}') {
        ++p_;
        return v;
      }
      std::set<std::string> seen;
      while (true) {
        ws();
        if (p_ == end_ || *p_ != '"') bad("expected a string key");
        std::string key = string();
        if (!seen.insert(key).second) fail(path_, "corrupt header: duplicate key \"" + key + "\"");
        expect(':');
        v.members.emplace_back(std::move(key), value(depth + 1));
        ws();
        if (p_ != end_ && *p_ == ',') {
          ++p_;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.kind = Json::kArray;
      ++p_;
      ws();
      if (p_ != end_ && *p_ == ']') {
        ++p_;
        return v;
      }
      while (true) {
        v.items.push_back(value(depth + 1));
        ws();
        if (p_ != end_ && *p_ == ',') {
          ++p_;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.kind = Json::kString;
      v.s = string();
      return v;
    }
    if (c >= '0' && c <= '9') {
      v.kind = Json::kInt;
      v.i = integer();
      return v;
    }
    if (c == '-') bad("negative number");
    if (literal("true")) {
      v.kind = Json::kBool;
      v.b = true;
      return v;
    }
    if (literal("false")) {
      v.kind = Json::kBool;
      return v;
    }
    if (literal("null")) return v;
    bad("unexpected character");
  }
  int64_t integer() {
    if (*p_ == '0' && p_ + 1 != end_ && p_[1] >= '0' && p_[1] <= '9') bad("number with a leading zero");
    int64_t x = 0;
    while (p_ != end_ && *p_ >= '0' && *p_ <= '9') {
      if (mul_overflows(x, 10, &x) || add_overflows(x, *p_ - '0', &x)) bad("integer overflows int64");
      ++p_;
    }
    if (p_ != end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E')) bad("non-integer number");
    return x;
  }
  static void utf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  uint32_t hex4() {
    if (end_ - p_ < 4) bad("truncated \\u escape");
    uint32_t x = 0;
    for (int k = 0; k < 4; ++k) {
      const char h = *p_++;
      x <<= 4;
      if (h >= '0' && h <= '9') x |= h - '0';
      else if (h >= 'a' && h <= 'f') x |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') x |= h - 'A' + 10;
      else bad("bad \\u escape");
    }
    return x;
  }
  std::string string() {
    ++p_;  // opening quote
    std::string out;
    while (true) {
      if (p_ == end_) bad("unterminated string");
      const unsigned char c = static_cast<unsigned char>(*p_++);
      if (c == '"') return out;
      if (c < 0x20) bad("control character in a string");
      if (c >= 0x80) {  // JSON text is UTF-8 (RFC 8259); so is every string the format holds
        --p_;
        const int len = utf8_length(reinterpret_cast<const unsigned char*>(p_), end_ - p_);
        if (len == 0) bad("invalid UTF-8 in a string");
        out.append(p_, static_cast<size_t>(len));
        p_ += len;
        continue;
      }
      if (c != '\\') {
        out.push_back(static_cast<char>(c));
        continue;
      }
      if (p_ == end_) bad("unterminated escape");
      const char e = *p_++;
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (end_ - p_ < 6 || p_[0] != '\\' || p_[1] != 'u') bad("unpaired surrogate");
            p_ += 2;
            const uint32_t lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) bad("unpaired surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            bad("unpaired surrogate");
          }
          utf8(cp, &out);
          break;
        }
        default:
          bad("bad escape");
      }
    }
  }

  const char* p_;
  const char* end_;
  const std::string& path_;
  int64_t total_ = end_ - p_;
};

void json_string(const std::string& s, std::string* out) {
  out->push_back('"');
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          *out += buf;
        } else {
          out->push_back(ch);
        }
    }
  }
  out->push_back('"');
}

}  // namespace

int64_t dtype_itemsize(const std::string& d) {
  static const std::map<std::string, int64_t> sizes = {
      {"F64", 8},  {"F32", 4},  {"F16", 2},  {"BF16", 2}, {"I64", 8},    {"I32", 4},      {"I16", 2},
      {"I8", 1},   {"U64", 8},  {"U32", 4},  {"U16", 2},  {"U8", 1},     {"BOOL", 1},     {"F8_E4M3", 1},
      {"F8_E5M2", 1}, {"C64", 8}, {"F8_E8M0", 1}};
  const auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

// ------------------------------------------------------------ reader

Reader::Reader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) fail_os(path, "cannot open", errno);
  try {
    struct stat st;
    if (fstat(fd_, &st) != 0) fail_os(path, "cannot stat", errno);
    if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
    file_size_ = st.st_size;
    if (file_size_ < 8)
      fail(path, "truncated: " + std::to_string(file_size_) + " bytes, fewer than the 8-byte header length");
    uint8_t len_bytes[8];
    if (::pread(fd_, len_bytes, 8, 0) != 8) fail_os(path, "cannot read the header length", errno);
    uint64_t header_len = 0;
    for (int k = 7; k >= 0; --k) header_len = (header_len << 8) | len_bytes[k];  // little-endian
    if (header_len > static_cast<uint64_t>(kMaxHeaderBytes))
      fail(path, "header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
    if (8 + static_cast<int64_t>(header_len) > file_size_)
      fail(path, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                     std::to_string(file_size_) + " bytes); the file is truncated or corrupt");
    data_offset_ = 8 + static_cast<int64_t>(header_len);
    map_len_ = file_size_;
    void* p = ::mmap(nullptr, static_cast<size_t>(map_len_), PROT_READ, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) fail_os(path, "cannot map", errno);
    base_ = static_cast<uint8_t*>(p);
    ::madvise(base_, static_cast<size_t>(map_len_), MADV_SEQUENTIAL);
    ::posix_fadvise(fd_, 0, 0, POSIX_FADV_SEQUENTIAL);  // read-ahead for read() too
    parse_header(reinterpret_cast<const char*>(base_ + 8), static_cast<int64_t>(header_len));
    // The header is parsed; its pages need not stay resident.
    release(-data_offset_, 0);
  } catch (...) {
    close();
    throw;
  }
}

Reader::~Reader() { close(); }

void Reader::close() {
  if (base_ != nullptr) ::munmap(base_, static_cast<size_t>(map_len_));
  base_ = nullptr;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

const uint8_t* Reader::data(int64_t offset) const {
  if (base_ == nullptr) fail(path_, "the reader is closed");
  return base_ + data_offset_ + offset;
}

void Reader::release(int64_t begin, int64_t end) const {
  if (base_ == nullptr) return;
  const int64_t ps = page_size();
  int64_t lo = data_offset_ + begin, hi = data_offset_ + end;
  lo = std::max<int64_t>(0, lo) / ps * ps;
  hi = std::min<int64_t>(map_len_, (hi + ps - 1) / ps * ps);
  if (hi > lo) ::madvise(base_ + lo, static_cast<size_t>(hi - lo), MADV_DONTNEED);
}

void Reader::prefetch(int64_t begin, int64_t end) const {
  if (base_ == nullptr) return;
  const int64_t ps = page_size();
  int64_t lo = std::max<int64_t>(0, data_offset_ + begin) / ps * ps;
  int64_t hi = std::min<int64_t>(map_len_, data_offset_ + end);
  if (hi > lo) ::madvise(base_ + lo, static_cast<size_t>(hi - lo), MADV_WILLNEED);
}

void Reader::read(int64_t offset, int64_t len, void* dst) const {
  if (base_ == nullptr) fail(path_, "the reader is closed");
  if (offset < 0 || len < 0 || offset > file_size_ - data_offset_ || len > file_size_ - data_offset_ - offset)
    fail(path_, "read of " + std::to_string(len) + " bytes at data offset " + std::to_string(offset) +
                    " is outside the data section");
  char* p = static_cast<char*>(dst);
  int64_t pos = data_offset_ + offset;
  while (len > 0) {
    const ssize_t r = ::pread(fd_, p, static_cast<size_t>(std::min<int64_t>(len, int64_t{1} << 30)), pos);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_os(path_, "read failed at byte " + std::to_string(pos), errno);
    }
    // The size was checked when the file was opened: it shrank since.
    if (r == 0) fail(path_, "truncated while being read (end of file at byte " + std::to_string(pos) + ")");
    p += r;
    pos += r;
    len -= r;
  }
}

void Reader::parse_header(const char* text, int64_t len) {
  Parser parser(text, len, path_);
  const Json doc = parser.document();
  if (doc.kind != Json::kObject) fail(path_, "corrupt header: not a JSON object");
  for (const auto& [name, v] : doc.members) {
    if (name == "__metadata__") {
      if (v.kind != Json::kObject) fail(path_, "corrupt header: __metadata__ is not an object of strings");
      for (const auto& [k, s] : v.members) {
        if (s.kind != Json::kString) fail(path_, "corrupt header: __metadata__[\"" + k + "\"] is not a string");
        metadata_[k] = s.s;
      }
      continue;
    }
    if (v.kind != Json::kObject) fail(path_, "corrupt header: entry \"" + name + "\" is not an object");
    TensorEntry t;
    t.name = name;
    bool have_dtype = false, have_shape = false, have_offsets = false;
    for (const auto& [k, f] : v.members) {
      if (k == "dtype") {
        if (f.kind != Json::kString) fail(path_, "tensor \"" + name + "\": dtype is not a string");
        t.dtype = f.s;
        have_dtype = true;
      } else if (k == "shape") {
        if (f.kind != Json::kArray) fail(path_, "tensor \"" + name + "\": shape is not an array");
        for (const Json& d : f.items) {
          if (d.kind != Json::kInt) fail(path_, "tensor \"" + name + "\": shape holds a non-integer");
          t.shape.push_back(d.i);
        }
        have_shape = true;
      } else if (k == "data_offsets") {
        if (f.kind != Json::kArray || f.items.size() != 2 || f.items[0].kind != Json::kInt ||
            f.items[1].kind != Json::kInt)
          fail(path_, "tensor \"" + name + "\": data_offsets is not [begin, end]");
        t.begin = f.items[0].i;
        t.end = f.items[1].i;
        have_offsets = true;
      }
    }
    if (!have_dtype || !have_shape || !have_offsets)
      fail(path_, "tensor \"" + name + "\": missing " +
                      (!have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets"));
    const int64_t itemsize = dtype_itemsize(t.dtype);
    if (itemsize == 0) fail(path_, "tensor \"" + name + "\": unknown dtype \"" + t.dtype + "\"");
    int64_t bytes = itemsize;
    for (const int64_t d : t.shape)
      if (mul_overflows(bytes, d, &bytes)) fail(path_, "tensor \"" + name + "\": size overflows int64");
    if (t.end < t.begin)
      fail(path_, "tensor \"" + name + "\": data_offsets end " + std::to_string(t.end) + " < begin " +
                      std::to_string(t.begin));
    if (t.end - t.begin != bytes)
      fail(path_, "tensor \"" + name + "\": data_offsets span " + std::to_string(t.end - t.begin) +
                      " bytes but " + t.dtype + " shape needs " + std::to_string(bytes));
    tensors_.push_back(std::move(t));
  }
  // Contiguous from 0 to the end of the file: sort by (begin, end) and walk.
  std::vector<size_t> order(tensors_.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return tensors_[a].begin != tensors_[b].begin ? tensors_[a].begin < tensors_[b].begin
                                                  : tensors_[a].end < tensors_[b].end;
  });
  int64_t cursor = 0;
  std::string prev = "the start of the data";
  for (const size_t k : order) {
    const TensorEntry& t = tensors_[k];
    if (t.begin > cursor)
      fail(path_, "gap in data offsets: tensor \"" + t.name + "\" starts at " + std::to_string(t.begin) +
                      " but " + prev + " ends at " + std::to_string(cursor));
    if (t.begin < cursor)
      fail(path_, "overlapping data offsets: tensor \"" + t.name + "\" starts at " + std::to_string(t.begin) +
                      " inside " + prev + " (which ends at " + std::to_string(cursor) + ")");
    cursor = t.end;
    prev = "tensor \"" + t.name + "\"";
  }
  const int64_t data_len = file_size_ - data_offset_;
  if (cursor != data_len)
    fail(path_, cursor < data_len
                    ? "file has " + std::to_string(data_len - cursor) + " bytes after the last tensor's data"
                    : "truncated: the tensors need " + std::to_string(cursor) + " data bytes but the file holds " +
                          std::to_string(data_len));
  std::vector<TensorEntry> sorted;
  sorted.reserve(tensors_.size());
  for (const size_t k : order) sorted.push_back(std::move(tensors_[k]));
  tensors_ = std::move(sorted);
}

// ------------------------------------------------------------ writer

void pwrite_all(int fd, const void* src, int64_t len, int64_t pos, const std::string& path) {
  const char* p = static_cast<const char*>(src);
  while (len > 0) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(len, int64_t{1} << 30));
    const ssize_t w = ::pwrite(fd, p, n, pos);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail_os(path, "write failed at byte " + std::to_string(pos), errno);
    }
    if (w == 0) fail_os(path, "write failed at byte " + std::to_string(pos), EIO);
    p += w;
    pos += w;
    len -= w;
  }
}

Writer::Writer(const std::string& path, const std::vector<TensorEntry>& entries,
               const std::map<std::string, std::string>& metadata)
    : path_(path), entries_(entries) {
  std::set<std::string> names;
  int64_t offset = 0;
  for (TensorEntry& t : entries_) {
    if (t.name == "__metadata__") fail(path, "\"__metadata__\" is not a valid tensor name");
    if (!names.insert(t.name).second) fail(path, "duplicate tensor name \"" + t.name + "\"");
    const int64_t itemsize = dtype_itemsize(t.dtype);
    if (itemsize == 0) fail(path, "tensor \"" + t.name + "\": unknown dtype \"" + t.dtype + "\"");
    int64_t bytes = itemsize;
    for (const int64_t d : t.shape) {
      if (d < 0) fail(path, "tensor \"" + t.name + "\": negative dimension");
      if (mul_overflows(bytes, d, &bytes)) fail(path, "tensor \"" + t.name + "\": size overflows int64");
    }
    t.begin = offset;
    if (add_overflows(offset, bytes, &offset)) fail(path, "file size overflows int64");
    t.end = offset;
  }
  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) h += ",";
      first = false;
      json_string(k, &h);
      h += ":";
      json_string(v, &h);
    }
    h += "}";
  }
  for (size_t k = 0; k < entries_.size(); ++k) {
    const TensorEntry& t = entries_[k];
    if (k > 0 || !metadata.empty()) h += ",";
    json_string(t.name, &h);
    h += ":{\"dtype\":";
    json_string(t.dtype, &h);
    h += ",\"shape\":[";
    for (size_t d = 0; d < t.shape.size(); ++d) h += (d ? "," : "") + std::to_string(t.shape[d]);
    h += "],\"data_offsets\":[" + std::to_string(t.begin) + "," + std::to_string(t.end) + "]}";
  }
  h += "}";
  while (h.size() % 8 != 0) h.push_back(' ');  // data starts 8-byte aligned
  if (static_cast<int64_t>(h.size()) > kMaxHeaderBytes) fail(path, "header would exceed 100 MB");
  data_offset_ = 8 + static_cast<int64_t>(h.size());
  file_size_ = data_offset_ + offset;

  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_os(path, "cannot create", errno);
  try {
    if (::ftruncate(fd_, file_size_) != 0)
      fail_os(path, "cannot size the file to " + std::to_string(file_size_) + " bytes", errno);
    uint8_t len_bytes[8];
    uint64_t hl = h.size();
    for (int k = 0; k < 8; ++k) len_bytes[k] = static_cast<uint8_t>(hl >> (8 * k));
    pwrite_all(fd_, len_bytes, 8, 0, path_);
    pwrite_all(fd_, h.data(), static_cast<int64_t>(h.size()), 8, path_);
  } catch (...) {
    abort();
    throw;
  }
}

Writer::~Writer() {
  if (fd_ >= 0) abort();
}

void Writer::write(int64_t offset, const void* src, int64_t len) const {
  if (fd_ < 0) fail(path_, "the writer is closed");
  if (offset < 0 || len < 0 || offset > file_size_ - data_offset_ || len > file_size_ - data_offset_ - offset)
    fail(path_, "write of " + std::to_string(len) + " bytes at data offset " + std::to_string(offset) +
                    " is outside the file's data section");
  pwrite_all(fd_, src, len, data_offset_ + offset, path_);
}

void Writer::finish(bool fsync) {
  if (fd_ < 0) fail(path_, "the writer is closed");
  if (fsync && ::fsync(fd_) != 0) {
    const int err = errno;
    abort();
    fail_os(path_, "fsync failed", err);
  }
  if (::close(fd_) != 0) {
    const int err = errno;
    fd_ = -1;
    ::unlink(path_.c_str());
    fail_os(path_, "close failed", err);
  }
  fd_ = -1;
}

void Writer::abort() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(path_.c_str());
  }
}

}  // namespace io
}  // namespace mogen
