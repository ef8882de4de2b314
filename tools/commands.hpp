// The subcommands of the ferry command line; each parses its own options (cxxopts) and returns
// the process exit code. Errors are thrown as ferry::Error and printed by main().
#pragma once
#include <cstdint>
#include <string_view>

namespace ferry {

int cmd_quantize(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_synth(int argc, char** argv);
int cmd_run(int argc, char** argv);

// "512M", "2G", "1.5GB", "4096" (bytes); decimal units (G = 1e9) like the sizes ferry prints,
// binary ones with "GiB"/"MiB"/"KiB". Throws ferry::Error naming `option` on anything else.
uint64_t parse_size(std::string_view text, std::string_view option);

}  // namespace ferry
