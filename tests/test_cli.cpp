// The ferry command line itself, through the binary: --version, and option values that do not
// parse (every command names the option and what it takes, and exits 2 as for other usage errors).
#include <gtest/gtest.h>

#include <regex>
#include <string>
#include <vector>

#include "tests/test_util.hpp"

namespace ferry {
namespace {

using test::run_ferry;

TEST(Cli, VersionNamesTheReleaseRevisionAndBackend) {
  for (const char* arg : {"--version", "version"}) {
    const auto r = run_ferry({arg});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    // "ferry 0.1.0 (git 8f31b57-dirty)", or "(git unknown)" outside a git checkout.
    EXPECT_TRUE(std::regex_search(r.output, std::regex(R"(^ferry \d+\.\d+\.\d+ \(git \S+\)\n)")))
        << r.output;
#ifdef FERRY_HAVE_CUDA
    EXPECT_TRUE(std::regex_search(r.output, std::regex(R"(CUDA backend: yes, architectures \d+)")))
        << r.output;
#else
    EXPECT_NE(r.output.find("CUDA backend: no"), std::string::npos) << r.output;
#endif
    EXPECT_NE(r.output.find("built with "), std::string::npos) << r.output;
  }
  const auto usage = run_ferry({"--help"});
  EXPECT_NE(usage.output.find("ferry --version"), std::string::npos) << usage.output;
}

struct BadOption {
  std::vector<std::string> args;
  std::string message;  // after "ferry: error: <command>: "
};

TEST(Cli, AnOptionValueThatDoesNotParseNamesTheOption) {
  const std::string u64 = "is not a whole number from 0 to 18446744073709551615";
  const std::string u32 = "is not a whole number from 0 to 4294967295";
  const BadOption cases[] = {
      // run: unsigned options refuse negative numbers (no wrapping), in every spelling.
      {{"run", "m.ferry", "--tokens", "-1"}, "--tokens: '-1' " + u64},
      {{"run", "m.ferry", "-n", "-1"}, "--tokens: '-1' " + u64},
      {{"run", "m.ferry", "--tokens=-1"}, "--tokens: '-1' " + u64},
      {{"run", "m.ferry", "-nfive"}, "--tokens: 'five' " + u64},
      {{"run", "m.ferry", "--tokens", "99999999999999999999"},
       "--tokens: '99999999999999999999' is too large (at most 18446744073709551615)"},
      {{"run", "m.ferry", "-p", "hi", "--ctx", "1k"}, "--ctx: '1k' " + u64},
      {{"run", "m.ferry", "--threads", "-4"}, "--threads: '-4' " + u32},
      {{"run", "m.ferry", "--lookahead", "x"}, "--lookahead: 'x' " + u32},
      {{"run", "m.ferry", "--temp", "hot"}, "--temp: 'hot' is not a number"},
      {{"run", "m.ferry", "--top-k", "-3"}, "--top-k: '-3' " + u32},
      {{"run", "m.ferry", "--stats=maybe"}, "--stats: 'maybe' is not true or false"},
      // quantize, inspect, bench, synth, chat: the same, through the same parser.
      {{"quantize", "hf", "-o", "m.ferry", "-t", "-2"}, "--threads: '-2' " + u32},
      {{"quantize", "hf", "-o", "m.ferry", "--threads=two"}, "--threads: 'two' " + u32},
      {{"inspect", "m.ferry", "--json=maybe"}, "--json: 'maybe' is not true or false"},
      {{"bench", "--synthetic", "llama-tiny", "--prompt", "-5"}, "--prompt: '-5' " + u64},
      {{"bench", "--synthetic", "llama-tiny", "--gen=many"}, "--gen: 'many' " + u64},
      {{"bench", "--synthetic", "llama-tiny", "--layers", "-1"}, "--layers: '-1' " + u64},
      {{"synth", "--preset", "llama-tiny", "-o", "x", "--layers", "-1"}, "--layers: '-1' " + u64},
      {{"chat", "m.ferry", "--seed", "-7"}, "--seed: '-7' " + u64},
  };
  for (const BadOption& c : cases) {
    const auto r = run_ferry(c.args);
    std::string line =
        "ferry: error: " + c.args[0] + ": " + c.message + " (see ferry " + c.args[0] + " --help)\n";
    EXPECT_EQ(r.exit_code, 2) << c.args[0] << " " << c.args.back() << ": " << r.output;
    EXPECT_EQ(r.output, line);
  }
}

// Values after the option parse as before: the diagnosis runs only once a value fails.
TEST(Cli, GoodValuesStillParse) {
  // A model that does not exist: the options parsed, the command got as far as opening it.
  const auto r = run_ferry({"run", "/nonexistent.ferry", "-n", "5", "--temp", "0.5", "--top-k",
                            "40", "--threads", "1", "--ctx=64"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(r.output.find("failed to parse"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("/nonexistent.ferry"), std::string::npos) << r.output;
}

// ferry run -f FILE --parallel N: each completion, printed under its prompt's number, is the text
// `ferry run -p` gives for that prompt alone (greedy), whatever shared its steps.
TEST(Cli, RunAPromptFileInParallel) {
  test::ScratchDir dir;
  const std::string hf = (dir / "hf").string(), model = (dir / "m.ferry").string();
  ASSERT_EQ(run_ferry({"synth", "--preset", "llama-tiny", "-o", hf}).exit_code, 0);
  ASSERT_EQ(run_ferry({"quantize", hf, "-o", model}).exit_code, 0);
  const std::vector<std::string> prompts = {"Once upon a time", "The dog", "A cat sat on the mat",
                                            "Hello", "She said"};
  std::string file;
  for (const std::string& p : prompts) file += p + "\n\n";  // blank lines are skipped
  test::write_file(dir / "p.txt", std::vector<uint8_t>(file.begin(), file.end()));
  const auto r = run_ferry({"run", model, "-f", (dir / "p.txt").string(), "--parallel", "3", "-n",
                            "10", "--threads", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("5 prompts, 3 slots"), std::string::npos) << r.output;
  const std::regex header("--- ([0-9]+) \\(10 tokens, stopped: token limit\\)\n");
  std::vector<std::string> got(prompts.size());
  for (auto it = std::sregex_iterator(r.output.begin(), r.output.end(), header);
       it != std::sregex_iterator(); ++it) {
    const size_t n = std::stoul((*it)[1]), from = size_t(it->position() + it->length());
    ASSERT_TRUE(n >= 1 && n <= prompts.size()) << r.output;
    got[n - 1] = r.output.substr(from, r.output.find('\n', from) - from);
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto solo = run_ferry({"run", model, "-p", prompts[i], "-n", "10", "--threads", "1"});
    ASSERT_EQ(solo.exit_code, 0) << solo.output;
    EXPECT_EQ(got[i], solo.output.substr(0, solo.output.find('\n'))) << "prompt " << i + 1;
  }
  // -p with --parallel, and a missing file, are refused before any work.
  const auto both = run_ferry({"run", model, "-p", "x", "--parallel", "2"});
  EXPECT_EQ(both.exit_code, 1);
  EXPECT_NE(both.output.find("give them with -f FILE"), std::string::npos) << both.output;
  const auto missing = run_ferry({"run", model, "-f", (dir / "none.txt").string()});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("cannot read"), std::string::npos) << missing.output;
}

}  // namespace
}  // namespace ferry
