// The reports of ferry bench: the table on stdout, printed a row at a time as the sweep measures
// them, and the files --json, --csv and --plot ask for, each written atomically.
#pragma once
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "tools/bench_sweep.hpp"

namespace ferry {

// The table. Bytes per token are in GB, or in MB when the first row's are below 0.1 GB (a small
// model's 3 MB would print as 0.003 GB, and its uploads as 0.000); the header comes with that
// first row. Each row is flushed at once.
class BenchTable {
 public:
  explicit BenchTable(FILE* out = stdout) : out_(out) {}
  void print(const BenchRow& r);

 private:
  FILE* out_;
  std::optional<bool> mb_;  // set by the first row
};

// The files as text: JSON (with the model's name and the bandwidths), CSV, and the gnuplot data
// (one block per policy and format, by budget) and script for `png`.
std::string bench_json(const std::string& model, const Bandwidths& bw,
                       const std::vector<BenchRow>& rows);
std::string bench_csv(const std::vector<BenchRow>& rows);
std::string plot_data(std::vector<BenchRow> rows);
std::string plot_script(const std::string& png, const std::vector<BenchRow>& rows,
                        const std::string& title);

// The outputs asked for; an empty path is not written.
struct ReportPaths {
  std::string json, csv, png;
};

// Refuses, before any work, a path that could not be written at the end: each message names the
// option (--json, --csv, --plot, or "--plot PNG: its gnuplot data" for a side file), and --plot
// also needs a path without ' and gnuplot on the PATH.
void check_report_paths(const ReportPaths& p);

// Writes each file asked for, even when another fails; each failure is printed as one
// "ferry: error: " line on stderr. Returns the number of failures.
int write_reports(const ReportPaths& p, const std::string& model, const Bandwidths& bw,
                  const std::vector<BenchRow>& rows);

}  // namespace ferry
