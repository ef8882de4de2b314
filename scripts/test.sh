#!/usr/bin/env bash
# Sets up, builds and runs every test ferry has without a GPU (tests labelled gpu skip with a
# message when no GPU is present), after checking that every source file is clang-formatted.
# Every build here treats warnings as errors (FERRY_WERROR=ON; a user's build does not):
#   1. the normal build (CUDA backend too when nvcc is found) and all its tests;
#   1b. the Release build (CPU backend, benchmarks too): built, and a smoke run, no tests (its
#      optimizer finds warnings the RelWithDebInfo build does not);
#   2. an AddressSanitizer + UndefinedBehaviorSanitizer build (CPU backend) and all its tests;
#   3. a ThreadSanitizer build (clang, CPU backend) of the paging cache's tests: the prefetch
#      thread, cancellation, errors and faults injected on it, and the forward pass through it;
#   4. the libFuzzer targets of the parsers of untrusted input (the safetensors reader for
#      FERRY_FUZZ_SECONDS, default 60; tokenizer.json, tokenizer input text and config.json for
#      half that each).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs=$(nproc)

echo "== clang-format check"
clang-format --dry-run --Werror $(git ls-files '*.cpp' '*.hpp' '*.cu' '*.cuh')

echo "== build and test (build/)"
bash scripts/build.sh -DFERRY_WERROR=ON
ctest --test-dir build --output-on-failure -j "$jobs"

echo "== Release build, CPU backend (build-release/): built, smoke run, no tests"
FERRY_BUILD_TYPE=Release FERRY_BUILD_DIR=build-release bash scripts/build.sh -DFERRY_WERROR=ON \
  -DFERRY_CUDA=OFF -DFERRY_BENCH=ON
./build-release/ferry --version
smoke=$(mktemp -d)
./build-release/ferry synth --preset llama-tiny -o "$smoke/hf" >/dev/null
./build-release/ferry quantize -q "$smoke/hf" -o "$smoke/m.ferry"
./build-release/ferry run "$smoke/m.ferry" -p "Once upon a time" -n 8 >/dev/null
rm -rf "$smoke"

echo "== AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)"
FERRY_BUILD_DIR=build-asan bash scripts/build.sh -DFERRY_WERROR=ON -DFERRY_CUDA=OFF -DFERRY_BENCH=OFF \
  -DFERRY_SANITIZE=address,undefined
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build-asan --output-on-failure -j "$jobs"

echo "== ThreadSanitizer: the paging cache and the forward pass through it (build-tsan/)"
# clang: GCC 12 refuses moodycamel's atomic_thread_fence under -fsanitize=thread (-Werror=tsan).
CC=clang CXX=clang++ FERRY_BUILD_DIR=build-tsan FERRY_BUILD_TARGET="ferry test_cache test_paging" \
  bash scripts/build.sh -DFERRY_WERROR=ON -DFERRY_CUDA=OFF -DFERRY_BENCH=OFF -DFERRY_SANITIZE=thread
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" ctest --test-dir build-tsan \
  --output-on-failure -j "$jobs" -R '^(Cache|Paging)'

# Each parser of untrusted input for FERRY_FUZZ_SECONDS (default 60 for the safetensors reader,
# half that for the others): target, seconds, then its seed directories (tests/fuzz_corpus also
# keeps the inputs of earlier findings, as regression seeds).
fuzz_seconds=${FERRY_FUZZ_SECONDS:-60}
fuzz_targets=(
  "fuzz_safetensors $fuzz_seconds tests/fuzz_corpus/safetensors"
  "fuzz_tokenizer_json $((fuzz_seconds / 2)) tests/fixtures/tokenizer tests/fuzz_corpus/tokenizer_json"
  "fuzz_tokenizer_text $((fuzz_seconds / 2)) tests/fuzz_corpus/tokenizer_text"
  "fuzz_model_config $((fuzz_seconds / 2)) tests/fuzz_corpus/model_config"
  "fuzz_jinja $((fuzz_seconds / 2)) tests/fuzz_corpus/jinja tests/fixtures/chat"
)
echo "== fuzz the parsers of untrusted input (build-fuzz/)"
CC=clang CXX=clang++ FERRY_BUILD_DIR=build-fuzz \
  FERRY_BUILD_TARGET="fuzz_safetensors fuzz_tokenizer_json fuzz_tokenizer_text fuzz_model_config fuzz_jinja" \
  bash scripts/build.sh -DFERRY_WERROR=ON -DFERRY_CUDA=OFF -DFERRY_BENCH=OFF -DFERRY_FUZZ=ON \
  -DFERRY_SANITIZE=address,undefined
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for entry in "${fuzz_targets[@]}"; do
  read -r target seconds seeds <<<"$entry"
  echo "-- $target for $seconds s"
  mkdir -p "$work/$target/corpus"
  for dir in $seeds; do cp -r "$dir"/. "$work/$target/corpus/"; done
  if ! "./build-fuzz/tests/$target" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$work/$target/" "$work/$target/corpus" >"$work/$target/log" 2>&1; then
    tail -n 60 "$work/$target/log"
    echo "fuzzing found a failure (input saved under $work/$target, kept)"; trap - EXIT; exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$work/$target/log"
done
echo "== all tests passed"
