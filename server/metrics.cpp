#include "server/metrics.hpp"

#include <fmt/format.h>

namespace ferry {
namespace {

void family(std::string& out, const char* name, const char* type, const char* help, double value) {
  fmt::format_to(std::back_inserter(out), "# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}\n", name, help,
                 type, value);
}

}  // namespace

void HttpCounters::count(int status) {
  size_t i = 0;
  while (i + 1 < kCodes.size() && kCodes[i] != status) ++i;
  responses[i].fetch_add(1, std::memory_order_relaxed);
}

std::string format_metrics(const SchedulerStats& s, const std::optional<CacheStats>& cache,
                           const HttpCounters& http) {
  std::string out;
  family(out, "ferry_requests_submitted_total", "counter", "Requests the scheduler accepted.",
         double(s.submitted));
  family(out, "ferry_requests_finished_total", "counter",
         "Requests that ended (cancelled ones included).", double(s.finished));
  family(out, "ferry_requests_cancelled_total", "counter",
         "Requests ended by a client that left, or by the server stopping.", double(s.cancelled));
  family(out, "ferry_requests_rejected_total", "counter", "Requests refused with a full queue.",
         double(s.rejected));
  family(out, "ferry_prompt_tokens_total", "counter", "Prompt tokens evaluated.",
         double(s.prompt_tokens));
  family(out, "ferry_generated_tokens_total", "counter", "Tokens generated.",
         double(s.generated_tokens));
  family(out, "ferry_busy_seconds_total", "counter", "Seconds the forward passes ran.",
         s.busy_seconds);
  family(out, "ferry_steps_total", "counter", "Forward passes the scheduler ran.", double(s.steps));
  family(out, "ferry_step_tokens_total", "counter", "Tokens those passes ran (prompt and decode).",
         double(s.step_tokens));
  family(out, "ferry_tokens_per_second", "gauge",
         "Generated tokens per second of forward passes, since start.",
         s.busy_seconds > 0 ? double(s.generated_tokens) / s.busy_seconds : 0);
  family(out, "ferry_queue_depth", "gauge", "Requests waiting for a KV slot.", double(s.queued));
  family(out, "ferry_kv_slots_used", "gauge", "KV slots serving a request.", double(s.active));
  family(out, "ferry_kv_slots", "gauge", "KV slots (--parallel).", double(s.slots));
  if (cache) {
    family(out, "ferry_cache_weight_uses_total", "counter", "Weight uses through the cache.",
           double(cache->acquires));
    family(out, "ferry_cache_hits_total", "counter", "Weight uses found resident.",
           double(cache->hits));
    family(out, "ferry_cache_hit_rate", "gauge", "Hits per weight use, since start.",
           cache->acquires ? double(cache->hits) / double(cache->acquires) : 0);
    family(out, "ferry_cache_uploaded_bytes_total", "counter", "Bytes uploaded into the cache.",
           double(cache->uploaded_bytes));
    family(out, "ferry_cache_resident_bytes", "gauge", "Bytes resident in the cache.",
           double(cache->resident_bytes));
  }
  out +=
      "# HELP ferry_http_responses_total HTTP responses sent, by status (0: any other).\n"
      "# TYPE ferry_http_responses_total counter\n";
  for (size_t i = 0; i < HttpCounters::kCodes.size(); ++i)
    fmt::format_to(std::back_inserter(out), "ferry_http_responses_total{{code=\"{}\"}} {}\n",
                   HttpCounters::kCodes[i], http.responses[i].load());
  return out;
}

}  // namespace ferry
