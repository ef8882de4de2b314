#include "quantizer/synth_packed.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "format/model_config.hpp"
#include "format/packed_file.hpp"

namespace ferry {
namespace {

using json = nlohmann::json;

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A value in [-1, 1) from 16 random bits.
float unit(uint64_t r) {
  return float(int32_t(r & 0xffff) - 32768) / 32768.0f;
}

// What each tensor holds, by its role in the packed layout.
enum class Fill { codes, codes8, scales, scales8, mins, norm, small_bf16 };

// `int8`: the weight the tensor belongs to is INT8 (its scales follow another grid).
Fill fill_of(const TensorDecl& d, bool int8) {
  const auto ends = [&](std::string_view s) { return d.name.ends_with(s); };
  if (ends(".q4")) return Fill::codes;
  if (ends(".q8")) return Fill::codes8;
  if (ends(".scales") && int8) return Fill::scales8;
  if (ends(".scales")) return Fill::scales;
  if (ends(".mins")) return Fill::mins;
  if (ends("norm.weight")) return Fill::norm;
  return Fill::small_bf16;  // embedding, biases, bf16 weights
}

// Scale of a block of 128 weights of std 0.02: range / 15 (asym) or absmax / 7 (sym), about 6 and
// 3 standard deviations; jittered by +-25% so that blocks differ.
// INT8 (format/int8.hpp): absmax / 127, 3 standard deviations, same jitter.
void fill_tensor(const TensorDecl& d, bool int8, Scheme scheme, uint64_t seed, uint8_t* out) {
  uint64_t s = seed ^ (std::hash<std::string>{}(d.name) * 0x9e3779b97f4a7c15ull);
  const bool asym = scheme_has_mins(scheme);
  const float scale = asym ? 0.12f / 15 : 0.06f / 7;
  auto* u16 = reinterpret_cast<uint16_t*>(out);
  switch (fill_of(d, int8)) {
    case Fill::codes:
      for (uint64_t i = 0; i < d.nbytes(); i += 8) {
        const uint64_t r = splitmix64(s);
        std::memcpy(out + i, &r, std::min<uint64_t>(8, d.nbytes() - i));
      }
      return;
    case Fill::codes8:  // random bytes, -128 (never written by the quantizer) folded to -127
      for (uint64_t i = 0; i < d.nbytes(); ++i)
        out[i] = uint8_t(std::max<int>(-127, int8_t(splitmix64(s) & 0xff)));
      return;
    case Fill::scales8:
      for (uint64_t i = 0; i < d.nbytes() / 2; ++i)
        u16[i] = float_to_f16(0.06f / 127 * (1 + 0.25f * unit(splitmix64(s))));
      return;
    case Fill::scales:
      for (uint64_t i = 0; i < d.nbytes() / 2; ++i)
        u16[i] = float_to_f16(scale * (1 + 0.25f * unit(splitmix64(s))));
      return;
    case Fill::mins:  // centred codes: min = -7.5 scales
      for (uint64_t i = 0; i < d.nbytes() / 2; ++i)
        u16[i] = float_to_f16(-7.5f * scale * (1 + 0.25f * unit(splitmix64(s))));
      return;
    case Fill::norm:
      std::fill_n(u16, d.nbytes() / 2, float_to_bf16(1.0f));
      return;
    case Fill::small_bf16:
      for (uint64_t i = 0; i < d.nbytes() / 2; ++i)
        u16[i] = float_to_bf16(0.035f * unit(splitmix64(s)));  // uniform, std 0.02
      return;
  }
}

struct Image {
  PackedPlan plan;
  std::string header;  // length prefix + JSON, checksums left as placeholders
};

std::map<std::string, std::string> base_metadata(const SynthOptions& o, Scheme scheme) {
  json config = synth_config(o.preset, o.layers);
  const SynthTokenizer tok = synth_tokenizer(config);
  config["bos_token_id"] = tok.bos_token_id;
  config["eos_token_id"] = tok.eos_token_id;
  return {{meta::kFormat, "ferry"},
          {meta::kVersion, std::to_string(kFormatVersion)},
          {meta::kScheme, std::string(scheme_name(scheme))},
          {meta::kBlockSize, std::to_string(kBlock)},
          {meta::kConfig, config.dump()},
          {meta::kTokenizer, tok.tokenizer_json},
          {meta::kTokenizerConfig, tok.tokenizer_config_json}};
}

// The header with a checksum of 16 hex digits per tensor: every placeholder has the length of
// the real value, so the header size does not change when they are filled in.
Image plan_image(const SynthOptions& o, Scheme scheme, const std::map<std::string, std::string>& m,
                 const json& sums) {
  Image img;
  const ModelConfig mc = parse_model_config(json::parse(m.at(meta::kConfig)), o.preset);
  img.plan = plan_packed(mc, scheme, std::vector<KeepRule>{});
  auto meta = m;
  meta[meta::kChecksums] = sums.dump();
  img.header = safetensors_header(img.plan.tensors, meta);
  return img;
}

json placeholder_sums(const PackedPlan& plan) {
  json sums = json::object();
  for (const TensorDecl& d : plan.tensors) sums[d.name] = std::string(16, '0');
  return sums;
}

}  // namespace

uint64_t synth_packed_bytes(const SynthOptions& o, Scheme scheme) {
  const auto m = base_metadata(o, scheme);
  const ModelConfig mc = parse_model_config(json::parse(m.at(meta::kConfig)), o.preset);
  const PackedPlan plan = plan_packed(mc, scheme, std::vector<KeepRule>{});
  return plan_image(o, scheme, m, placeholder_sums(plan)).header.size() + plan.data_bytes;
}

std::shared_ptr<MappedFile> synth_packed_image(const SynthOptions& o, Scheme scheme,
                                               const ProgressFn& progress) {
  if (!scheme_is_int4(scheme))
    throw Error("a synthesized packed model is INT4: choose an INT4 scheme, not bf16");
  const auto m = base_metadata(o, scheme);
  const ModelConfig mc = parse_model_config(json::parse(m.at(meta::kConfig)), o.preset);
  const Image probe =
      plan_image(o, scheme, m, placeholder_sums(plan_packed(mc, scheme, std::vector<KeepRule>{})));
  const std::vector<TensorDecl>& ts = probe.plan.tensors;
  const uint64_t data_start = probe.header.size(), total = data_start + probe.plan.data_bytes;
  std::set<std::string> q8;  // the INT8 code tensors
  for (const TensorDecl& d : ts)
    if (d.name.ends_with(".q8")) q8.insert(d.name);
  return MappedFile::anonymous(total, "synthetic:" + o.preset, [&](uint8_t* base) {
    std::vector<std::string> sums(ts.size());
    std::atomic<size_t> next = 0;
    std::atomic<uint64_t> done = 0;
    run_threads(
        thread_count(o.threads),
        [&] {
          for (size_t i; (i = next.fetch_add(1)) < ts.size();) {
            uint8_t* p = base + data_start + ts[i].begin;
            const std::string& n = ts[i].name;
            const bool int8 =
                n.ends_with(".q8") ||
                (n.ends_with(".scales") && q8.contains(n.substr(0, n.size() - 7) + ".q8"));
            fill_tensor(ts[i], int8, scheme, o.seed, p);
            sums[i] = checksum_hex(p, ts[i].nbytes());
            done += ts[i].nbytes();
          }
        },
        [&] { progress("synthesize", done.load(), probe.plan.data_bytes); });
    json real = json::object();
    for (size_t i = 0; i < ts.size(); ++i) real[ts[i].name] = sums[i];
    const std::string header = plan_image(o, scheme, m, real).header;
    if (header.size() != data_start) throw Error("synthesized header changed size (a bug)");
    std::memcpy(base, header.data(), header.size());
  });
}

}  // namespace ferry
