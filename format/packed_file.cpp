#include "format/packed_file.hpp"

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

LmHeadStorage lm_head_storage(const ModelConfig& config, Scheme scheme, bool keep_lm_head) {
  if (scheme_is_int4(scheme) && !keep_lm_head) return LmHeadStorage::int4;
  return config.tied_embeddings ? LmHeadStorage::embedding : LmHeadStorage::bf16;
}

PackedPlan plan_packed(const ModelConfig& config, Scheme scheme, bool keep_lm_head) {
  return plan_packed(config, scheme, lm_head_storage(config, scheme, keep_lm_head));
}

PackedPlan plan_packed(const ModelConfig& config, Scheme scheme, LmHeadStorage lm_head) {
  PackedPlan plan;
  for (const WeightSpec& spec : model_weights(config)) {
    if (spec.role == WeightRole::lm_head && lm_head == LmHeadStorage::embedding) continue;
    PackedWeight w{spec, false, {}};
    const bool linear = spec.role == WeightRole::linear ||
                        (spec.role == WeightRole::lm_head && lm_head == LmHeadStorage::int4);
    w.quantized = linear && scheme_is_int4(scheme);
    if (w.quantized) {
      const uint64_t out = spec.shape[0], blocks = int4_blocks_per_row(spec.shape[1]);
      add_decl(plan, w, spec.name + ".q4", DType::U8, {out, blocks * kBlockBytes});
      add_decl(plan, w, spec.name + ".scales", DType::F16, {out, blocks});
      if (scheme_has_mins(scheme))
        add_decl(plan, w, spec.name + ".mins", DType::F16, {out, blocks});
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
  if (m.at(meta::kVersion) != std::to_string(kFormatVersion))
    throw Error(
        fmt::format("{}: format version {} is not supported by this build (it reads version {})",
                    what, m.at(meta::kVersion), kFormatVersion));
  auto scheme_it = m.find(meta::kScheme);
  const auto scheme = scheme_it == m.end() ? std::nullopt : parse_scheme(scheme_it->second);
  if (!scheme)
    throw Error(fmt::format("{}: metadata {} is missing or unknown", what, meta::kScheme));
  if (m.contains(meta::kBlockSize) && m.at(meta::kBlockSize) != std::to_string(kBlock))
    throw Error(fmt::format("{}: block size {} is not supported (only {})", what,
                            m.at(meta::kBlockSize), kBlock));
  ModelConfig config = parse_model_config(parse_meta_json(m, meta::kConfig, what), what);
  config.context_limit = parse_max_context(m, what);
  // lm_head as stored: a BF16 tensor (the bf16 scheme, --keep-lm-head, and tied ones written
  // before ferry stored those once), none (tied: the embedding), or quantized.
  const LmHeadStorage lm_head = f.find("lm_head.weight") ? LmHeadStorage::bf16
                                : config.tied_embeddings && !f.find("lm_head.weight.q4")
                                    ? LmHeadStorage::embedding
                                    : LmHeadStorage::int4;
  const PackedPlan plan = plan_packed(config, *scheme, lm_head);
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
  PackedFile p{std::move(f), std::move(config), *scheme, std::move(checksums),
               std::move(quant_error)};
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
