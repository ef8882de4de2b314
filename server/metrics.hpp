// GET /metrics: the scheduler's, the paging cache's and the HTTP layer's counters in Prometheus'
// text format (version 0.0.4), one family per figure, each with HELP and TYPE lines.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "runtime/scheduler.hpp"

namespace ferry {

// Responses the server wrote, by status; counted after each is sent.
struct HttpCounters {
  static constexpr std::array<int, 9> kCodes = {200, 204, 400, 401, 404, 413, 500, 503, 0};
  std::array<std::atomic<uint64_t>, kCodes.size()> responses{};  // the last: any other code
  void count(int status);
};

std::string format_metrics(const SchedulerStats& s, const std::optional<CacheStats>& cache,
                           const HttpCounters& http);

}  // namespace ferry
