#include "runtime/host_memory.hpp"

#include <unistd.h>

#include <fstream>
#include <string>

namespace ferry {

uint64_t host_memory_available() {
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);)  // "MemAvailable:   123456 kB"
    if (line.starts_with("MemAvailable:")) return std::stoull(line.substr(13)) * 1024;
  const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
}

}  // namespace ferry
