// The command line's names for the library's settings. Library errors speak of values and carry
// the Setting they are about (base/error.hpp); each command prints its own option for it in front
// of the message: bench sweeps the cache budget with --budgets where run and chat take
// --cache-budget.
#pragma once
#include <string>
#include <string_view>

#include "base/error.hpp"

namespace ferry {

// The option of `ferry <command>` that sets `s` ("--ctx", "-o"), or "" when it has none.
std::string_view option_name(std::string_view command, Setting s);

// e's message as `ferry <command>` prints it after "ferry: error: ": "--ctx: <message>" when e is
// about a setting the command has an option for, the message alone otherwise.
std::string cli_message(const Error& e, std::string_view command);

}  // namespace ferry
