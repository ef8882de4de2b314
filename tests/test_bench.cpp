// ferry bench end to end on a model synthesized in memory: the table, the JSON and CSV files,
// and the errors for what this build cannot run.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/test_util.hpp"

namespace ferry {
namespace {

std::string text_of(const std::filesystem::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), {}};
}

// The output's line that starts with `prefix`, or "" when there is none.
std::string line_starting(const std::string& output, const std::string& prefix) {
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(prefix, 0) == 0) return line;
  return "";
}

// Spaces around the commas of the sweep lists are dropped (" none, 50%"), and a model of a few
// MB prints its bytes per token in MB, not as 0.000 GB.
TEST(BenchCli, SyntheticRunWritesTableJsonAndCsv) {
  test::ScratchDir tmp;
  const auto r =
      test::run_ferry({"bench", "--synthetic", "qwen2-tiny", "--prompt", "8", "--gen", "4",
                       "--threads", "2", "--budgets", " none, 50%", "--policy", " pin ", "--json",
                       (tmp / "b.json").string(), "--csv", (tmp / "b.csv").string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("host memory: read"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("decode t/s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("MB/step"), std::string::npos) << r.output;
  // Each row is printed as soon as it is measured, before the next configuration starts.
  EXPECT_LT(r.output.find("\nnone "), r.output.find("[2/2]")) << r.output;
  std::istringstream none_row(line_starting(r.output, "none "));
  std::string budget, policy, format;
  double seqs = 0, prefill = 0, decode = 0, per_seq = 0, per_token = 0;
  none_row >> budget >> policy >> format >> seqs >> prefill >> decode >> per_seq >> per_token;
  EXPECT_EQ(seqs, 1) << r.output;
  EXPECT_EQ(per_seq, decode) << r.output;
  EXPECT_GT(per_token, 1.0) << r.output;  // qwen2-tiny: ~3 MB packed
  const auto j = nlohmann::json::parse(text_of(tmp / "b.json"));
  EXPECT_EQ(j["model"], "qwen2-tiny");
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_GT(j["bandwidth_gbps"]["read"].get<double>(), 0.1);
  ASSERT_EQ(j["runs"].size(), 2u);
  const auto& run = j["runs"][0];
  EXPECT_EQ(run["budget"], "none");
  EXPECT_GT(run["decode_tokens_per_s"].get<double>(), 0);
  EXPECT_GT(run["prefill_tokens_per_s"].get<double>(), 0);
  EXPECT_GT(run["gb_read_per_token"].get<double>(), 0.001);  // qwen2-tiny: ~3 MB packed
  EXPECT_EQ(run["gb_uploaded_per_token"].get<double>(), 0);  // no cache, nothing copied
  EXPECT_EQ(run["graph_step_fraction"].get<double>(), 0);    // CUDA graphs: GPU only
  const auto& paged = j["runs"][1];
  EXPECT_EQ(paged["budget"], "50%");
  EXPECT_EQ(paged["policy"], "pin");
  EXPECT_GT(paged["hit_rate"].get<double>(), 0.2);  // pin keeps part of the model resident
  EXPECT_GT(paged["gb_uploaded_per_token"].get<double>(), 0);  // and streams the rest
  const std::string csv = text_of(tmp / "b.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 3) << csv;
  EXPECT_EQ(csv.rfind("budget,budget_gb,policy,format,", 0), 0u) << csv;
}

// The sweep of the issue: four budgets x both policies x both formats, JSON and PNG. Below the
// whole model pin must serve more uses from the cache and upload less than lru (the decode
// speed follows from that, but speed is a benchmark's business, not a test's).
TEST(BenchCli, SweepShowsPinAheadOfLruAndPlotsAgainstTheBudget) {
  test::ScratchDir tmp;
  const auto r = test::run_ferry({"bench",
                                  "--synthetic",
                                  "qwen2-tiny",
                                  "--device",
                                  "cpu",
                                  "--prompt",
                                  "8",
                                  "--gen",
                                  "8",
                                  "--threads",
                                  "2",
                                  "--budgets",
                                  "25%,50%,75%,all",
                                  "--policy",
                                  "lru,pin",
                                  "--format",
                                  "int4,bf16",
                                  "--json",
                                  (tmp / "b.json").string(),
                                  "--plot",
                                  (tmp / "b.png").string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(text_of(tmp / "b.json"));
  ASSERT_EQ(j["runs"].size(), 16u);
  std::map<std::string, nlohmann::json> by;  // "budget policy format"
  for (const auto& run : j["runs"])
    by[run["budget"].get<std::string>() + " " + run["policy"].get<std::string>() + " " +
       run["format"].get<std::string>()] = run;
  for (const std::string format : {"int4", "bf16"}) {
    double last_gb = 0;
    for (const std::string budget : {"25%", "50%", "75%"}) {
      const auto& lru = by.at(budget + " lru " + format);
      const auto& pin = by.at(budget + " pin " + format);
      EXPECT_LT(lru["hit_rate"].get<double>(), 0.05) << budget << " " << format;
      EXPECT_GT(pin["hit_rate"].get<double>(), lru["hit_rate"].get<double>() + 0.1)
          << budget << " " << format;
      EXPECT_LT(pin["gb_uploaded_per_token"].get<double>(),
                lru["gb_uploaded_per_token"].get<double>())
          << budget << " " << format;
      EXPECT_GT(pin["budget_gb"].get<double>(), last_gb);  // the x axis of the plot
      last_gb = pin["budget_gb"].get<double>();
    }
    EXPECT_GT(by.at("all pin " + format)["hit_rate"].get<double>(), 0.99);
  }
  std::ifstream png(tmp / "b.png", std::ios::binary);
  char magic[8] = {};
  png.read(magic, 8);
  EXPECT_EQ(std::string(magic + 1, 3), "PNG") << "no PNG written";
  const std::string gp = text_of(tmp / "b.png.gp");
  EXPECT_NE(gp.find("cache budget (GB)"), std::string::npos) << gp;
  EXPECT_NE(gp.find("pin bf16 bound"), std::string::npos) << gp;
}

TEST(BenchCli, BadInvocationsAreOneLineErrors) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"bench"},
        {"bench", "m.ferry", "--synthetic", "qwen2-tiny"},
        {"bench", "--synthetic", "no-such-preset"},
        {"bench", "--synthetic", "qwen2-tiny", "--scheme", "bf16"},
        {"bench", "--synthetic", "qwen2-tiny", "--gen", "0"},
        {"bench", "--synthetic", "qwen2-tiny", "--repeat", "0"},
        {"bench", "--synthetic", "qwen2-tiny", "--device", "tpu"}}) {
    const auto r = test::run_ferry(args);
    EXPECT_EQ(r.exit_code, 1) << args.back() << ": " << r.output;
    EXPECT_NE(r.output.find("ferry: error: "), std::string::npos) << r.output;
  }
}

// Runs `bench --synthetic qwen2-tiny` with `extra` and expects a one-line error containing
// `expect`, given before the model is synthesized and the bandwidths measured.
void expect_early_error(const std::vector<std::string>& extra, const std::string& expect) {
  std::vector<std::string> args = {"bench", "--synthetic", "qwen2-tiny", "--prompt", "8",
                                   "--gen", "4",           "--threads",  "2"};
  args.insert(args.end(), extra.begin(), extra.end());
  const auto r = test::run_ferry(args);
  std::string all;
  for (const std::string& e : extra) all += "'" + e + "' ";
  EXPECT_EQ(r.exit_code, 1) << all << r.output;
  EXPECT_NE(r.output.find("ferry: error: "), std::string::npos) << all << r.output;
  EXPECT_NE(r.output.find(expect), std::string::npos) << all << r.output;
  EXPECT_EQ(r.output.find("host memory"), std::string::npos) << all << r.output;
  EXPECT_EQ(r.output.find("synthesizing"), std::string::npos) << all << r.output;
}

TEST(BenchCli, BadSweepListsAreErrorsBeforeAnyWork) {
  expect_early_error({"--budgets", "garbage"}, "--budgets: 'garbage'");
  expect_early_error({"--parallel", "0"}, "--parallel: '0' is not a whole number of sequences");
  expect_early_error({"--parallel", "1,x"}, "--parallel: 'x'");
  expect_early_error({"--parallel", "4097"}, "from 1 to 4096");
  expect_early_error({"--parallel", "1,,4"}, "--parallel: empty entry");
  expect_early_error({"--budgets", ""}, "--budgets is empty");
  expect_early_error({"--budgets", " "}, "--budgets is empty");
  expect_early_error({"--budgets", ","}, "--budgets: empty entry");
  expect_early_error({"--budgets", "all,"}, "--budgets: empty entry");
  expect_early_error({"--budgets", "200%"}, "--budgets: '200%'");
  expect_early_error({"--budgets", "0"}, "--budgets: '0'");
  expect_early_error({"--budgets", "50%", "--policy", "xyz"}, "--policy: 'xyz'");
  expect_early_error({"--budgets", "50%", "--policy", "lru,,pin"}, "--policy: empty entry");
  expect_early_error({"--budgets", "50%", "--format", "int4,fp8"}, "--format: 'fp8'");
  expect_early_error({"--batch", "0"}, "--batch");
  expect_early_error({"--kv-type", "f8"}, "f8");
}

// A budget of valid syntax below the model's minimum is skipped while the sweep goes on, but a
// sweep of which nothing ran is a failure, not an empty table.
TEST(BenchCli, EveryConfigurationSkippedIsAnError) {
  const auto r = test::run_ferry({"bench", "--synthetic", "qwen2-tiny", "--prompt", "8", "--gen",
                                  "4", "--threads", "2", "--budgets", "1K,2K", "--policy", "pin"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("skipped: "), std::string::npos) << r.output;
  // The cache's message speaks of the budget; bench puts its option for it in front.
  EXPECT_NE(r.output.find("skipped: --budgets: a cache budget of 1.00 KB is below the minimum"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("ferry: error: all 2 configurations were skipped"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("decode t/s"), std::string::npos) << r.output;
}

TEST(BenchCli, OutputPathsAreCheckedBeforeTheSweep) {
  test::ScratchDir tmp;
  expect_early_error({"--json", "/nonexistent/b.json"},
                     "--json: /nonexistent/b.json: directory /nonexistent does not exist");
  expect_early_error({"--csv", tmp.path.string()}, "is a directory");
  expect_early_error({"--csv", (tmp / "sub/").string()}, "a directory");
  expect_early_error({"--plot", "/nonexistent/b.png"},
                     "--plot: /nonexistent/b.png: directory /nonexistent does not exist");
  // The files are renamed into place: a device would be replaced by a regular file.
  if (std::filesystem::exists("/dev/full"))
    expect_early_error({"--json", "/dev/full"}, "--json: /dev/full: exists and is not a regular");
  expect_early_error({"--plot", (tmp / "it's.png").string()}, "single quote");
  std::filesystem::create_directory(tmp / "b.png.dat");  // where the plot's data would go
  expect_early_error({"--plot", (tmp / "b.png").string()},
                     "--plot " + (tmp / "b.png").string() + ": its gnuplot data");
}

// A write that fails after the sweep (here past a file-size limit of 400 bytes, which the CSV
// of one run fits and the JSON does not) says why and fails the exit; the table is printed
// before, the other outputs are still written, and the failed one leaves nothing behind.
TEST(BenchCli, WriteErrorsGiveTheReasonAndFailTheExit) {
  test::ScratchDir tmp;
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit small = old;
  small.rlim_cur = 400;
  // The limit and the ignored SIGXFSZ pass to the child: its write fails with EFBIG instead.
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const auto r = test::run_ferry({"bench", "--synthetic", "qwen2-tiny", "--prompt", "8", "--gen",
                                  "4", "--threads", "2", "--json", (tmp / "b.json").string(),
                                  "--csv", (tmp / "b.csv").string()});
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("decode t/s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ferry: error: --json: " + (tmp / "b.json").string()), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("File too large"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(tmp / "b.json"));
  EXPECT_NE(text_of(tmp / "b.csv").find("budget,budget_gb"), std::string::npos);
}

// The engine options bench shares with run and chat but sets itself, and the cache options it
// sweeps under other names, are errors, not silently ignored.
TEST(BenchCli, SharedOptionsBenchDoesNotTakeAreErrors) {
  // Not bench options at all (its --help lists --budgets, --policy, --format instead): a usage
  // error before any work.
  for (const char* cache_option : {"--cache-budget", "--cache-policy", "--cache-format"}) {
    const auto r = test::run_ferry({"bench", "--synthetic", "qwen2-tiny", cache_option, "lru"});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(std::string(cache_option + 2) + "’ does not exist"), std::string::npos)
        << r.output;
    EXPECT_EQ(r.output.find("host memory"), std::string::npos) << r.output;
  }
  const auto two = test::run_ferry({"bench", "a.ferry", "b.ferry"});
  EXPECT_EQ(two.exit_code, 1) << two.output;
  EXPECT_NE(two.output.find("unexpected argument 'b.ferry'"), std::string::npos) << two.output;
  expect_early_error({"--ctx", "11"}, "--ctx 11 is smaller than --prompt + --gen (12)");
  expect_early_error({"--lookahead", "4"}, "--lookahead needs a cache");
  for (const char* synth_only : {"--layers", "--scheme"}) {
    const auto r = test::run_ferry({"bench", "m.ferry", synth_only, "2"});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find(std::string(synth_only) + " applies only with --synthetic"),
              std::string::npos)
        << r.output;
  }
}

// A synthesized model larger than the memory is refused at once, with its size and what to
// lower, instead of filling memory for minutes and failing with out-of-memory.
TEST(BenchCli, SyntheticModelLargerThanMemoryIsRefusedAtOnce) {
  const auto t0 = std::chrono::steady_clock::now();
  // qwen2-tiny is ~0.6 MB a layer: 1e8 layers are ~60 TB.
  expect_early_error({"--layers", "100000000"}, "lower --layers");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));
}

// --parallel 1,4: a step of four sequences streams the same weights as a step of one (every
// weight once), so the bytes uploaded per token fall to about a quarter; the plot is tokens/s
// against the batch size, one line per budget.
TEST(BenchCli, ParallelSweepSharesEachStreamedWeight) {
  test::ScratchDir tmp;
  const auto r = test::run_ferry({"bench", "--synthetic", "qwen2-tiny", "--prompt", "8", "--gen",
                                  "8", "--threads", "2", "--budgets", "none,40%", "--policy", "lru",
                                  "--parallel", "1,4", "--json", (tmp / "b.json").string(),
                                  "--plot", (tmp / "b.png").string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(text_of(tmp / "b.json"));
  ASSERT_EQ(j["runs"].size(), 4u);
  std::map<std::string, nlohmann::json> by;  // "budget parallel"
  for (const auto& run : j["runs"])
    by[run["budget"].get<std::string>() + " " + std::to_string(run["parallel"].get<int>())] = run;
  for (const std::string budget : {"none", "40%"}) {
    const auto &one = by.at(budget + " 1"), &four = by.at(budget + " 4");
    EXPECT_DOUBLE_EQ(four["gb_read_per_step"].get<double>(), one["gb_read_per_step"].get<double>());
    EXPECT_DOUBLE_EQ(four["gb_read_per_token"].get<double>() * 4,
                     four["gb_read_per_step"].get<double>());
    EXPECT_NEAR(four["decode_tokens_per_s_per_sequence"].get<double>() * 4,
                four["decode_tokens_per_s"].get<double>(),
                1e-6 * four["decode_tokens_per_s"].get<double>());
  }
  const double step1 = by.at("40% 1")["gb_uploaded_per_step"].get<double>();
  const double step4 = by.at("40% 4")["gb_uploaded_per_step"].get<double>();
  EXPECT_GT(step1, 0);
  EXPECT_NEAR(step4, step1, 0.1 * step1);  // lru at 40% streams the same each step
  EXPECT_NEAR(by.at("40% 4")["gb_uploaded_per_token"].get<double>(), step4 / 4, 1e-12);
  const std::string gp = text_of(tmp / "b.png.gp");
  EXPECT_NE(gp.find("sequences decoded at once"), std::string::npos) << gp;
  EXPECT_NE(gp.find("budget 40% lru int4"), std::string::npos) << gp;
  EXPECT_NE(gp.find("no cache"), std::string::npos) << gp;
}

// --repeat times every pass and divides by all of them: what a step uploads and reads is the
// same figure as for one pass (lru at 40% streams the same each step), not 3 times it.
TEST(BenchCli, RepeatedPassesReportPerStepFigures) {
  test::ScratchDir tmp;
  std::map<std::string, nlohmann::json> by_repeat;
  for (const std::string repeat : {"1", "3"}) {
    const auto json = tmp / ("b" + repeat + ".json");
    const auto r = test::run_ferry({"bench", "--synthetic", "qwen2-tiny", "--prompt", "8", "--gen",
                                    "8", "--threads", "2", "--budgets", "40%", "--policy", "lru",
                                    "--repeat", repeat, "--json", json.string()});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    by_repeat[repeat] = nlohmann::json::parse(text_of(json))["runs"][0];
  }
  const auto &one = by_repeat.at("1"), &three = by_repeat.at("3");
  EXPECT_DOUBLE_EQ(three["gb_read_per_step"].get<double>(), one["gb_read_per_step"].get<double>());
  const double up1 = one["gb_uploaded_per_step"].get<double>();
  EXPECT_GT(up1, 0);
  EXPECT_NEAR(three["gb_uploaded_per_step"].get<double>(), up1, 0.1 * up1);
  EXPECT_GT(three["prefill_tokens_per_s"].get<double>(), 0);
  EXPECT_GT(three["decode_tokens_per_s"].get<double>(), 0);
}

// A run whose KV slots (or cache) would not fit in host memory is refused before the first run,
// naming it, instead of being killed for memory after the runs before it.
TEST(BenchCli, RunsThatDoNotFitInMemoryAreRefusedBeforeTheFirst) {
  // qwen2-tiny's f16 KV is 1 KB a position: 4096 slots of 4M positions are ~17 TB.
  const auto r =
      test::run_ferry({"bench", "--synthetic", "qwen2-tiny", "--prompt", "8", "--gen", "4",
                       "--threads", "2", "--parallel", "1,4096", "--ctx", "4000000"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("parallel 4096 needs"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("drop it from --budgets or --parallel"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("host memory: read"), std::string::npos) << "measured first";
  EXPECT_EQ(r.output.find("[1/2]"), std::string::npos) << "ran first";
}

}  // namespace
}  // namespace ferry
