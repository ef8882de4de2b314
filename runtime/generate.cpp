#include "runtime/generate.hpp"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Length of the longest tail of `text` that is a proper prefix of one of `stops`.
size_t partial_stop_length(std::string_view text, const std::vector<std::string>& stops) {
  size_t keep = 0;
  for (const std::string& s : stops)
    for (size_t n = std::min(s.empty() ? 0 : s.size() - 1, text.size()); n > keep; --n)
      if (text.substr(text.size() - n) == std::string_view(s).substr(0, n)) {
        keep = n;
        break;
      }
  return keep;
}

// eos_token_id of a config JSON: an id or a list of ids; nothing when absent or malformed.
void add_config_eos(const PackedFile& f, const char* key, std::vector<int32_t>& ids) {
  const auto it = f.file.metadata().find(key);
  if (it == f.file.metadata().end()) return;
  const auto j = nlohmann::json::parse(it->second, nullptr, false);
  if (!j.is_object() || !j.contains("eos_token_id")) return;
  const auto& v = j["eos_token_id"];
  for (const auto& id : v.is_array() ? v : nlohmann::json::array({v}))
    if (id.is_number_integer()) ids.push_back(id.get<int32_t>());
}

}  // namespace

std::vector<int32_t> eos_token_ids(const Engine& e) {
  std::vector<int32_t> ids;
  if (e.tokenizer().eos_id() >= 0) ids.push_back(e.tokenizer().eos_id());
  add_config_eos(e.file(), meta::kGenerationConfig, ids);
  add_config_eos(e.file(), meta::kConfig, ids);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

GenerationConfig generation_config(const Engine& e) {
  const auto& m = e.file().file.metadata();
  const auto it = m.find(meta::kGenerationConfig);
  if (it == m.end()) return {};
  const auto j = nlohmann::json::parse(it->second, nullptr, false);
  return parse_generation_config(j, "the packed file's generation_config.json");
}

std::string StopStringFilter::push(std::string_view text) {
  if (found_) return {};
  held_ += text;
  size_t first = held_.size();
  for (const std::string& s : stops_)
    if (!s.empty()) first = std::min(first, held_.find(s));
  if (first != held_.size()) {
    found_ = true;
    held_.resize(first);
    return std::exchange(held_, {});
  }
  const size_t keep = partial_stop_length(held_, stops_);
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopStringFilter::flush() {
  return std::exchange(held_, {});
}

std::string_view stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::eos:
      return "end of sequence";
    case StopReason::stop_string:
      return "stop string";
    case StopReason::max_tokens:
      return "token limit";
    case StopReason::context_full:
      return "context full";
    case StopReason::cancelled:
      return "cancelled";
  }
  return "?";
}

GenerateStats generate(Engine& e, Sampler& sampler, std::vector<int32_t>& context,
                       uint64_t& evaluated, const GenerateOptions& o,
                       const std::function<void(std::string_view)>& on_text) {
  if (context.empty()) throw Error("nothing to continue: the context holds no tokens");
  if (context.size() >= e.ctx())
    throw Error(Setting::ctx,
                fmt::format("the prompt ({} tokens) leaves no room in the context of {}; raise it",
                            context.size(), e.ctx()));
  GenerateStats st;
  evaluated = std::min<uint64_t>(evaluated, context.size() - 1);
  st.prompt_tokens = context.size() - evaluated;
  // Plain greedy: the pass picks the token (on a device only it crosses the bus).
  const bool greedy = sampler.plain_greedy();
  int32_t chosen = -1;
  auto eval = [&](std::span<const int32_t> tokens, uint64_t pos) {
    if (greedy)
      chosen = e.eval_greedy(tokens, pos);
    else
      e.eval(tokens, pos);
  };
  const auto t0 = Clock::now();
  eval(std::span(context).subspan(evaluated), evaluated);
  evaluated = context.size();
  st.prompt_seconds = seconds_since(t0);

  const auto t1 = Clock::now();
  StreamDecoder decoder(e.tokenizer());
  StopStringFilter filter(o.stop_strings);
  for (uint64_t i = 0; i < o.max_tokens; ++i) {
    if (o.cancel && o.cancel->load()) {
      st.reason = StopReason::cancelled;
      break;
    }
    const int32_t next = greedy ? chosen : sampler.sample(e.logits(), context);
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), next) != o.stop_ids.end()) {
      st.reason = StopReason::eos;
      break;
    }
    context.push_back(next);
    ++st.generated;
    on_text(filter.push(decoder.push(next)));
    if (filter.found()) {
      st.reason = StopReason::stop_string;
      break;
    }
    if (i + 1 == o.max_tokens) break;  // the last token is not evaluated: no one reads its logits
    if (context.size() == e.ctx()) {
      st.reason = StopReason::context_full;
      break;
    }
    eval(std::span(&context.back(), 1), evaluated);
    ++evaluated;
    ++st.decode_steps;
  }
  if (!filter.found()) on_text(filter.push(decoder.flush()) + filter.flush());
  st.generate_seconds = seconds_since(t1);
  return st;
}

}  // namespace ferry
