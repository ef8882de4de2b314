#!/usr/bin/env bash
# The main job on a built-in default: set up, build, quantize a model, inspect the packed file
# and generate text with it on the CPU.
# Uses the real TinyStories model from ../shared when it is beside the checkout, a synthesized
# Qwen2 checkpoint otherwise, and says which.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
mkdir -p out
model=../shared/models/tinystories-656k
if [[ -f $model/model.safetensors ]]; then
  echo "== using the real model $model"
else
  echo "== ../shared is absent: synthesizing a Qwen2 checkpoint (preset qwen2-tiny) in out/qwen2-tiny;"
  echo "   its weights are random, so the generated text is too"
  ./build/ferry synth --preset qwen2-tiny -o out/qwen2-tiny
  model=out/qwen2-tiny
fi
./build/ferry quantize "$model" -o out/model.ferry
./build/ferry inspect out/model.ferry
echo "== generating (greedy) with out/model.ferry"
./build/ferry run out/model.ferry -p "Once upon a time" -n 120
