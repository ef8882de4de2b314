// The performance model's bound, on hand-computed cases.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "base/error.hpp"
#include "runtime/perf_model.hpp"

namespace ferry {
namespace {

constexpr double GB = 1e9;

// Every weight resident: nothing streamed, the read of W alone bounds a token.
// 4 GB at 50 GB/s: 80 ms, 12.5 tokens/s.
TEST(PerfModel, AllResidentIsBoundByTheRead) {
  const TokenTraffic t{.weight_bytes = 4 * GB, .read_bw = 50 * GB, .copy_bw = 25 * GB};
  EXPECT_DOUBLE_EQ(token_seconds_bound(t), 0.08);
  EXPECT_DOUBLE_EQ(tokens_per_second_bound(t), 12.5);
}

// 17 GB read at 3000 GB/s (5.7 ms), 9 GB of it streamed at 25 GB/s (360 ms): the copy bounds.
TEST(PerfModel, StreamingBoundWhenTheCopyIsSlower) {
  const TokenTraffic t{
      .weight_bytes = 17 * GB, .streamed_bytes = 9 * GB, .read_bw = 3000 * GB, .copy_bw = 25 * GB};
  EXPECT_DOUBLE_EQ(token_seconds_bound(t), 0.36);
  EXPECT_NEAR(tokens_per_second_bound(t), 1 / 0.36, 1e-12);
}

// A copy faster than the read leaves the read as the bound: max, not sum (they overlap).
TEST(PerfModel, CopyAndReadOverlap) {
  const TokenTraffic t{
      .weight_bytes = 10 * GB, .streamed_bytes = 1 * GB, .read_bw = 20 * GB, .copy_bw = 10 * GB};
  EXPECT_DOUBLE_EQ(token_seconds_bound(t), 0.5);  // 10/20, not 10/20 + 1/10
}

// The KV cache is read beside the weights: 17 GB + 1.1 GB at 100 GB/s is 181 ms.
TEST(PerfModel, KvBytesAreCountedWithTheWeights) {
  const TokenTraffic t{.weight_bytes = 17 * GB, .kv_bytes = 1.1 * GB, .read_bw = 100 * GB};
  EXPECT_NEAR(token_seconds_bound(t), 0.181, 1e-12);
}

// A step of 16 reads the 17 GB and streams its 9 GB once (360 ms, the copy bounds) and reads 16
// sequences' 0.1 GB of KV (1.6 GB at 3000 GB/s: 6.2 ms): 22.5 ms a token, 16x one at a time.
TEST(PerfModel, ABatchSharesEachStreamedWeight) {
  const TokenTraffic t{.weight_bytes = 17 * GB,
                       .kv_bytes = 0.1 * GB,
                       .streamed_bytes = 9 * GB,
                       .read_bw = 3000 * GB,
                       .copy_bw = 25 * GB,
                       .batch = 16};
  EXPECT_DOUBLE_EQ(step_seconds_bound(t), 0.36);
  EXPECT_DOUBLE_EQ(token_seconds_bound(t), 0.0225);
  EXPECT_DOUBLE_EQ(tokens_per_second_bound(t), 16 / 0.36);
}

// Until compute catches up: 64 tokens at 10 ms each are 640 ms, more than the 360 ms copy.
TEST(PerfModel, ComputeBoundsALargeBatch) {
  const TokenTraffic t{.weight_bytes = 17 * GB,
                       .streamed_bytes = 9 * GB,
                       .read_bw = 3000 * GB,
                       .copy_bw = 25 * GB,
                       .batch = 64,
                       .compute_seconds = 0.01};
  EXPECT_DOUBLE_EQ(step_seconds_bound(t), 0.64);
  EXPECT_DOUBLE_EQ(token_seconds_bound(t), 0.01);
  EXPECT_THROW(step_seconds_bound({.read_bw = 1, .batch = 0}), Error);
  EXPECT_THROW(step_seconds_bound({.read_bw = 1, .compute_seconds = -1}), Error);
}

// 8 tokens decoded after a prompt of 120: positions 120..127 read 121..128 rows, 124.5 on average.
TEST(PerfModel, MeanKvBytesPerDecodedToken) {
  EXPECT_DOUBLE_EQ(mean_kv_bytes_per_token(1000, 120, 8), 124500);
  EXPECT_DOUBLE_EQ(mean_kv_bytes_per_token(1000, 0, 1), 1000);  // the first token reads itself
  EXPECT_DOUBLE_EQ(mean_kv_bytes_per_token(1000, 50, 0), 0);    // nothing decoded
  EXPECT_DOUBLE_EQ(mean_kv_bytes_per_token(0, 50, 10), 0);
}

TEST(PerfModel, ZeroAndDegenerateInputs) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  // Nothing to move: no time, no ceiling.
  EXPECT_EQ(token_seconds_bound({}), 0);
  EXPECT_EQ(tokens_per_second_bound({}), inf);
  // Nothing streamed costs nothing even with no copy bandwidth measured (a run without a cache).
  EXPECT_DOUBLE_EQ(token_seconds_bound({.weight_bytes = 1 * GB, .read_bw = 10 * GB}), 0.1);
  // Bytes to move at no bandwidth: never.
  EXPECT_EQ(token_seconds_bound({.weight_bytes = 1 * GB}), inf);
  EXPECT_EQ(tokens_per_second_bound({.weight_bytes = 1 * GB}), 0);
  EXPECT_EQ(tokens_per_second_bound({.weight_bytes = 1, .streamed_bytes = 1, .read_bw = 1}), 0);
  // Negative or NaN inputs are errors, not silent nonsense.
  EXPECT_THROW(token_seconds_bound({.weight_bytes = -1, .read_bw = 1}), Error);
  EXPECT_THROW(token_seconds_bound({.weight_bytes = 1, .read_bw = std::nan("")}), Error);
  EXPECT_THROW(mean_kv_bytes_per_token(-1, 1, 1), Error);
}

}  // namespace
}  // namespace ferry
