// ferry::Error — the one exception type ferry throws at load and CLI boundaries. Its message is
// a single line that says what is wrong and, where it helps, what to do; the CLI prints it as
// "ferry: error: <message>" and exits non-zero.
//
// Library errors speak of values, not of command-line flags: "the prompt (90 tokens) leaves no
// room in the context of 64; raise it", not "...; raise --ctx". An error about a value the caller
// chose carries the Setting it belongs to, and the command line (tools/option_names.hpp) prints
// its own option for that setting in front: "ferry: error: --ctx: the prompt (90 tokens) ...".
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace ferry {

// The caller-chosen settings a library error can be about.
enum class Setting : uint8_t {
  none,
  ctx,            // the context (KV cache) in tokens
  batch,          // prompt tokens per forward pass
  threads,        // CPU worker threads
  kv_type,        // the KV cache's element type
  layers,         // the layer count of a synthesized model
  cache_budget,   // the weight cache's size
  cache_format,   // the weight cache's format (int4, bf16)
  verify,         // checking the weights' checksums on load
  device,         // where the forward pass runs (cpu, cuda)
  vram_limit,     // the device memory ferry may use
  chat_template,  // the chat format
  output,         // the path of the file or directory written
  parallel,       // sequences served at once (KV slots)
};

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
  Error(Setting s, const std::string& message) : std::runtime_error(message), setting(s) {}
  Setting setting = Setting::none;
};

}  // namespace ferry
