// The host weight store: every packed linear weight of a model copied once, at load, into one
// host arena (pinned where the backend pins, so the copy engine reads it at full PCIe speed), by
// several threads, each tensor checked against the checksum the file records. The cache's fills
// read from here; norms, biases and the embedding stay where they are (the file's memory).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/threads.hpp"
#include "cache/backend.hpp"

namespace ferry {

// One tensor to hold: a weight's INT4 codes, scales or mins, or its bf16 values.
struct HostPiece {
  std::string name;              // tensor name, for messages
  const uint8_t* src = nullptr;  // [bytes] e.g. in the file's mapping
  uint64_t bytes = 0;
  std::string checksum;  // expected checksum_hex (XXH3-64) of the bytes; "" to skip
};

struct HostStoreOptions {
  unsigned threads = 0;  // 0: every core
  bool verify = true;    // compare every piece with its checksum
  ProgressFn progress;   // phase "load weights", bytes done, bytes total; may be empty
};

class HostWeightStore {
 public:
  // Throws ferry::Error when the memory cannot be had or pieces do not match their checksums
  // (naming them, and --no-verify).
  HostWeightStore(CacheBackend& backend, std::span<const HostPiece> pieces,
                  const HostStoreOptions& options);
  const uint8_t* piece(size_t i) const { return memory_.get() + offsets_[i]; }
  uint64_t bytes() const { return bytes_; }
  bool pinned() const { return pinned_; }

 private:
  uint64_t bytes_ = 0;
  std::vector<uint64_t> offsets_;  // [pieces] each 256-byte aligned
  Memory memory_;                  // [bytes_]
  bool pinned_ = false;
};

}  // namespace ferry
