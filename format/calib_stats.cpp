#include "format/calib_stats.hpp"

#include <xxhash.h>

#include <charconv>
#include <cstring>

#include <fmt/format.h>

#include "base/atomic_file.hpp"
#include "base/error.hpp"
#include "format/packed_file.hpp"
#include "format/safetensors.hpp"

namespace ferry {
namespace {

constexpr const char* kFormatName = "ferry-calibration";
constexpr const char* kModel = "ferry.calib.model";
constexpr const char* kConfigHash = "ferry.calib.config_hash";
constexpr const char* kEmbedChecksum = "ferry.calib.embed_checksum";
constexpr const char* kTextHash = "ferry.calib.text_hash";
constexpr const char* kTokens = "ferry.calib.tokens";
constexpr const char* kCtx = "ferry.calib.ctx";

std::string meta_value(const SafetensorsFile& f, const char* key) {
  const auto it = f.metadata().find(key);
  if (it == f.metadata().end())
    throw Error(
        fmt::format("{}: not a calibration file of ferry (no {} in its metadata); make one "
                    "with `ferry calibrate`",
                    f.path().string(), key));
  return it->second;
}

// A count in the metadata (tokens, context): a decimal number, or the file is not one of ours.
uint64_t meta_count(const SafetensorsFile& f, const char* key) {
  const std::string s = meta_value(f, key);
  uint64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty())
    throw Error(
        fmt::format("{}: metadata {} is '{}', not a number; make the file again with "
                    "`ferry calibrate`",
                    f.path().string(), key, s));
  return v;
}

std::vector<float> read_f32(const SafetensorsFile& f, const std::string& name, uint64_t cols) {
  const std::vector<uint64_t> shape = {cols};
  const TensorView& t = f.require_tensor(name, DType::F32, shape);
  std::vector<float> v(cols);
  std::memcpy(v.data(), t.data, cols * 4);
  return v;
}

}  // namespace

std::string calib_input_name(uint64_t layer, CalibInput in) {
  constexpr const char* kNames[] = {"attn_in", "o_in", "mlp_in", "down_in"};
  return fmt::format("model.layers.{}.{}", layer, kNames[int(in)]);
}

uint64_t calib_input_cols(const ModelConfig& c, CalibInput in) {
  switch (in) {
    case CalibInput::o_in:
      return c.heads * c.head_dim;
    case CalibInput::down_in:
      return c.intermediate;
    default:
      return c.hidden;
  }
}

std::string xxh3_hex(std::string_view bytes) {
  return checksum_hex(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

const ChannelStats& CalibStats::at(const std::string& name, uint64_t cols) const {
  const auto it = inputs.find(name);
  if (it == inputs.end() || it->second.mean_abs.size() != cols || it->second.mean_sq.size() != cols)
    throw Error(
        fmt::format("calibration statistics: no input {} of {} channels; the file was "
                    "made for another model",
                    name, cols));
  return it->second;
}

void write_calib_stats(const std::filesystem::path& path, const CalibStats& stats) {
  std::vector<TensorDecl> decls;
  std::vector<const std::vector<float>*> data;
  uint64_t offset = 0;
  for (const auto& [name, s] : stats.inputs)
    for (const auto& [suffix, v] :
         {std::pair{".mean_abs", &s.mean_abs}, {".mean_sq", &s.mean_sq}}) {
      const uint64_t n = v->size() * 4;
      decls.push_back({name + suffix, DType::F32, {v->size()}, offset, offset + n});
      data.push_back(v);
      offset += n;
    }
  const std::map<std::string, std::string> meta = {{"format", kFormatName},
                                                   {kModel, stats.id.model},
                                                   {kConfigHash, stats.id.config_hash},
                                                   {kEmbedChecksum, stats.id.embed_checksum},
                                                   {kTextHash, stats.id.text_hash},
                                                   {kTokens, std::to_string(stats.id.tokens)},
                                                   {kCtx, std::to_string(stats.id.ctx)}};
  const std::string header = safetensors_header(decls, meta);
  AtomicFile out(path, header.size() + offset);
  out.pwrite_all(header.data(), header.size(), 0);
  for (size_t i = 0; i < decls.size(); ++i)
    out.pwrite_all(data[i]->data(), decls[i].nbytes(), header.size() + decls[i].begin);
  out.commit();
}

CalibStats read_calib_stats(const std::filesystem::path& path, const ModelConfig& c,
                            const std::string& config_json) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  if (meta_value(f, "format") != kFormatName)
    throw Error(
        fmt::format("{}: not a calibration file of ferry (format '{}'); make one with "
                    "`ferry calibrate`",
                    path.string(), meta_value(f, "format")));
  CalibStats s;
  s.id = {meta_value(f, kModel),    meta_value(f, kConfigHash), meta_value(f, kEmbedChecksum),
          meta_value(f, kTextHash), meta_count(f, kTokens),     meta_count(f, kCtx)};
  if (s.id.config_hash != xxh3_hex(config_json))
    throw Error(
        fmt::format("{}: was made for another model ({}: its config.json differs); run "
                    "`ferry calibrate` on this checkpoint's bf16 conversion",
                    path.string(), s.id.model));
  try {
    auto add = [&](const std::string& name, uint64_t cols) {
      s.inputs[name] = {read_f32(f, name + ".mean_abs", cols),
                        read_f32(f, name + ".mean_sq", cols)};
    };
    for (uint64_t l = 0; l < c.layers; ++l)
      for (CalibInput in : kCalibInputs) add(calib_input_name(l, in), calib_input_cols(c, in));
    add(kLmHeadInput, c.hidden);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}; it was made for another model", path.string(), e.what()));
  }
  return s;
}

}  // namespace ferry
