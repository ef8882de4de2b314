#include "quantizer/convert.hpp"

#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/atomic_file.hpp"
#include "base/error.hpp"
#include "base/threads.hpp"
#include "format/packed_file.hpp"
#include "quantizer/checkpoint.hpp"
#include "quantizer/int8_quantize.hpp"

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;

// One unit of work: rows [row0, row0 + rows) of one weight.
struct Unit {
  size_t weight;
  uint64_t row0, rows;
};

// A weight viewed as a matrix: 1-D weights (norms, biases) are one row.
struct Matrix {
  uint64_t rows, cols;
};

Matrix matrix_of(const WeightSpec& s) {
  return s.shape.size() == 2 ? Matrix{s.shape[0], s.shape[1]} : Matrix{1, s.shape[0]};
}

std::vector<Unit> make_units(const PackedPlan& plan, const std::vector<const TensorView*>& sources,
                             uint64_t chunk_bytes) {
  std::vector<Unit> units;
  for (size_t i = 0; i < plan.weights.size(); ++i) {
    const Matrix m = matrix_of(plan.weights[i].spec);
    const uint64_t row_bytes = std::max<uint64_t>(1, m.cols * dtype_size(sources[i]->dtype));
    const uint64_t step = std::max<uint64_t>(1, chunk_bytes / row_bytes);
    for (uint64_t r = 0; r < m.rows; r += step) units.push_back({i, r, std::min(step, m.rows - r)});
  }
  return units;
}

// Everything the workers share; read-only except the atomics and the error slot.
struct Job {
  Job(const Checkpoint& c, const PackedPlan& p, std::vector<const TensorView*> s, Scheme sc,
      uint64_t ds, const AtomicFile& o, uint64_t chunk_bytes, const FoldPlan& f)
      : ckpt(c),
        plan(p),
        sources(std::move(s)),
        units(make_units(p, sources, chunk_bytes)),
        scheme(sc),
        data_start(ds),
        out(o),
        fold(f),
        unit_errors(units.size()) {}

  const Checkpoint& ckpt;
  const PackedPlan& plan;
  std::vector<const TensorView*> sources;  // per plan.weights entry
  std::vector<Unit> units;
  Scheme scheme;
  uint64_t data_start;
  const AtomicFile& out;
  const FoldPlan& fold;  // --calib's scales and column importances; empty without

  std::vector<QuantError> unit_errors;  // per unit, reduced at the end (deterministic)
  std::atomic<size_t> next_unit{0};
  std::atomic<uint64_t> bytes_done{0};
  std::atomic<bool> failed{false};
  std::mutex error_mu;
  std::exception_ptr error;

  void fail(std::exception_ptr e) {
    std::lock_guard lock(error_mu);
    if (!error) error = e;
    failed = true;
  }
};

// Per-worker buffers, grown to the largest unit and reused: no allocation per unit after warm-up.
struct Buffers {
  std::vector<float> f32;      // [rows * cols]
  std::vector<uint8_t> q4;     // [rows * blocks * 64]
  std::vector<int8_t> q8;      // [rows * blocks * 128]
  std::vector<uint16_t> s16;   // [rows * blocks] scales, or [rows * cols] bf16 values
  std::vector<uint16_t> mins;  // [rows * blocks]
};

void to_float(const uint8_t* src, DType t, uint64_t n, float* out) {
  switch (t) {
    case DType::F32:
      std::memcpy(out, src, n * 4);
      return;
    case DType::BF16:
      for (uint64_t i = 0; i < n; ++i) out[i] = load_float(src, DType::BF16, i);
      return;
    default:
      for (uint64_t i = 0; i < n; ++i) out[i] = load_float(src, DType::F16, i);
  }
}

void write_tensor_rows(Job& job, const TensorDecl& d, uint64_t row0, uint64_t rows,
                       const void* data) {
  const uint64_t row_bytes =
      d.nbytes() / std::max<uint64_t>(1, d.shape.size() == 2 ? d.shape[0] : 1);
  job.out.pwrite_all(data, rows * row_bytes, job.data_start + d.begin + row0 * row_bytes);
}

QuantError run_unit(Job& job, const Unit& u, Buffers& b) {
  const PackedWeight& w = job.plan.weights[u.weight];
  const TensorView& src = *job.sources[u.weight];
  const Matrix m = matrix_of(w.spec);
  const uint64_t n = u.rows * m.cols, esize = dtype_size(src.dtype);
  b.f32.resize(std::max<size_t>(b.f32.size(), n));
  to_float(src.data + u.row0 * m.cols * esize, src.dtype, n, b.f32.data());
  const TensorFold* fold = job.fold.find(w.spec.name);
  if (fold) apply_fold(*fold, u.row0, u.rows, m.cols, b.f32.data());
  QuantError err;
  if (w.storage == WeightStorage::int8) {
    const uint64_t blocks = int8_blocks_per_row(m.cols);
    b.q8.resize(std::max<size_t>(b.q8.size(), u.rows * blocks * kBlock));
    b.s16.resize(std::max<size_t>(b.s16.size(), u.rows * blocks));
    err = quantize_int8(b.f32.data(), u.rows, m.cols, b.q8.data(), b.s16.data());
    write_tensor_rows(job, job.plan.tensors[w.tensors[0]], u.row0, u.rows, b.q8.data());
    write_tensor_rows(job, job.plan.tensors[w.tensors[1]], u.row0, u.rows, b.s16.data());
  } else if (w.storage == WeightStorage::int4) {
    const uint64_t blocks = int4_blocks_per_row(m.cols);
    b.q4.resize(std::max<size_t>(b.q4.size(), u.rows * blocks * kBlockBytes));
    b.s16.resize(std::max<size_t>(b.s16.size(), u.rows * blocks));
    b.mins.resize(std::max<size_t>(b.mins.size(), u.rows * blocks));
    const bool mins = scheme_has_mins(job.scheme);
    err = quantize_int4(b.f32.data(), u.rows, m.cols, job.scheme, b.q4.data(), b.s16.data(),
                        mins ? b.mins.data() : nullptr,
                        fold && !fold->importance.empty() ? fold->importance.data() : nullptr);
    write_tensor_rows(job, job.plan.tensors[w.tensors[0]], u.row0, u.rows, b.q4.data());
    write_tensor_rows(job, job.plan.tensors[w.tensors[1]], u.row0, u.rows, b.s16.data());
    if (mins) write_tensor_rows(job, job.plan.tensors[w.tensors[2]], u.row0, u.rows, b.mins.data());
  } else {
    b.s16.resize(std::max<size_t>(b.s16.size(), n));
    for (uint64_t i = 0; i < n; ++i) b.s16[i] = float_to_bf16(b.f32[i]);
    write_tensor_rows(job, job.plan.tensors[w.tensors[0]], u.row0, u.rows, b.s16.data());
  }
  job.ckpt.release(src, u.row0 * m.cols * esize, n * esize);
  job.bytes_done += n * esize;
  return err;
}

void worker(Job& job) {
  Buffers b;
  for (size_t i; !job.failed && (i = job.next_unit.fetch_add(1)) < job.units.size();) {
    const Unit& u = job.units[i];
    try {
      job.unit_errors[i] = run_unit(job, u, b);
    } catch (const Error& e) {
      job.fail(std::make_exception_ptr(
          Error(fmt::format("tensor {}: {}", job.plan.weights[u.weight].spec.name, e.what()))));
    } catch (...) {
      job.fail(std::current_exception());
    }
  }
}

std::vector<const TensorView*> resolve_sources(const Checkpoint& ckpt, const ModelConfig& config,
                                               const PackedPlan& plan,
                                               const std::filesystem::path& dir) {
  std::vector<const TensorView*> sources;
  std::set<std::string> used;
  for (const PackedWeight& w : plan.weights) {
    std::string name = w.spec.name;
    // A tied lm_head reads the embedding when the checkpoint stores only one of the two.
    if (w.spec.role == WeightRole::lm_head && config.tied_embeddings && !ckpt.find(name))
      name = "model.embed_tokens.weight";
    sources.push_back(&ckpt.require_float_tensor(name, w.spec.shape));
    used.insert(sources.back()->name);
  }
  // A tied lm_head the plan does not store (the embedding serves as lm_head) may still be in the
  // checkpoint: transformers ties the two at load, so its bytes are the embedding's.
  const bool lm_head_shared =
      config.tied_embeddings &&
      std::none_of(plan.weights.begin(), plan.weights.end(),
                   [](const PackedWeight& w) { return w.spec.role == WeightRole::lm_head; });
  for (const TensorView* t : ckpt.tensors())
    if (!used.contains(t->name) && !is_ignorable_tensor(t->name) &&
        !(lm_head_shared && t->name == "lm_head.weight"))
      throw Error(fmt::format("{}: tensor {} is not part of a {} model as config.json describes it",
                              dir.string(), t->name, config.architecture));
  return sources;
}

// A JSON file that ferry embeds and the runtime parses later: checked to be a JSON object now, so
// that a broken file fails the conversion instead of a later `ferry run`.
std::string read_json_object_file(const std::filesystem::path& p) {
  std::string text = read_text_file(p);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}; restore it from the original checkpoint",
                            p.string(), e.what()));
  }
  if (!j.is_object())
    throw Error(
        fmt::format("{}: not a JSON object (it holds a {}); restore it from the original "
                    "checkpoint",
                    p.string(), j.type_name()));
  return text;
}

// ferry attends over the whole context. A sliding window shorter than the trained context would
// make every position past the window wrong, silently, so such a model is packed only with a
// context limit within its window (Mistral 7B v0.1: window 4096 of 32768 positions).
void check_context_limit(const ModelConfig& c, uint64_t max_context, const std::string& what) {
  if (max_context > c.max_position)
    throw Error(
        fmt::format("--max-context {} is past the {} positions (max_position_embeddings) "
                    "the model was trained on; give {} or less",
                    max_context, c.max_position, c.max_position));
  if (!c.sliding_window || c.sliding_window >= c.max_position) return;
  if (!max_context)
    throw Error(fmt::format(
        "{}: sliding_window is {} tokens, shorter than max_position_embeddings {}: ferry does not "
        "implement sliding-window attention, so positions past {} would be computed wrongly; "
        "pass --max-context {} (or less) to pack the model for contexts within its window",
        what, c.sliding_window, c.max_position, c.sliding_window, c.sliding_window));
  if (max_context > c.sliding_window)
    throw Error(fmt::format(
        "--max-context {} is past {}'s sliding_window of {} tokens: ferry does not implement "
        "sliding-window attention; give {} or less",
        max_context, what, c.sliding_window, c.sliding_window));
}

// tokenizer_config.json, generation_config.json and chat_template.jinja are optional: absent is
// fine, malformed is not (tools/cmd_quantize parses the chat template before converting).
std::map<std::string, std::string> source_metadata(const std::filesystem::path& dir,
                                                   Scheme scheme) {
  std::map<std::string, std::string> m = {
      {meta::kFormat, "ferry"},
      {meta::kVersion, std::to_string(kFormatVersion)},
      {meta::kScheme, std::string(scheme_name(scheme))},
      {meta::kBlockSize, std::to_string(kBlock)},
      {meta::kConfig, read_json_object_file(dir / "config.json")},
      {meta::kTokenizer, read_json_object_file(dir / "tokenizer.json")},
  };
  for (auto [key, file] : {std::pair{meta::kTokenizerConfig, "tokenizer_config.json"},
                           std::pair{meta::kGenerationConfig, "generation_config.json"}})
    if (std::filesystem::exists(dir / file)) m[key] = read_json_object_file(dir / file);
  if (std::filesystem::exists(dir / "chat_template.jinja"))
    m[meta::kChatTemplate] = read_text_file(dir / "chat_template.jinja");
  // Sampling defaults `ferry run` would use: a bad value is refused now, not at run time.
  if (m.contains(meta::kGenerationConfig))
    parse_generation_config(nlohmann::json::parse(m[meta::kGenerationConfig]),
                            (dir / "generation_config.json").string());
  return m;
}

// The output must be none of the files the conversion reads: renaming the new file over a shard
// (or the config) would destroy the checkpoint, and it is still being read when that happens.
void refuse_output_over_input(const std::filesystem::path& out, const std::filesystem::path& dir,
                              const Checkpoint& ckpt) {
  std::vector<std::filesystem::path> inputs;
  for (const char* f :
       {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
        "chat_template.jinja", "model.safetensors.index.json"})
    inputs.push_back(dir / f);
  for (const SafetensorsFile& shard : ckpt.shards()) inputs.push_back(shard.path());
  std::error_code ec;  // a path that does not exist is simply not equivalent
  for (const std::filesystem::path& in : inputs)
    if (std::filesystem::equivalent(out, in, ec))
      throw Error(fmt::format(
          "{}: is the input file {}; writing there would destroy the checkpoint: choose another -o",
          out.string(), out == in ? "itself" : in.string()));
}

// Source bytes, each stored tensor once: a tied lm_head reads the embedding's bytes a second time.
uint64_t distinct_source_bytes(const std::vector<const TensorView*>& sources) {
  uint64_t sum = 0;
  for (const TensorView* t : std::set<const TensorView*>(sources.begin(), sources.end()))
    sum += t->nbytes;
  return sum;
}

// The metadata entries that are known only after the data is written. Every value has a fixed
// width (16 hex digits, "%.6e"), so the placeholder header and the final one have the same size.
void set_results(std::map<std::string, std::string>& m, const PackedPlan& plan,
                 const std::vector<std::string>& checksums,
                 const std::vector<WeightReport>& reports) {
  nlohmann::ordered_json sums, errs;
  for (size_t i = 0; i < plan.tensors.size(); ++i) sums[plan.tensors[i].name] = checksums[i];
  for (const WeightReport& r : reports)
    if (r.quantized) errs[r.name] = fmt::format("{:.6e}", r.error.relative_rms());
  m[meta::kChecksums] = sums.dump();
  m[meta::kQuantError] = errs.dump();
}

std::vector<std::string> checksum_output(const AtomicFile& out, const PackedPlan& plan,
                                         uint64_t data_start, unsigned threads,
                                         const ProgressFn& progress) {
  std::vector<std::string> sums(plan.tensors.size());
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> done{0};
  auto work = [&] {
    std::vector<uint8_t> buf(4 << 20);
    for (size_t i; (i = next.fetch_add(1)) < plan.tensors.size();) {
      const TensorDecl& d = plan.tensors[i];
      const std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(),
                                                                           XXH3_freeState);
      XXH3_64bits_reset(state.get());
      for (uint64_t off = 0; off < d.nbytes(); off += buf.size()) {
        const uint64_t n = std::min<uint64_t>(buf.size(), d.nbytes() - off);
        out.pread_all(buf.data(), n, data_start + d.begin + off);
        XXH3_64bits_update(state.get(), buf.data(), n);
        done += n;
      }
      sums[i] = checksum_hex(XXH3_64bits_digest(state.get()));
    }
  };
  run_threads(threads, work, [&] { progress("checksum", done, plan.data_bytes); });
  return sums;
}

// One report per weight, errors zero: the placeholder header and the reduction start here.
std::vector<WeightReport> empty_reports(const PackedPlan& plan) {
  std::vector<WeightReport> reports;
  for (const PackedWeight& w : plan.weights)
    reports.push_back({w.spec.name, w.spec.shape, w.quantized(), w.storage, {}});
  return reports;
}

std::vector<WeightReport> reduce_errors(const Job& job) {
  std::vector<WeightReport> reports = empty_reports(job.plan);
  for (size_t i = 0; i < job.units.size(); ++i)
    reports[job.units[i].weight].error.add(job.unit_errors[i]);
  return reports;
}

}  // namespace

std::string read_text_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw Error(fmt::format("{}: cannot read (missing or unreadable)", p.string()));
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

ConvertReport convert_checkpoint(const std::filesystem::path& dir,
                                 const std::filesystem::path& out_path, const ConvertOptions& opt,
                                 const ProgressFn& progress) {
  const auto t0 = Clock::now();
  if (!std::filesystem::is_directory(dir))
    throw Error(fmt::format("{}: not a directory (expected a Hugging Face checkpoint folder)",
                            dir.string()));
  check_output_path(out_path);
  check_thread_request(opt.threads);
  ConvertReport report;
  std::map<std::string, std::string> metadata = source_metadata(dir, opt.scheme);
  report.config = parse_model_config(nlohmann::json::parse(metadata[meta::kConfig]),
                                     (dir / "config.json").string());
  if (opt.max_context) metadata[meta::kMaxContext] = std::to_string(opt.max_context);
  check_context_limit(report.config, opt.max_context, (dir / "config.json").string());
  const Checkpoint ckpt = Checkpoint::open(dir);
  refuse_output_over_input(out_path, dir, ckpt);
  const PackedPlan plan = plan_packed(report.config, opt.scheme, opt.keep);
  const std::vector<const TensorView*> sources = resolve_sources(ckpt, report.config, plan, dir);
  const unsigned threads = thread_count(opt.threads);

  // Before the output exists: statistics made for another model are refused without a write.
  const FoldPlan fold = opt.calib.stats.empty() && !opt.calib.norms
                            ? FoldPlan{}
                            : plan_activation_scaling(ckpt, report.config, metadata[meta::kConfig],
                                                      opt.calib, opt.scheme, threads);
  report.calib = fold.groups;

  std::vector<std::string> placeholder_sums(plan.tensors.size(), std::string(16, '0'));
  set_results(metadata, plan, placeholder_sums, empty_reports(plan));
  const uint64_t header_size = safetensors_header(plan.tensors, metadata).size();
  AtomicFile out(out_path, header_size + plan.data_bytes);

  Job job(ckpt, plan, sources, opt.scheme, header_size, out, opt.chunk_bytes, fold);
  uint64_t work_bytes = 0;  // a tied lm_head's source counts twice here: it is converted twice
  for (const TensorView* s : sources) work_bytes += s->nbytes;
  report.input_bytes = distinct_source_bytes(sources);
  run_threads(
      threads, [&] { worker(job); }, [&] { progress("quantize", job.bytes_done, work_bytes); });
  if (job.error) std::rethrow_exception(job.error);

  report.weights = reduce_errors(job);
  for (const WeightReport& r : report.weights) report.total.add(r.error);
  set_results(metadata, plan, checksum_output(out, plan, header_size, threads, progress),
              report.weights);
  const std::string header = safetensors_header(plan.tensors, metadata, header_size - 8);
  if (header.size() != header_size) throw Error("internal error: the final header changed size");
  out.pwrite_all(header.data(), header.size(), 0);
  out.commit();
  report.output_bytes = header_size + plan.data_bytes;
  report.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return report;
}

}  // namespace ferry
