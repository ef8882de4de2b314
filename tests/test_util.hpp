// Helpers shared by the tests: locating ../shared, scratch directories, running the ferry binary,
// running a long prompt through an engine.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace ferry {
class Engine;
}

namespace ferry::test {

// ../shared/models/<name>, or "" when ../shared is absent (a user's fresh clone). Tests call
// FERRY_REQUIRE_SHARED_MODEL to skip with a message in that case.
std::filesystem::path shared_model(const std::string& name);

// A fresh empty directory under the system temp dir, removed by the destructor.
struct ScratchDir {
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::filesystem::path path;
  std::filesystem::path operator/(const std::string& s) const { return path / s; }
};

struct RunResult {
  int exit_code = -1;   // -1 when killed by a signal
  std::string output;   // stdout and stderr interleaved
  long max_rss_kb = 0;  // peak resident set of the child (getrusage)
};
// Runs the ferry binary with `args` and waits for it.
RunResult run_ferry(const std::vector<std::string>& args);

std::vector<uint8_t> read_file(const std::filesystem::path& p);
void write_file(const std::filesystem::path& p, const std::vector<uint8_t>& bytes);
// The names of every entry of `dir`, hidden ones included, sorted.
std::vector<std::string> entries(const std::filesystem::path& dir);

// n x cols activations drawn from N(0, 1), seeded by the shape (the kernel tests' inputs).
std::vector<float> activations(uint64_t n, uint64_t cols);

// n token ids spread over 0 .. below-1 in a fixed pattern (a prompt longer than any fixture).
std::vector<int32_t> spread_prompt(size_t n, int32_t below);
// The last token's logits after `prompt` (run from position 0) and after each of `steps` decode
// steps of tokens 42, 43, ... that follow it.
std::vector<std::vector<float>> logits_after_prompt(Engine& e, const std::vector<int32_t>& prompt,
                                                    int steps);

}  // namespace ferry::test

#define FERRY_REQUIRE_SHARED_MODEL(var, name)                          \
  const std::filesystem::path var = ::ferry::test::shared_model(name); \
  if (var.empty()) GTEST_SKIP() << "../shared/models/" name " is absent (fresh clone): skipped"
