// spin_cpu (kernels/spin.hpp): the calling thread sleeps, as the copy or compute side it stands
// for would be delayed.
#include <chrono>
#include <thread>

#include "kernels/spin.hpp"

namespace ferry {

void spin_cpu(uint32_t us) {
  std::this_thread::sleep_for(std::chrono::microseconds(us));
}

}  // namespace ferry
