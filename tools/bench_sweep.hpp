// The measuring half of ferry bench: the bandwidths of the performance model, the configurations
// a sweep runs, and one run of each (prefill, then greedy decode) set beside the model's bound.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "format/packed_file.hpp"
#include "runtime/engine.hpp"

namespace ferry {

struct BenchConfig {
  std::string budget;  // as given: "all", "50%", "6G", or "none" (no cache)
  std::string policy, format;
  uint64_t parallel = 1;  // sequences decoded at once, each step one token of each
};

// The bandwidths of the performance model, measured on this machine in this run (GB/s, 1e9).
struct Bandwidths {
  std::string device = "cpu";
  double read_gbps = 0;    // weights read by the kernels: host memory read / device (HBM) copy
  double upload_gbps = 0;  // cache fills: host memcpy / pinned host-to-device at 64 MB chunks
  double memcpy_gbps = 0;  // host memcpy (CPU) or device-to-device copy (GPU)
  struct Chunk {
    uint64_t bytes = 0;
    double pinned_gbps = 0, pageable_gbps = 0;
  };
  std::vector<Chunk> h2d;  // GPU only: host-to-device by chunk size
};

struct BenchRow {
  BenchConfig config;
  double budget_gb = 0;  // the cache arena (the whole linear weights without a cache)
  double prefill_tps = 0;
  double decode_tps = 0;           // every sequence's tokens together
  double seq_decode_tps = 0;       // one sequence's: decode_tps / parallel
  double gb_per_step = 0;          // weights read per decode step (once for the whole batch)
  double gb_per_token = 0;         // ... per decoded token: gb_per_step / parallel
  double upload_gb_per_step = 0;   // of them, copied into the cache per decode step
  double upload_gb_per_token = 0;  // ... per decoded token
  double hit_rate = 0, wait_fraction = 0;
  double bound_tps = 0;       // the performance model's ceiling for decode
  double ratio = 0;           // decode time per token / bound time per token (>= 1)
  double graph_fraction = 0;  // of the decode steps, those launched as one CUDA graph
};

// The bandwidths, printed to stderr as they are measured. Throws for a GPU without CUDA.
Bandwidths measure_bandwidths(bool gpu, unsigned threads);

// Every budget x policy x format x parallel. Without a cache (budget none, CPU only) policy and
// format do not apply: one run per parallel, shown as "-". On a GPU the weights always page, so
// none means auto.
std::vector<BenchConfig> sweep_configs(const std::vector<std::string>& budgets,
                                       const std::vector<std::string>& policies,
                                       const std::vector<std::string>& formats,
                                       const std::vector<uint64_t>& parallels, bool gpu);

// What every run of a sweep shares.
struct SweepSetup {
  EngineOptions base;  // ctx, kv, batch, threads
  uint64_t prompt = 0, gen = 0;
  uint64_t repeat = 1;  // timed passes of the prefill, then of the decode
  uint32_t lookahead = 2;
  bool verify = true;
  // The device for a run's cache options; empty on the CPU.
  std::function<DeviceFactory(const CacheOptions&)> device;
};

// The engine options of one configuration.
EngineOptions config_options(const BenchConfig& c, const SweepSetup& s);

// Refuses, before the first run, a sweep one of whose runs would take more host memory than is
// available now (the model already loaded or synthesized): the message names the run and what it
// needs (runtime/engine.hpp host_bytes_needed).
void check_sweep_memory(const PackedFile& file, const std::vector<BenchConfig>& configs,
                        const SweepSetup& s);

// One configuration: a fresh engine over the same file bytes, a prompt of random ids in each of
// its `parallel` slots, then greedy decode of all of them together, one token each per step. Throws
// ferry::Error when the configuration cannot run (e.g. a budget below the model's minimum).
BenchRow run_config(const PackedFile& file, const BenchConfig& c, const SweepSetup& s,
                    const Bandwidths& bw);

// Runs every configuration in order, reporting progress and skipped ones (with the reason) on
// stderr and handing each measured row to on_row at once: a sweep killed later keeps what it
// printed. Returns the measured rows.
std::vector<BenchRow> run_sweep(const PackedFile& file, const std::vector<BenchConfig>& configs,
                                const SweepSetup& s, const Bandwidths& bw,
                                const std::function<void(const BenchRow&)>& on_row);

}  // namespace ferry
