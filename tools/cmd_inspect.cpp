// ferry inspect PATH [--json]: a .ferry file, a safetensors file, or a Hugging Face directory.
#include <cxxopts.hpp>

#include <algorithm>
#include <cstdio>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/bytes.hpp"
#include "base/error.hpp"
#include "base/threads.hpp"
#include "format/packed_file.hpp"
#include "quantizer/checkpoint.hpp"
#include "quantizer/convert.hpp"
#include "tools/commands.hpp"

namespace ferry {
namespace {

using json = nlohmann::ordered_json;

json model_json(const ModelConfig& c) {
  json j = {{"architecture", c.architecture},
            {"family", family_name(c.family)},
            {"hidden", c.hidden},
            {"intermediate", c.intermediate},
            {"layers", c.layers},
            {"heads", c.heads},
            {"kv_heads", c.kv_heads},
            {"head_dim", c.head_dim},
            {"vocab", c.vocab},
            {"max_position", c.max_position},
            {"rope_theta", c.rope_theta},
            {"rope_scaling", c.rope_scaling.type.empty() ? "none" : c.rope_scaling.type},
            {"tied_embeddings", c.tied_embeddings},
            {"qkv_bias", c.qkv_bias},
            {"qk_norm", c.qk_norm},
            {"sliding_window", c.sliding_window},
            {"max_context", c.context_limit},
            {"dtype", c.dtype.empty() ? "unspecified" : c.dtype}};
  if (c.rope_scaling.type != "") j["rope_factor"] = c.rope_scaling.factor;
  return j;
}

// What `ferry run` and `ferry chat` sample with when no sampling option is given.
void add_generation(json& j, const std::string& text, const std::string& what) {
  try {
    const GenerationConfig g = parse_generation_config(nlohmann::json::parse(text), what);
    j["generation"] = {{"do_sample", g.do_sample}, {"eos_token_ids", g.eos_token_ids}};
    if (g.do_sample)
      j["generation"].update(
          {{"temperature", g.temperature}, {"top_k", g.top_k}, {"top_p", g.top_p}});
  } catch (const std::exception& e) {
    j["generation_error"] = e.what();
  }
}

// The model section from a config.json text; an unsupported or broken config is reported, not
// fatal: inspect describes files that ferry cannot run too.
void add_model(json& j, const std::string& config_text, const std::string& what) {
  try {
    j["model"] = model_json(parse_model_config(nlohmann::json::parse(config_text), what));
  } catch (const std::exception& e) {
    j["model_error"] = e.what();
  }
}

void add_tensors(json& j, const std::vector<const TensorView*>& tensors) {
  json list = json::array();
  std::map<std::string, uint64_t> by_dtype;
  uint64_t total = 0;
  for (const TensorView* t : tensors) {
    list.push_back({{"name", t->name},
                    {"dtype", dtype_name(t->dtype)},
                    {"shape", t->shape},
                    {"bytes", t->nbytes}});
    by_dtype[std::string(dtype_name(t->dtype))] += t->nbytes;
    total += t->nbytes;
  }
  j["tensors"] = list;
  j["totals"] = {{"tensors", tensors.size()}, {"bytes", total}, {"bytes_by_dtype", by_dtype}};
}

std::vector<const TensorView*> views(const SafetensorsFile& f) {
  std::vector<const TensorView*> v;
  for (const TensorView& t : f.tensors()) v.push_back(&t);
  return v;
}

const char* lm_head_name(LmHeadStorage s) {
  switch (s) {
    case LmHeadStorage::int4:
      return "INT4";
    case LmHeadStorage::int8:
      return "INT8";
    case LmHeadStorage::bf16:
      return "BF16";
    case LmHeadStorage::embedding:
      return "the embedding (tied, BF16, stored once)";
  }
  return "unknown";
}

// The linear weights by storage: how many, their bytes (codes and scales) and bits per weight.
json storage_json(const PackedFile& p) {
  const PackedPlan plan = plan_packed(p.config, p.scheme, p.storage);
  json by = json::object();
  for (const PackedWeight& w : plan.weights) {
    if (w.spec.role != WeightRole::linear && w.spec.role != WeightRole::lm_head) continue;
    const char* k = w.storage == WeightStorage::int4   ? "INT4"
                    : w.storage == WeightStorage::int8 ? "INT8"
                                                       : "BF16";
    uint64_t bytes = 0;
    for (size_t t : w.tensors) bytes += plan.tensors[t].nbytes();
    json& e = by[k];
    if (e.is_null()) e = {{"count", 0}, {"bytes", 0}, {"weights", 0}};
    e["count"] = e["count"].get<uint64_t>() + 1;
    e["bytes"] = e["bytes"].get<uint64_t>() + bytes;
    e["weights"] = e["weights"].get<uint64_t>() + w.spec.shape[0] * w.spec.shape[1];
  }
  for (auto& [k, e] : by.items())
    e["bits_per_weight"] = 8.0 * e["bytes"].get<double>() / e["weights"].get<double>();
  return {{"by_storage", by}, {"lm_head", lm_head_name(p.storage.lm_head)}};
}

json inspect_packed(const std::filesystem::path& path, bool verify) {
  const PackedFile p = PackedFile::open(path);
  json j = {{"path", path.string()}, {"kind", "ferry"}};
  const auto& m = p.file.metadata();
  j["format_version"] = m.at(meta::kVersion);
  j["scheme"] = scheme_name(p.scheme);
  j["block_size"] = kBlock;
  j["model"] = model_json(p.config);
  add_tensors(j, views(p.file));
  json files = json::object();
  for (const char* k : {meta::kConfig, meta::kTokenizer, meta::kTokenizerConfig,
                        meta::kGenerationConfig, meta::kChatTemplate})
    files[std::string(k).substr(6)] = m.contains(k) ? json(m.at(k).size()) : json("absent");
  j["source_files_bytes"] = files;
  if (m.contains(meta::kGenerationConfig))
    add_generation(j, m.at(meta::kGenerationConfig), "generation_config.json");
  j["quant_error"] = p.quant_error;
  j["linear_storage"] = storage_json(p);
  if (verify) {
    const std::vector<std::string> bad = p.verify_checksums(thread_count(0));
    // "verified": the tensors whose checksum matches, so verified + mismatched = total.
    j["checksums"] = {{"total", p.checksums.size()},
                      {"verified", p.checksums.size() - bad.size()},
                      {"mismatched", bad}};
  } else {
    j["checksums"] = "not verified (--no-verify)";
  }
  return j;
}

json inspect_hf(const std::filesystem::path& path) {
  const Checkpoint ck = Checkpoint::open(path);
  json j = {{"path", path.string()},
            {"kind", std::filesystem::is_directory(path) ? "hf-checkpoint" : "safetensors"}};
  const std::filesystem::path config = std::filesystem::is_directory(path)
                                           ? path / "config.json"
                                           : path.parent_path() / "config.json";
  if (std::filesystem::exists(config)) add_model(j, read_text_file(config), config.string());
  if (const auto gen = config.parent_path() / "generation_config.json";
      std::filesystem::exists(gen))
    add_generation(j, read_text_file(gen), gen.string());
  j["shards"] = ck.shards().size();
  j["aliases"] = ck.aliases();
  add_tensors(j, ck.tensors());
  return j;
}

// "51 of 51 match" or "50 of 51 match, 1 mismatched: NAME" (the first few names).
std::string checksum_line(const json& c) {
  constexpr size_t kShown = 5;
  const json& bad = c["mismatched"];
  std::string line =
      fmt::format("{} of {} match", c["verified"].get<uint64_t>(), c["total"].get<uint64_t>());
  if (bad.empty()) return line;
  line += fmt::format(", {} mismatched:", bad.size());
  for (size_t i = 0; i < std::min(bad.size(), kShown); ++i)
    line += (i ? ", " : " ") + bad[i].get<std::string>();
  if (bad.size() > kShown) line += fmt::format(" and {} more", bad.size() - kShown);
  return line;
}

void print_text(const json& j) {
  std::printf("%s (%s)\n", j["path"].get<std::string>().c_str(),
              j["kind"].get<std::string>().c_str());
  if (j.contains("model")) {
    const json& m = j["model"];
    std::printf(
        "model: %s (%s), %llu layers, hidden %llu, intermediate %llu, heads %llu/%llu kv, head_dim "
        "%llu, "
        "vocab %llu, rope theta %g (%s), %s embeddings%s\n",
        m["architecture"].get<std::string>().c_str(), m["family"].get<std::string>().c_str(),
        m["layers"].get<unsigned long long>(), m["hidden"].get<unsigned long long>(),
        m["intermediate"].get<unsigned long long>(), m["heads"].get<unsigned long long>(),
        m["kv_heads"].get<unsigned long long>(), m["head_dim"].get<unsigned long long>(),
        m["vocab"].get<unsigned long long>(), m["rope_theta"].get<double>(),
        m["rope_scaling"].get<std::string>().c_str(),
        m["tied_embeddings"].get<bool>() ? "tied" : "untied",
        m["qkv_bias"].get<bool>() ? ", q/k/v biases" : "");
  }
  if (j.contains("model")) {
    const json& m = j["model"];
    std::printf("dtype %s, sliding window %s%s\n", m["dtype"].get<std::string>().c_str(),
                m["sliding_window"].get<uint64_t>()
                    ? std::to_string(m["sliding_window"].get<uint64_t>()).c_str()
                    : "none",
                m["qk_norm"].get<bool>() ? ", q/k per-head norms" : "");
    if (m["max_context"].get<uint64_t>())
      std::printf("packed for contexts up to %llu tokens (quantize --max-context)\n",
                  m["max_context"].get<unsigned long long>());
  }
  if (j.contains("generation")) {
    const json& g = j["generation"];
    std::printf("generation defaults: %s, eos ids %s\n",
                g["do_sample"].get<bool>()
                    ? fmt::format("sampling, temperature {:g}, top_k {}, top_p {:g}",
                                  g["temperature"].get<double>(), g["top_k"].get<uint64_t>(),
                                  g["top_p"].get<double>())
                          .c_str()
                    : "greedy (do_sample false)",
                g["eos_token_ids"].dump().c_str());
  } else {
    std::printf("generation defaults: greedy (no generation_config.json)\n");
  }
  if (j.contains("generation_error"))
    std::printf("generation_config.json: %s\n", j["generation_error"].get<std::string>().c_str());
  if (j.contains("model_error"))
    std::printf("model: not runnable by ferry: %s\n", j["model_error"].get<std::string>().c_str());
  if (j.contains("scheme"))
    std::printf("format version %s, scheme %s, block size %llu\n",
                j["format_version"].get<std::string>().c_str(),
                j["scheme"].get<std::string>().c_str(), j["block_size"].get<unsigned long long>());
  if (j.contains("linear_storage")) {
    const json& ls = j["linear_storage"];
    for (const auto& [k, e] : ls["by_storage"].items())
      std::printf("linear weights %s: %llu, %s, %.3f bits/weight\n", k.c_str(),
                  e["count"].get<unsigned long long>(),
                  human_bytes(e["bytes"].get<double>()).c_str(),
                  e["bits_per_weight"].get<double>());
    std::printf("lm_head: %s\n", ls["lm_head"].get<std::string>().c_str());
  }
  std::printf("\n%-56s %-6s %-18s %14s\n", "tensor", "dtype", "shape", "bytes");
  for (const json& t : j["tensors"])
    std::printf("%-56s %-6s %-18s %14llu\n", t["name"].get<std::string>().c_str(),
                t["dtype"].get<std::string>().c_str(), t["shape"].dump().c_str(),
                t["bytes"].get<unsigned long long>());
  const json& tot = j["totals"];
  std::printf("\ntotal: %llu tensors, %s", tot["tensors"].get<unsigned long long>(),
              human_bytes(tot["bytes"].get<double>()).c_str());
  for (const auto& [dt, b] : tot["bytes_by_dtype"].items())
    std::printf(", %s %s", dt.c_str(), human_bytes(b.get<double>()).c_str());
  std::printf("\n");
  if (j.contains("checksums") && j["checksums"].is_object())
    std::printf("checksums (xxh3-64): %s\n", checksum_line(j["checksums"]).c_str());
  if (j.contains("quant_error") && !j["quant_error"].empty()) {
    double worst = 0;
    std::string worst_name;
    for (const auto& [k, v] : j["quant_error"].items())
      if (v.get<double>() > worst) worst = v.get<double>(), worst_name = k;
    std::printf("quantization: worst relative RMS error %.4e (%s)\n", worst, worst_name.c_str());
  }
}

}  // namespace

int cmd_inspect(int argc, char** argv) {
  cxxopts::Options o(
      "ferry inspect",
      "Describe a .ferry file, a safetensors file or a Hugging Face checkpoint directory: "
      "architecture, tensors, totals; for .ferry files also the scheme, and checksums verified.");
  o.positional_help("PATH");
  o.add_options()("path", "file or directory", cxxopts::value<std::string>())(
      "json", "machine-readable output")("no-verify", "skip checksum verification")("h,help",
                                                                                    "this help");
  o.parse_positional({"path"});
  const auto a = parse_command(o, argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;
  if (!a.count("path")) throw Error("usage: ferry inspect PATH [--json]");
  const std::filesystem::path path = a["path"].as<std::string>();
  if (!std::filesystem::exists(path))
    throw Error(fmt::format("{}: no such file or directory", path.string()));
  const bool packed =
      !std::filesystem::is_directory(path) && PackedFile::looks_packed(SafetensorsFile::open(path));
  const json j = packed ? inspect_packed(path, a.count("no-verify") == 0) : inspect_hf(path);
  a.count("json") ? (void)std::printf("%s\n", j.dump(2).c_str()) : print_text(j);
  finish_stdout();
  if (packed && j["checksums"].is_object() && !j["checksums"]["mismatched"].empty())
    throw Error(fmt::format(
        "{}: {} tensor(s) fail their checksum (first: {}); the file is corrupt, convert it again",
        path.string(), j["checksums"]["mismatched"].size(),
        j["checksums"]["mismatched"][0].get<std::string>()));
  return 0;
}

}  // namespace ferry
