// ferry::Error — the one exception type ferry throws at load and CLI boundaries. Its message is
// a single line that says what is wrong and, where it helps, what to do; the CLI prints it as
// "ferry: error: <message>" and exits non-zero.
#pragma once
#include <stdexcept>
#include <string>

namespace ferry {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace ferry
