// ferry bench end to end on a model synthesized in memory: the table, the JSON and CSV files,
// and the errors for what this build cannot run.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "tests/test_util.hpp"

namespace ferry {
namespace {

std::string text_of(const std::filesystem::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), {}};
}

TEST(BenchCli, SyntheticRunWritesTableJsonAndCsv) {
  test::ScratchDir tmp;
  const auto r =
      test::run_ferry({"bench", "--synthetic", "qwen2-tiny", "--prompt", "8", "--gen", "4",
                       "--threads", "2", "--budgets", "none,50%", "--policy", "pin", "--json",
                       (tmp / "b.json").string(), "--csv", (tmp / "b.csv").string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("host memory: read"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("decode t/s"), std::string::npos) << r.output;
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
        {"bench", "--synthetic", "qwen2-tiny", "--device", "tpu"}}) {
    const auto r = test::run_ferry(args);
    EXPECT_EQ(r.exit_code, 1) << args.back() << ": " << r.output;
    EXPECT_NE(r.output.find("ferry: error: "), std::string::npos) << r.output;
  }
}

}  // namespace
}  // namespace ferry
