#include "base/threads.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/error.hpp"

namespace ferry {

void run_threads(unsigned threads, const std::function<void()>& fn,
                 const std::function<void()>& report) {
  std::mutex mu;
  std::condition_variable cv;
  unsigned finished = 0;
  std::vector<std::jthread> pool;
  try {
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&] {
        fn();
        std::lock_guard lock(mu);
        ++finished;
        cv.notify_one();
      });
  } catch (const std::system_error& e) {
    pool.clear();  // joins the workers that started; the caller discards what they produced
    throw Error(Setting::threads,
                fmt::format("cannot start {} worker threads ({}); use fewer", threads, e.what()));
  }
  std::unique_lock lock(mu);
  while (!cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return finished == threads; }))
    report();
  report();
}

void check_thread_request(unsigned requested) {
  if (requested > kMaxThreads)
    throw Error(Setting::threads,
                fmt::format("{} worker threads asked for: at most {} (this machine has {} cores)",
                            requested, kMaxThreads, std::thread::hardware_concurrency()));
}

unsigned thread_count(unsigned requested) {
  return requested ? requested : std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace ferry
