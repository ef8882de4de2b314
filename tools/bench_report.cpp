#include "tools/bench_report.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/atomic_file.hpp"
#include "base/error.hpp"

namespace ferry {
namespace {

using json = nlohmann::json;

// gnuplot on the PATH: --plot runs it after the sweep, when finding it missing is too late.
bool have_gnuplot() {
  const char* path = std::getenv("PATH");
  for (std::string_view dirs = path ? path : ""; !dirs.empty();) {
    const size_t colon = std::min(dirs.find(':'), dirs.size());
    const std::string dir(dirs.substr(0, colon));
    if (!dir.empty() && access((dir + "/gnuplot").c_str(), X_OK) == 0) return true;
    dirs.remove_prefix(std::min(colon + 1, dirs.size()));
  }
  return false;
}

// `what` names the file in the messages as the user gave it ("--json", or "--plot b.png: its
// gnuplot data" for a side file).
void check_path(const std::string& what, const std::string& path) {
  try {
    check_output_path(path);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", what, e.what()));
  }
}

void write(const std::string& what, const std::string& path, std::string_view text) {
  try {
    write_file_atomic(path, text);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", what, e.what()));
  }
}

std::string data_what(const std::string& png) {
  return "--plot " + png + ": its gnuplot data";
}
std::string script_what(const std::string& png) {
  return "--plot " + png + ": its gnuplot script";
}

// "policy format" of each series, in order of first appearance.
std::vector<std::string> plot_series(const std::vector<BenchRow>& rows) {
  std::vector<std::string> series;
  for (const BenchRow& r : rows) {
    const std::string k = r.config.policy + " " + r.config.format;
    if (std::find(series.begin(), series.end(), k) == series.end()) series.push_back(k);
  }
  return series;
}

void draw(const std::string& png, const std::vector<BenchRow>& rows, const std::string& model) {
  write(data_what(png), png + ".dat", plot_data(rows));
  write(script_what(png), png + ".gp", plot_script(png, rows, "ferry bench: " + model));
  if (std::system(fmt::format("gnuplot '{}.gp'", png).c_str()) != 0)
    throw Error(fmt::format("--plot {}: gnuplot failed on {}.gp (its message is above)", png, png));
}

}  // namespace

void BenchTable::print(const BenchRow& r) {
  if (!mb_) {
    mb_ = r.gb_per_token < 0.1;
    std::fprintf(out_, "%-8s %-6s %-6s %11s %10s %9s %10s %6s %6s %10s %7s\n", "budget", "policy",
                 "format", "prefill t/s", "decode t/s", *mb_ ? "MB/token" : "GB/token",
                 *mb_ ? "upload MB" : "upload GB", "hits", "wait", "bound t/s", "x bound");
  }
  const double scale = *mb_ ? 1e3 : 1;
  std::fprintf(out_, "%-8s %-6s %-6s %11.1f %10.2f %9.3f %10.3f %5.0f%% %5.0f%% %10.2f %7.2f\n",
               r.config.budget.c_str(), r.config.policy.c_str(), r.config.format.c_str(),
               r.prefill_tps, r.decode_tps, scale * r.gb_per_token, scale * r.upload_gb_per_token,
               100 * r.hit_rate, 100 * r.wait_fraction, r.bound_tps, r.ratio);
  std::fflush(out_);
}

std::string bench_json(const std::string& model, const Bandwidths& bw,
                       const std::vector<BenchRow>& rows) {
  json h2d = json::array();
  for (const Bandwidths::Chunk& c : bw.h2d)
    h2d.push_back({{"chunk_bytes", c.bytes},
                   {"pinned_gbps", c.pinned_gbps},
                   {"pageable_gbps", c.pageable_gbps}});
  json j = {{"model", model},
            {"device", bw.device},
            {"bandwidth_gbps",
             {{"read", bw.read_gbps}, {"upload", bw.upload_gbps}, {"copy", bw.memcpy_gbps}}},
            {"h2d_by_chunk", h2d},
            {"runs", json::array()}};
  for (const BenchRow& r : rows)
    j["runs"].push_back({{"budget", r.config.budget},
                         {"budget_gb", r.budget_gb},
                         {"policy", r.config.policy},
                         {"format", r.config.format},
                         {"prefill_tokens_per_s", r.prefill_tps},
                         {"decode_tokens_per_s", r.decode_tps},
                         {"gb_read_per_token", r.gb_per_token},
                         {"gb_uploaded_per_token", r.upload_gb_per_token},
                         {"hit_rate", r.hit_rate},
                         {"wait_fraction", r.wait_fraction},
                         {"bound_tokens_per_s", r.bound_tps},
                         {"ratio_to_bound", r.ratio}});
  return j.dump(2) + "\n";
}

std::string bench_csv(const std::vector<BenchRow>& rows) {
  std::string s =
      "budget,budget_gb,policy,format,prefill_tokens_per_s,decode_tokens_per_s,gb_read_per_token,"
      "gb_uploaded_per_token,hit_rate,wait_fraction,bound_tokens_per_s,ratio_to_bound\n";
  for (const BenchRow& r : rows)
    s += fmt::format("{},{:.4f},{},{},{:.3f},{:.3f},{:.5f},{:.5f},{:.4f},{:.4f},{:.3f},{:.3f}\n",
                     r.config.budget, r.budget_gb, r.config.policy, r.config.format, r.prefill_tps,
                     r.decode_tps, r.gb_per_token, r.upload_gb_per_token, r.hit_rate,
                     r.wait_fraction, r.bound_tps, r.ratio);
  return s;
}

// Decode tokens/s and the bound against the cache budget (GB of arena), one gnuplot data block
// per policy and format; runs without a cache sit at the size of the whole weights.
std::string plot_data(std::vector<BenchRow> rows) {
  std::stable_sort(rows.begin(), rows.end(),
                   [](const BenchRow& a, const BenchRow& b) { return a.budget_gb < b.budget_gb; });
  std::string d;
  for (const std::string& series : plot_series(rows)) {
    for (const BenchRow& r : rows)
      if (r.config.policy + " " + r.config.format == series)
        d += fmt::format("{:.5f} {:.4f} {:.4f}\n", r.budget_gb, r.decode_tps, r.bound_tps);
    d += "\n\n";  // gnuplot: the next data block
  }
  return d;
}

// gnuplot (Debian's gnuplot-nox): one line per policy and format, each with its bound dashed in
// the same colour.
std::string plot_script(const std::string& png, const std::vector<BenchRow>& rows,
                        const std::string& title) {
  const std::vector<std::string> series = plot_series(rows);
  std::string plots;
  for (size_t i = 0; i < series.size(); ++i) {
    const std::string name = series[i] == "- -" ? "no cache" : series[i];
    plots += fmt::format(
        "{}'{}.dat' index {} using 1:2 with linespoints lw 2 lc {} title '{}', "
        "'' index {} using 1:3 with lines dt 2 lc {} title '{} bound'",
        i ? ", " : "", png, i, i + 1, name, i, i + 1, name);
  }
  return fmt::format(
      "set terminal pngcairo size 900,540\nset output '{}'\nset title '{}'\n"
      "set xlabel 'cache budget (GB)'\nset ylabel 'decode tokens/s'\nset yrange [0:*]\n"
      "set xrange [0:*]\nset key outside right\nset grid\nplot {}\n",
      png, title, plots);
}

void check_report_paths(const ReportPaths& p) {
  if (!p.json.empty()) check_path("--json", p.json);
  if (!p.csv.empty()) check_path("--csv", p.csv);
  if (p.png.empty()) return;
  // The path is quoted with ' in the gnuplot script and on gnuplot's command line.
  if (p.png.find('\'') != std::string::npos)
    throw Error("--plot: '" + p.png + "' contains a single quote, which gnuplot cannot take");
  check_path("--plot", p.png);
  check_path(data_what(p.png), p.png + ".dat");
  check_path(script_what(p.png), p.png + ".gp");
  if (!have_gnuplot())
    throw Error(
        "--plot needs gnuplot, which is not on the PATH (scripts/setup.sh installs gnuplot-nox)");
}

int write_reports(const ReportPaths& p, const std::string& model, const Bandwidths& bw,
                  const std::vector<BenchRow>& rows) {
  int failures = 0;
  const auto attempt = [&failures](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      std::fprintf(stderr, "ferry: error: %s\n", e.what());
      ++failures;
    }
  };
  if (!p.json.empty()) attempt([&] { write("--json", p.json, bench_json(model, bw, rows)); });
  if (!p.csv.empty()) attempt([&] { write("--csv", p.csv, bench_csv(rows)); });
  if (!p.png.empty()) attempt([&] { draw(p.png, rows, model); });
  return failures;
}

}  // namespace ferry
