// How much host memory the system can give this process now, for the checks that turn an
// oversized --ctx or model into one clear line instead of an out-of-memory failure mid-load.
#pragma once
#include <cstdint>

namespace ferry {

// MemAvailable of /proc/meminfo (what can be allocated without swapping, page cache counted as
// reclaimable), or where that cannot be read the free physical pages; capped by a cgroup v2
// memory limit where there is one. 0 when nothing is known.
uint64_t host_memory_available();

}  // namespace ferry
