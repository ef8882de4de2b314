#include "quantizer/parallel.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace ferry {

void run_pool(unsigned threads, const std::function<void()>& fn,
              const std::function<void()>& report) {
  std::mutex mu;
  std::condition_variable cv;
  unsigned finished = 0;
  std::vector<std::jthread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      fn();
      std::lock_guard lock(mu);
      ++finished;
      cv.notify_one();
    });
  std::unique_lock lock(mu);
  while (!cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return finished == threads; }))
    report();
  report();
}

unsigned thread_count(unsigned requested) {
  return requested ? requested : std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace ferry
