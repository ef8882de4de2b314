#include "cache/host_store.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <numeric>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <fmt/format.h>

#include "base/error.hpp"
#include "cache/schedule.hpp"
#include "format/packed_file.hpp"

namespace ferry {
namespace {

// Pieces are copied in chunks of 4 MB so that the progress bar moves within a large tensor (a
// 32B model's lm_head is 414 MB) and each chunk is hashed while it is still in the cache.
constexpr uint64_t kChunk = 4 << 20;

// Copies one piece and returns whether it matches its checksum (true when it has none or
// verification is off).
bool copy_piece(const HostPiece& p, uint8_t* dst, bool verify, std::atomic<uint64_t>& done) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (uint64_t at = 0; at < p.bytes; at += kChunk) {
    const uint64_t n = std::min(kChunk, p.bytes - at);
    std::memcpy(dst + at, p.src + at, n);
    if (verify) XXH3_64bits_update(&state, dst + at, n);
    done.fetch_add(n, std::memory_order_relaxed);
  }
  return !verify || p.checksum.empty() || checksum_hex(XXH3_64bits_digest(&state)) == p.checksum;
}

std::string mismatch_message(std::vector<std::string> bad) {
  std::sort(bad.begin(), bad.end());
  const std::string what = bad.size() == 1
                               ? bad[0] + " does not match its checksum"
                               : fmt::format("{} and {} more tensors do not match their checksums",
                                             bad[0], bad.size() - 1);
  return what +
         ": the file is damaged; convert the model again (ferry quantize), or load it without "
         "checking the checksums";
}

}  // namespace

HostWeightStore::HostWeightStore(CacheBackend& backend, std::span<const HostPiece> pieces,
                                 const HostStoreOptions& o)
    : pinned_(backend.pins_host_memory()) {
  for (const HostPiece& p : pieces) {
    offsets_.push_back(bytes_);
    bytes_ += entry_aligned(p.bytes);
  }
  memory_ = backend.allocate_host(bytes_, "the host weight store");
  // Largest first: with one work item per piece, the big ones (lm_head) start early and the
  // threads finish together.
  std::vector<size_t> order(pieces.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return pieces[a].bytes > pieces[b].bytes; });
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> done{0};
  std::mutex mu;
  std::vector<std::string> bad;
  auto work = [&] {
    for (size_t k; (k = next.fetch_add(1)) < order.size();) {
      const size_t i = order[k];
      if (copy_piece(pieces[i], memory_.get() + offsets_[i], o.verify, done)) continue;
      std::lock_guard lock(mu);
      bad.push_back(pieces[i].name);
    }
  };
  const uint64_t total =
      std::accumulate(pieces.begin(), pieces.end(), uint64_t(0),
                      [](uint64_t a, const HostPiece& p) { return a + p.bytes; });
  const unsigned threads = unsigned(std::clamp<size_t>(pieces.size(), 1, thread_count(o.threads)));
  run_threads(threads, work, [&] {
    if (o.progress) o.progress("load weights", done.load(), total);
  });
  if (!bad.empty()) throw Error(Setting::verify, mismatch_message(std::move(bad)));
}

}  // namespace ferry
