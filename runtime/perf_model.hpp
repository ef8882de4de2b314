// DESIGN.md's performance model of decoding: a token reads every weight once (from host memory on
// the CPU, from HBM on a GPU) and every layer's KV rows once, and the weights the cache does not
// hold are first copied into it (host memcpy, or PCIe from pinned memory). Copy and compute
// overlap, so the slower of the two bounds a token:
//
//   t >= max((W + KV) / read_bw, S / copy_bw)
//
// with W the weight bytes the kernels read per token, KV the cache bytes attention reads, S the
// bytes streamed into the weight cache. Pure arithmetic: bench measures the inputs.
//
// A step of b sequences (batched decode) reads and streams each weight once for all of them, reads
// each sequence's KV rows, and does b tokens of arithmetic:
//
//   t_step >= max((W + b * KV) / read_bw, S / copy_bw, b * C)
//
// with S now the bytes streamed per step and C the compute seconds of one token at full batch
// (bench measures it as 1 / its prefill tokens/s). A token then costs t_step / b: streaming a
// 32B model at 8 GB over PCIe serves 64 sequences for the price of one until b * C catches up.
#pragma once

namespace ferry {

struct TokenTraffic {
  double weight_bytes = 0;     // W: weight bytes read per token
  double kv_bytes = 0;         // KV: KV-cache bytes read per token
  double streamed_bytes = 0;   // S: of the weights, bytes copied into the cache per step
  double read_bw = 0;          // bytes/s the kernels read at
  double copy_bw = 0;          // bytes/s the cache is filled at
  double batch = 1;            // b: sequences decoded per step (>= 1)
  double compute_seconds = 0;  // C: arithmetic of one token at full batch; 0: not counted
};

// The least seconds a step of `batch` tokens can take. Throws as token_seconds_bound.
double step_seconds_bound(const TokenTraffic& t);

// The least seconds a token can take (a step's over its batch). A term without bytes costs nothing
// whatever its bandwidth; one with bytes and no bandwidth is infinite. Throws ferry::Error on a
// negative or NaN input.
double token_seconds_bound(const TokenTraffic& t);

// 1 / token_seconds_bound: 0 when that is infinite, infinite when it is 0 (nothing to move).
double tokens_per_second_bound(const TokenTraffic& t);

// The KV bytes attention reads per decoded token, averaged over `gen` tokens decoded after a
// prompt of `prompt`: the token at position p reads p + 1 rows, so the mean is
// prompt + (gen + 1) / 2 rows of `bytes_per_position` (every layer's k and v).
double mean_kv_bytes_per_token(double bytes_per_position, double prompt, double gen);

}  // namespace ferry
