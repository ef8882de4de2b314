#include "tools/option_names.hpp"

namespace ferry {

std::string_view option_name(std::string_view command, Setting s) {
  const bool bench = command == "bench";
  switch (s) {
    case Setting::none:
      return "";
    case Setting::ctx:
      return "--ctx";
    case Setting::batch:
      return "--batch";
    case Setting::threads:
      return "--threads";
    case Setting::kv_type:
      return "--kv-type";
    case Setting::layers:
      return bench || command == "synth" ? "--layers" : "";
    case Setting::cache_budget:
      return bench ? "--budgets" : "--cache-budget";
    case Setting::cache_format:
      return bench ? "--format" : "--cache-format";
    case Setting::verify:
      return "--no-verify";
    case Setting::device:
      return "--device";
    case Setting::vram_limit:
      return "--vram-limit";
    case Setting::chat_template:
      return command == "chat" ? "--template" : "";
    case Setting::output:
      // bench writes several files (--json, --csv, --plot) and names each in its own messages.
      return command == "quantize" || command == "synth" ? "-o" : "";
    case Setting::parallel:
      return "--parallel";
  }
  return "";
}

std::string cli_message(const Error& e, std::string_view command) {
  const std::string_view option = option_name(command, e.setting);
  if (option.empty()) return e.what();
  return std::string(option) + ": " + e.what();
}

}  // namespace ferry
