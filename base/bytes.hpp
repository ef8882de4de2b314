// Byte counts as people read them, for messages, tables and progress lines.
#pragma once
#include <string>

namespace ferry {

// "12.30 GB"-style decimal sizes (powers of 1000, as disks and bandwidths are quoted); "512 B"
// below a kilobyte.
std::string human_bytes(double bytes);

}  // namespace ferry
