// ferry synth's output directory: built aside and renamed into place, so that a failed run leaves
// nothing and a rerun replaces an earlier output whole (no stale shard or index beside it).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "base/error.hpp"
#include "quantizer/checkpoint.hpp"
#include "quantizer/synth.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

using test::entries;
using test::read_file;
using test::run_ferry;
using test::ScratchDir;

const ProgressFn kNoProgress = [](std::string_view, uint64_t, uint64_t) {};

std::map<std::string, std::vector<uint8_t>> contents(const std::filesystem::path& dir) {
  std::map<std::string, std::vector<uint8_t>> m;
  for (const std::string& f : entries(dir)) m[f] = read_file(dir / f);
  return m;
}

size_t lines(const std::string& s) {
  return size_t(std::count(s.begin(), s.end(), '\n'));
}

const std::vector<std::string> kSingleFileOutput = {"config.json", "generation_config.json",
                                                    "model.safetensors", "tokenizer.json",
                                                    "tokenizer_config.json"};

// ferry with RLIMIT_FSIZE = `limit` bytes and SIGXFSZ ignored: a write past the limit fails with
// EFBIG half-way through the run, as a full disk would.
test::RunResult run_ferry_with_file_limit(const std::vector<std::string>& args, rlim_t limit,
                                          const std::filesystem::path& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1), dup2(fd, 2);
    signal(SIGXFSZ, SIG_IGN);  // the ignored disposition survives exec
    const struct rlimit rl = {limit, limit};
    setrlimit(RLIMIT_FSIZE, &rl);
    std::vector<std::string> copy = args;
    std::vector<char*> argv = {const_cast<char*>(FERRY_BINARY)};
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(FERRY_BINARY, argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  std::ifstream f(log);
  std::stringstream s;
  s << f.rdbuf();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, s.str(), 0};
}

TEST(SynthCli, RerunReplacesAnEarlierShardedOutputWhole) {
  ScratchDir tmp;
  const std::string hf = (tmp / "hf").string();
  ASSERT_EQ(
      run_ferry({"synth", "-p", "qwen2-tiny", "-o", hf, "--shard-size", "3M", "-q"}).exit_code, 0);
  ASSERT_TRUE(std::filesystem::exists(tmp / "hf" / "model.safetensors.index.json"));
  const auto r = run_ferry({"synth", "-p", "qwen2-tiny", "-o", hf, "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(entries(tmp / "hf"), kSingleFileOutput) << "stale shards or index of the first run";
  EXPECT_EQ(entries(tmp.path), std::vector<std::string>{"hf"}) << "no stray staging directory";
  EXPECT_EQ(Checkpoint::open(tmp / "hf").shards().size(), 1u);
  const auto q = run_ferry({"quantize", hf, "-o", (tmp / "m.ferry").string(), "-q"});
  EXPECT_EQ(q.exit_code, 0) << q.output;
}

TEST(SynthCli, EmptyDirectoryAndTrailingSlashAreFine) {
  ScratchDir tmp;
  std::filesystem::create_directory(tmp / "hf");
  const auto r = run_ferry({"synth", "-p", "qwen2-tiny", "-o", (tmp / "hf").string() + "/", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(entries(tmp / "hf"), kSingleFileOutput);
  EXPECT_EQ(entries(tmp.path), std::vector<std::string>{"hf"});
}

// A directory holding anything synth does not write is refused before any work, untouched.
TEST(SynthCli, DirectoryWithOtherFilesIsRefused) {
  ScratchDir tmp;
  std::filesystem::create_directory(tmp / "hf");
  test::write_file(tmp / "hf" / "config.json", {'{', '}'});
  test::write_file(tmp / "hf" / "notes.txt", {'k', 'e', 'e', 'p'});
  const auto before = contents(tmp / "hf");
  const auto r = run_ferry({"synth", "-p", "qwen2-tiny", "-o", (tmp / "hf").string()});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("holds notes.txt, which ferry synth does not write"), std::string::npos)
      << r.output;
  EXPECT_EQ(lines(r.output), 1u) << r.output;
  EXPECT_TRUE(contents(tmp / "hf") == before);
  EXPECT_EQ(entries(tmp.path), std::vector<std::string>{"hf"});
}

TEST(SynthCli, UnusableOutputPathsAreOneLine) {
  ScratchDir tmp;
  test::write_file(tmp / "file", {'x'});
  const struct {
    std::string out;
    const char* expected;
  } cases[] = {
      {(tmp / "file").string(), "file: exists and is not a directory"},
      {"", "the output directory path is empty"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.out);
    const auto r = run_ferry({"synth", "-p", "qwen2-tiny", "-o", c.out});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find(c.expected), std::string::npos) << r.output;
    EXPECT_EQ(lines(r.output), 1u) << r.output;
  }
  EXPECT_EQ(entries(tmp.path), std::vector<std::string>{"file"});
}

// --threads 100000 used to fail at thread creation with the config and tokenizer already written.
TEST(SynthCli, TooManyThreadsFailsBeforeCreatingAnything) {
  ScratchDir tmp;
  const auto r = run_ferry({"synth", "-p", "qwen2-tiny", "-o", (tmp / "a" / "b" / "hf").string(),
                            "--threads", "100000"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  // The library's words; ferry's main() puts "--threads: " in front (tools/option_names.hpp).
  EXPECT_NE(r.output.find("100000 worker threads asked for: at most 1024"), std::string::npos)
      << r.output;
  EXPECT_EQ(lines(r.output), 1u) << r.output;
  EXPECT_TRUE(std::filesystem::is_empty(tmp.path)) << "no partial directory";
}

// A write that fails half-way (config and tokenizer written, a shard refused) leaves nothing: no
// partial directory, no parent it created, no staging directory.
TEST(SynthCli, FailureHalfWayLeavesNothing) {
  ScratchDir tmp, logs;
  const auto r = run_ferry_with_file_limit(
      {"synth", "-p", "qwen2-tiny", "-o", (tmp / "new" / "hf").string(), "-q"}, 1'000'000,
      logs / "log");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("ferry: error: "), std::string::npos) << r.output;
  EXPECT_TRUE(std::filesystem::is_empty(tmp.path)) << "partial output left behind";
}

// The same failure over an earlier output leaves that output as it was, byte for byte.
TEST(SynthCli, FailureHalfWayKeepsTheEarlierOutput) {
  ScratchDir tmp, logs;
  SynthOptions so;
  so.shard_bytes = 3'000'000;
  synth_checkpoint(tmp / "hf", so, kNoProgress);
  const auto before = contents(tmp / "hf");
  const auto r = run_ferry_with_file_limit(
      {"synth", "-p", "llama-tiny", "-o", (tmp / "hf").string(), "-q"}, 1'000'000, logs / "log");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(contents(tmp / "hf") == before) << "the earlier output was changed";
  EXPECT_EQ(entries(tmp.path), std::vector<std::string>{"hf"}) << "stray staging directory";
}

// The library call refuses the same way (tests and benchmarks call it directly).
TEST(Synth, LibraryRefusesAForeignDirectory) {
  ScratchDir tmp;
  std::filesystem::create_directory(tmp / "hf");
  test::write_file(tmp / "hf" / "model.ferry", {'x'});
  EXPECT_THROW(synth_checkpoint(tmp / "hf", {}, kNoProgress), Error);
  EXPECT_EQ(entries(tmp / "hf"), std::vector<std::string>{"model.ferry"});
}

}  // namespace
}  // namespace ferry
