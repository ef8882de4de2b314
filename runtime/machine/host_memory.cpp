#include "runtime/machine/host_memory.hpp"

#include <unistd.h>

#include <fstream>
#include <string>

namespace ferry {
namespace {

// What a cgroup v2 memory limit leaves this process's group (a container's limit does not show
// in /proc/meminfo); 0 without a limit.
uint64_t cgroup_memory_left() {
  std::ifstream max_in("/sys/fs/cgroup/memory.max"), current_in("/sys/fs/cgroup/memory.current");
  std::string max;
  uint64_t current = 0;
  if (!(max_in >> max) || max == "max" || !(current_in >> current)) return 0;
  const uint64_t limit = std::stoull(max);
  return limit > current ? limit - current : 1;  // 1, not 0: at the limit, nothing is left
}

}  // namespace

uint64_t host_memory_available() {
  uint64_t avail = 0;
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);)  // "MemAvailable:   123456 kB"
    if (line.starts_with("MemAvailable:")) avail = std::stoull(line.substr(13)) * 1024;
  if (!avail) {
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) avail = uint64_t(pages) * uint64_t(page);
  }
  if (const uint64_t left = cgroup_memory_left(); left && (!avail || left < avail)) avail = left;
  return avail;
}

}  // namespace ferry
