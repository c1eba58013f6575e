// The merge benchmark's compiled floor: the least work a merge of N sources into
// K outputs must do, at C speed and with no Python between the system calls.
// Threads take 256 KB blocks, either in contiguous ranges (thread t the t-th
// part of the stream) or interleaved (block j to thread j mod THREADS, so that
// the threads move through every file side by side, as K3's do: at::parallel_for
// splits each tensor between them); per block, every source's
// bytes are read with pread (the first into the block buffer, the others
// XOR-folded into it, so every byte reaches the CPU), and the block is pwritten
// into each of the K output files (or copied into a pre-touched buffer in memory,
// merge_into's floor). Prints {"work_s": seconds}.
//
//   floor OUT SIZE K FSYNC THREADS LAYOUT N  n_0 path ... n_1 path ...
//   (OUT "/dev/null": memory; LAYOUT "ranges" or "interleaved"; FSYNC 0, 1: each output and OUT itself
//   fsynced at the end, or "early": the same, each block's writeback started as soon as it is written
//   (sync_file_range), so that the disk works while the inputs are read)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr int64_t kBlock = 256 << 10;

struct Part {
  int fd;
  int64_t start, len;  // position of this file's bytes in its source's stream
};

[[noreturn]] void die(const std::string& what) {
  std::perror(what.c_str());
  std::exit(1);
}

void read_at(const Part& p, int64_t pos, int64_t n, uint8_t* dst) {
  while (n > 0) {
    const ssize_t r = ::pread(p.fd, dst, static_cast<size_t>(n), pos);
    if (r <= 0) die("pread");
    dst += r, pos += r, n -= r;
  }
}

void write_at(int fd, const uint8_t* src, int64_t n, int64_t pos) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, src, static_cast<size_t>(n), pos);
    if (w <= 0) die("pwrite");
    src += w, pos += w, n -= w;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 8) {
    std::fprintf(stderr, "usage: floor OUT SIZE K FSYNC THREADS LAYOUT N n_0 path ... n_1 path ...\n");
    return 2;
  }
  const std::string out = argv[1];
  const int64_t size = std::atoll(argv[2]);
  const int nout = std::atoi(argv[3]), threads = std::atoi(argv[5]), nsrc = std::atoi(argv[7]);
  const std::string layout = argv[6];
  if (layout != "ranges" && layout != "interleaved") {
    std::fprintf(stderr, "floor: LAYOUT must be ranges or interleaved, got %s\n", layout.c_str());
    return 2;
  }
  const bool interleaved = layout == "interleaved";
  const std::string fsync_arg = argv[4];
  const bool early = fsync_arg == "early", fsync = early || std::atoi(argv[4]) != 0, memory = out == "/dev/null";
  std::vector<std::vector<Part>> sources(static_cast<size_t>(nsrc));
  int64_t longest = 0;
  for (int a = 8, s = 0; s < nsrc; ++s) {
    const int files = a < argc ? std::atoi(argv[a++]) : -1;
    if (files < 0 || a + files > argc) {
      std::fprintf(stderr, "floor: source %d: expected a file count and that many paths\n", s);
      return 2;
    }
    int64_t pos = 0;
    for (int f = 0; f < files; ++f, ++a) {
      const int fd = ::open(argv[a], O_RDONLY);
      struct stat st;
      if (fd < 0 || ::fstat(fd, &st) != 0) die(argv[a]);
      sources[s].push_back({fd, pos, st.st_size});
      pos += st.st_size;
    }
    longest = std::max(longest, pos);
  }
  std::vector<uint8_t> mem;
  if (memory) mem.assign(static_cast<size_t>(size), 1);  // touched before the clock starts
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int> fds;
  if (!memory) {
    if (::mkdir(out.c_str(), 0755) != 0) die(out);
    for (int k = 0; k < nout; ++k) {
      const std::string path = out + "/" + std::to_string(k);
      const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || ::ftruncate(fd, size) != 0) die(path);
      fds.push_back(fd);
    }
  }
  const int64_t blocks = (std::max(longest, size) + kBlock - 1) / kBlock;
  const int64_t per = (blocks + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      std::vector<uint64_t> acc(kBlock / 8), tmp(kBlock / 8);
      auto* a = reinterpret_cast<uint8_t*>(acc.data());
      auto* b = reinterpret_cast<uint8_t*>(tmp.data());
      const int64_t first = interleaved ? t : t * per, end = interleaved ? blocks : std::min(blocks, (t + 1) * per);
      for (int64_t j = first; j < end; j += interleaved ? threads : 1) {
        const int64_t lo = j * kBlock;
        for (int s = 0; s < nsrc; ++s)
          for (const Part& p : sources[s]) {
            const int64_t x = std::max(lo, p.start), y = std::min(lo + kBlock, p.start + p.len);
            if (x >= y) continue;
            if (s == 0) {
              read_at(p, x - p.start, y - x, a + (x - lo));
              continue;
            }
            read_at(p, x - p.start, y - x, b + (x - lo));
            for (int64_t w = (x - lo) / 8; w < (y - lo) / 8; ++w) acc[w] ^= tmp[w];
          }
        if (lo >= size) continue;
        const int64_t n = std::min(kBlock, size - lo);
        if (memory) std::memcpy(mem.data() + lo, a, static_cast<size_t>(n));
        for (int fd : fds) {
          write_at(fd, a, n, lo);
          if (early && ::sync_file_range(fd, lo, n, SYNC_FILE_RANGE_WRITE) != 0) die("sync_file_range");
        }
      }
    });
  for (auto& th : pool) th.join();
  for (int fd : fds) {
    if (fsync && ::fsync(fd) != 0) die("fsync");
    ::close(fd);
  }
  if (fsync && !memory) {  // the folder too: the new files' entries
    const int dfd = ::open(out.c_str(), O_RDONLY | O_DIRECTORY);
    if (dfd < 0 || ::fsync(dfd) != 0) die(out);
    ::close(dfd);
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("{\"work_s\": %.6f, \"check\": %u}\n", dt, memory ? mem[static_cast<size_t>(size / 2)] : 0u);
  return 0;
}
