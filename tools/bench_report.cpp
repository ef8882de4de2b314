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

// Whether the sweep has more than one batch size: then the plot is tokens/s against it, one line
// per budget, policy and format; otherwise against the budget, one line per policy and format.
bool by_parallel(const std::vector<BenchRow>& rows) {
  return std::any_of(rows.begin(), rows.end(), [&](const BenchRow& r) {
    return r.config.parallel != rows.front().config.parallel;
  });
}

std::string series_key(const BenchRow& r, bool parallel) {
  const std::string k = r.config.policy + " " + r.config.format;
  if (!parallel) return k;
  return r.config.budget == "none" ? "no cache" : "budget " + r.config.budget + " " + k;
}

// The key of each series, in order of first appearance.
std::vector<std::string> plot_series(const std::vector<BenchRow>& rows) {
  const bool parallel = by_parallel(rows);
  std::vector<std::string> series;
  for (const BenchRow& r : rows) {
    const std::string k = series_key(r, parallel);
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
    const char* unit = *mb_ ? "MB" : "GB";
    std::fprintf(out_, "%-8s %-6s %-6s %4s %11s %10s %9s %9s %12s %13s %6s %6s %10s %7s\n",
                 "budget", "policy", "format", "seqs", "prefill t/s", "decode t/s", "seq t/s",
                 fmt::format("{}/step", unit).c_str(), fmt::format("upload {}/st", unit).c_str(),
                 fmt::format("upload {}/tok", unit).c_str(), "hits", "wait", "bound t/s",
                 "x bound");
  }
  const double scale = *mb_ ? 1e3 : 1;
  std::fprintf(out_,
               "%-8s %-6s %-6s %4llu %11.1f %10.2f %9.2f %9.3f %12.3f %13.4f %5.0f%% %5.0f%% "
               "%10.2f %7.2f\n",
               r.config.budget.c_str(), r.config.policy.c_str(), r.config.format.c_str(),
               (unsigned long long)r.config.parallel, r.prefill_tps, r.decode_tps, r.seq_decode_tps,
               scale * r.gb_per_step, scale * r.upload_gb_per_step, scale * r.upload_gb_per_token,
               100 * r.hit_rate, 100 * r.wait_fraction, r.bound_tps, r.ratio);
  if (r.graph_fraction > 0)  // --cuda-graph: whether the steps above ran as graphs
    std::fprintf(out_, "%8s %.0f%% of the decode steps above ran as one CUDA graph each\n", "",
                 100 * r.graph_fraction);
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
                         {"parallel", r.config.parallel},
                         {"prefill_tokens_per_s", r.prefill_tps},
                         {"decode_tokens_per_s", r.decode_tps},
                         {"decode_tokens_per_s_per_sequence", r.seq_decode_tps},
                         {"gb_read_per_step", r.gb_per_step},
                         {"gb_read_per_token", r.gb_per_token},
                         {"gb_uploaded_per_step", r.upload_gb_per_step},
                         {"gb_uploaded_per_token", r.upload_gb_per_token},
                         {"hit_rate", r.hit_rate},
                         {"wait_fraction", r.wait_fraction},
                         {"bound_tokens_per_s", r.bound_tps},
                         {"ratio_to_bound", r.ratio},
                         {"graph_step_fraction", r.graph_fraction}});
  return j.dump(2) + "\n";
}

std::string bench_csv(const std::vector<BenchRow>& rows) {
  std::string s =
      "budget,budget_gb,policy,format,parallel,prefill_tokens_per_s,decode_tokens_per_s,"
      "decode_tokens_per_s_per_sequence,gb_read_per_step,gb_read_per_token,gb_uploaded_per_step,"
      "gb_uploaded_per_token,hit_rate,wait_fraction,bound_tokens_per_s,ratio_to_bound,"
      "graph_step_fraction\n";
  for (const BenchRow& r : rows)
    s += fmt::format(
        "{},{:.4f},{},{},{},{:.3f},{:.3f},{:.3f},{:.5f},{:.5f},{:.5f},{:.5f},{:.4f},{:.4f},{:.3f},"
        "{:.3f},{:.3f}\n",
        r.config.budget, r.budget_gb, r.config.policy, r.config.format, r.config.parallel,
        r.prefill_tps, r.decode_tps, r.seq_decode_tps, r.gb_per_step, r.gb_per_token,
        r.upload_gb_per_step, r.upload_gb_per_token, r.hit_rate, r.wait_fraction, r.bound_tps,
        r.ratio, r.graph_fraction);
  return s;
}

// Decode tokens/s (all sequences together) and the bound against the cache budget (GB of arena),
// one gnuplot data block per policy and format, runs without a cache at the size of the whole
// weights; or, when the sweep has several batch sizes, against the batch size, a block per budget.
std::string plot_data(std::vector<BenchRow> rows) {
  const bool parallel = by_parallel(rows);
  const auto x = [parallel](const BenchRow& r) {
    return parallel ? double(r.config.parallel) : r.budget_gb;
  };
  std::stable_sort(rows.begin(), rows.end(),
                   [&](const BenchRow& a, const BenchRow& b) { return x(a) < x(b); });
  std::string d;
  for (const std::string& series : plot_series(rows)) {
    for (const BenchRow& r : rows)
      if (series_key(r, parallel) == series)
        d += fmt::format("{:.5f} {:.4f} {:.4f}\n", x(r), r.decode_tps, r.bound_tps);
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
  const std::string x = by_parallel(rows)
                            ? "set xlabel 'sequences decoded at once'\nset logscale x 2\n"
                            : "set xlabel 'cache budget (GB)'\nset xrange [0:*]\n";
  return fmt::format(
      "set terminal pngcairo size 900,540\nset output '{}'\nset title '{}'\n{}"
      "set ylabel 'decode tokens/s (all sequences)'\nset yrange [0:*]\n"
      "set key outside right\nset grid\nplot {}\n",
      png, title, x, plots);
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
