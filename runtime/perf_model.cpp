#include "runtime/perf_model.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "base/error.hpp"

namespace ferry {
namespace {

void check(double v, const char* what) {
  if (!(v >= 0))  // also NaN
    throw Error(fmt::format("performance model: {} is {}; it must be a number >= 0", what, v));
}

// bytes / bandwidth, 0 without bytes, infinite without bandwidth.
double transfer_seconds(double bytes, double bw) {
  if (bytes == 0) return 0;
  if (bw == 0) return std::numeric_limits<double>::infinity();
  return bytes / bw;
}

}  // namespace

double step_seconds_bound(const TokenTraffic& t) {
  check(t.weight_bytes, "the weight bytes per token");
  check(t.kv_bytes, "the KV bytes per token");
  check(t.streamed_bytes, "the streamed bytes per step");
  check(t.read_bw, "the read bandwidth");
  check(t.copy_bw, "the copy bandwidth");
  check(t.compute_seconds, "the compute seconds per token");
  if (!(t.batch >= 1)) throw Error("performance model: the batch must be at least 1 sequence");
  return std::max({transfer_seconds(t.weight_bytes + t.batch * t.kv_bytes, t.read_bw),
                   transfer_seconds(t.streamed_bytes, t.copy_bw), t.batch * t.compute_seconds});
}

double token_seconds_bound(const TokenTraffic& t) {
  return step_seconds_bound(t) / t.batch;
}

double tokens_per_second_bound(const TokenTraffic& t) {
  const double s = token_seconds_bound(t);
  if (s == 0) return std::numeric_limits<double>::infinity();
  return std::isinf(s) ? 0 : 1 / s;
}

double mean_kv_bytes_per_token(double bytes_per_position, double prompt, double gen) {
  check(bytes_per_position, "the KV bytes per position");
  check(prompt, "the prompt length");
  check(gen, "the number of decoded tokens");
  if (gen == 0) return 0;
  return bytes_per_position * (prompt + (gen + 1) / 2);
}

}  // namespace ferry
