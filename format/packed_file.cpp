#include "format/packed_file.hpp"

#include <fnmatch.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstdlib>
#include <mutex>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "base/threads.hpp"

namespace ferry {
namespace {

void add_decl(PackedPlan& plan, PackedWeight& w, std::string name, DType dtype,
              std::vector<uint64_t> shape) {
  TensorDecl d{std::move(name), dtype, std::move(shape)};
  uint64_t n = dtype_size(dtype);
  for (uint64_t s : d.shape) n *= s;
  d.begin = plan.data_bytes;
  d.end = d.begin + n;
  plan.data_bytes = d.end;
  w.tensors.push_back(plan.tensors.size());
  plan.tensors.push_back(std::move(d));
}

nlohmann::json parse_meta_json(const std::map<std::string, std::string>& m, const char* key,
                               const std::string& what) {
  auto it = m.find(key);
  if (it == m.end()) throw Error(fmt::format("{}: metadata key {} is missing", what, key));
  try {
    return nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: metadata {} is not valid JSON: {}", what, key, e.what()));
  }
}

// meta::kMaxContext: absent (0), or a positive decimal number of tokens.
uint64_t parse_max_context(const std::map<std::string, std::string>& m, const std::string& what) {
  auto it = m.find(meta::kMaxContext);
  if (it == m.end()) return 0;
  const std::string& s = it->second;
  uint64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v == 0)
    throw Error(
        fmt::format("{}: metadata {} is '{}', not a positive number of tokens; convert "
                    "the checkpoint again with ferry quantize",
                    what, meta::kMaxContext, s));
  return v;
}

}  // namespace

KeepRule parse_keep_rule(std::string_view text) {
  const size_t eq = text.rfind('=');
  const std::string_view pattern = eq == text.npos ? "" : text.substr(0, eq);
  const std::string_view what = eq == text.npos ? "" : text.substr(eq + 1);
  const std::optional<WeightStorage> s = what == "int4"   ? std::optional(WeightStorage::int4)
                                         : what == "int8" ? std::optional(WeightStorage::int8)
                                         : what == "bf16" ? std::optional(WeightStorage::bf16)
                                                          : std::nullopt;
  if (pattern.empty() || !s)
    throw Error(fmt::format(
        "--keep {}: expected PATTERN=int4|int8|bf16 (PATTERN a glob or a substring of weight "
        "names, e.g. lm_head=bf16)",
        text));
  return {std::string(pattern), *s};
}

bool keep_rule_matches(const KeepRule& rule, const std::string& weight_name) {
  if (rule.pattern.find_first_of("*?[") != std::string::npos)
    return fnmatch(rule.pattern.c_str(), weight_name.c_str(), 0) == 0;
  return weight_name.find(rule.pattern) != std::string::npos;
}

// Under an INT4 scheme, a weight no --keep rule names is INT4 but for three, chosen by
// perplexity (docs/quantization.md): the lm_head, which in INT4 cost SmolLM2 more than any other
// choice (ratio to bf16 1.99 against 1.53 at 8 bits, within the bf16 lm_head's figure), the
// value projections, 3% of SmolLM2's layer weights (1% of Qwen2-32B's) whose INT4 error alone
// took its ratio from 1.28 to 1.48, and the key projections, as small, 1.28 -> 1.25 (with the
// norm-aware scales 1.266 -> 1.246): together 0.08-0.24 bits a weight, within Q4_0's 4.5.
WeightStorage default_int4_plan_storage(const WeightSpec& spec) {
  if (spec.role == WeightRole::lm_head) return WeightStorage::int8;
  const bool kv = spec.name.ends_with("self_attn.v_proj.weight") ||
                  spec.name.ends_with("self_attn.k_proj.weight");
  return kv ? WeightStorage::int8 : WeightStorage::int4;
}

StoragePlan storage_plan(const ModelConfig& config, Scheme scheme,
                         const std::vector<KeepRule>& rules) {
  StoragePlan plan;
  const bool int4 = scheme_is_int4(scheme);
  for (const WeightSpec& spec : model_weights(config)) {
    if (spec.role != WeightRole::linear && spec.role != WeightRole::lm_head) continue;
    WeightStorage s = !int4 ? WeightStorage::bf16 : default_int4_plan_storage(spec);
    for (const KeepRule& r : rules)
      if (keep_rule_matches(r, spec.name)) s = r.storage;
    if (s == WeightStorage::int4 && !int4)
      throw Error(
          fmt::format("--keep: {} cannot be stored in int4 under the bf16 scheme; pick "
                      "an INT4 scheme with --scheme",
                      spec.name));
    if (spec.role == WeightRole::lm_head) {
      plan.lm_head = s == WeightStorage::int4   ? LmHeadStorage::int4
                     : s == WeightStorage::int8 ? LmHeadStorage::int8
                     : config.tied_embeddings   ? LmHeadStorage::embedding
                                                : LmHeadStorage::bf16;
    } else if (s != (int4 ? WeightStorage::int4 : WeightStorage::bf16)) {
      plan.linears[spec.name] = s;
    }
  }
  return plan;
}

PackedPlan plan_packed(const ModelConfig& config, Scheme scheme,
                       const std::vector<KeepRule>& rules) {
  return plan_packed(config, scheme, storage_plan(config, scheme, rules));
}

namespace {

WeightStorage storage_of(const WeightSpec& spec, Scheme scheme, const StoragePlan& storage) {
  if (spec.role == WeightRole::lm_head) {
    switch (storage.lm_head) {
      case LmHeadStorage::int4:
        return WeightStorage::int4;
      case LmHeadStorage::int8:
        return WeightStorage::int8;
      default:
        return WeightStorage::bf16;
    }
  }
  if (spec.role != WeightRole::linear) return WeightStorage::bf16;
  const auto it = storage.linears.find(spec.name);
  if (it != storage.linears.end()) return it->second;
  return scheme_is_int4(scheme) ? WeightStorage::int4 : WeightStorage::bf16;
}

}  // namespace

PackedPlan plan_packed(const ModelConfig& config, Scheme scheme, const StoragePlan& storage) {
  PackedPlan plan;
  for (const WeightSpec& spec : model_weights(config)) {
    if (spec.role == WeightRole::lm_head && storage.lm_head == LmHeadStorage::embedding) continue;
    PackedWeight w{spec, storage_of(spec, scheme, storage), {}};
    const uint64_t out = spec.shape[0];
    const uint64_t blocks = spec.shape.size() == 2 ? int4_blocks_per_row(spec.shape[1]) : 0;
    if (w.storage == WeightStorage::int4) {
      add_decl(plan, w, spec.name + ".q4", DType::U8, {out, blocks * kBlockBytes});
      add_decl(plan, w, spec.name + ".scales", DType::F16, {out, blocks});
      if (scheme_has_mins(scheme))
        add_decl(plan, w, spec.name + ".mins", DType::F16, {out, blocks});
    } else if (w.storage == WeightStorage::int8) {
      add_decl(plan, w, spec.name + ".q8", DType::I8, {out, blocks * kBlock});
      add_decl(plan, w, spec.name + ".scales", DType::F16, {out, blocks});
    } else {
      add_decl(plan, w, spec.name, DType::BF16, spec.shape);
    }
    plan.weights.push_back(std::move(w));
  }
  return plan;
}

std::string safetensors_header(const std::vector<TensorDecl>& tensors,
                               const std::map<std::string, std::string>& metadata,
                               uint64_t min_size) {
  nlohmann::ordered_json h;
  h["__metadata__"] = metadata;
  for (const TensorDecl& t : tensors)
    h[t.name] = {
        {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  std::string json = h.dump();
  // Pad with spaces (legal JSON whitespace) so the data section starts 8-byte aligned, as the
  // reference writer does, and to a fixed size when the caller rewrites the header in place.
  uint64_t size = std::max<uint64_t>(json.size(), min_size);
  size = (size + 7) / 8 * 8;
  json.resize(size, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((size >> (8 * i)) & 0xff);
  return out + json;
}

std::string checksum_hex(const uint8_t* data, uint64_t n) {
  return checksum_hex(XXH3_64bits(data, n));
}

std::string checksum_hex(uint64_t digest) {
  return fmt::format("{:016x}", digest);
}

bool PackedFile::looks_packed(const SafetensorsFile& f) {
  return f.metadata().contains(meta::kVersion);
}

PackedFile PackedFile::open(const std::filesystem::path& path) {
  return from_mapping(MappedFile::open(path));
}

PackedFile PackedFile::from_mapping(std::shared_ptr<MappedFile> mapping) {
  SafetensorsFile f = SafetensorsFile::from_mapping(std::move(mapping));
  const std::string what = f.path().string();
  const auto& m = f.metadata();
  if (!looks_packed(f))
    throw Error(fmt::format(
        "{}: not a ferry file (no {} in the metadata); convert it with 'ferry quantize'", what,
        meta::kVersion));
  int version = 0;
  for (int v = kOldestFormatVersion; v <= kFormatVersion; ++v)
    if (m.at(meta::kVersion) == std::to_string(v)) version = v;
  if (version == 0)
    throw Error(fmt::format(
        "{}: format version {} is not supported by this build (it reads versions {} to {})", what,
        m.at(meta::kVersion), kOldestFormatVersion, kFormatVersion));
  auto scheme_it = m.find(meta::kScheme);
  const auto scheme = scheme_it == m.end() ? std::nullopt : parse_scheme(scheme_it->second);
  if (!scheme)
    throw Error(fmt::format("{}: metadata {} is missing or unknown", what, meta::kScheme));
  if (m.contains(meta::kBlockSize) && m.at(meta::kBlockSize) != std::to_string(kBlock))
    throw Error(fmt::format("{}: block size {} is not supported (only {})", what,
                            m.at(meta::kBlockSize), kBlock));
  ModelConfig config = parse_model_config(parse_meta_json(m, meta::kConfig, what), what);
  config.context_limit = parse_max_context(m, what);
  // Each linear weight as stored: ".q8" INT8 (version 2 on), ".q4" INT4, else BF16. lm_head may
  // also be absent when tied (the embedding serves; tied ones written before ferry stored those
  // once have a BF16 copy).
  StoragePlan storage;
  const bool int4 = scheme_is_int4(*scheme);
  for (const WeightSpec& spec : model_weights(config)) {
    if (spec.role != WeightRole::linear && spec.role != WeightRole::lm_head) continue;
    const WeightStorage s = f.find(spec.name + ".q8")   ? WeightStorage::int8
                            : f.find(spec.name + ".q4") ? WeightStorage::int4
                                                        : WeightStorage::bf16;
    if (s == WeightStorage::int8 && version < 2)
      throw Error(fmt::format("{}: tensor {}.q8 in a version {} file (INT8 came with version 2)",
                              what, spec.name, version));
    if (spec.role == WeightRole::lm_head)
      storage.lm_head = s == WeightStorage::int8                       ? LmHeadStorage::int8
                        : s == WeightStorage::int4                     ? LmHeadStorage::int4
                        : f.find(spec.name) || !config.tied_embeddings ? LmHeadStorage::bf16
                                                                       : LmHeadStorage::embedding;
    else if (s != (int4 ? WeightStorage::int4 : WeightStorage::bf16))
      storage.linears[spec.name] = s;
  }
  const PackedPlan plan = plan_packed(config, *scheme, storage);
  for (const TensorDecl& d : plan.tensors) f.require_tensor(d.name, d.dtype, d.shape);
  std::map<std::string, std::string> checksums;
  const nlohmann::json sums = parse_meta_json(m, meta::kChecksums, what);
  for (const auto& [k, v] : sums.items())
    checksums[k] = v.is_string() ? v.get<std::string>()
                                 : throw Error(fmt::format("{}: bad checksum entry {}", what, k));
  std::map<std::string, double> quant_error;
  if (m.contains(meta::kQuantError)) {
    const nlohmann::json errs = parse_meta_json(m, meta::kQuantError, what);
    for (const auto& [k, v] : errs.items())
      quant_error[k] = v.is_string() ? std::strtod(v.get<std::string>().c_str(), nullptr) : -1.0;
  }
  // `m` points into `f`: everything read from it is copied out before `f` moves.
  PackedFile p{std::move(f),         std::move(config),     *scheme, version, std::move(storage),
               std::move(checksums), std::move(quant_error)};
  for (const TensorView& t : p.file.tensors())
    if (!p.checksums.contains(t.name))
      throw Error(fmt::format("{}: tensor {} has no checksum", what, t.name));
  return p;
}

std::vector<std::string> PackedFile::verify_checksums(unsigned threads) const {
  const auto& ts = file.tensors();
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::vector<std::string> bad;
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < ts.size();) {
      if (checksum_hex(ts[i].data, ts[i].nbytes) == checksums.at(ts[i].name)) continue;
      std::lock_guard lock(mu);
      bad.push_back(ts[i].name);
    }
  };
  run_threads(std::max(1u, threads), work, [] {});
  std::sort(bad.begin(), bad.end());
  return bad;
}

}  // namespace ferry
