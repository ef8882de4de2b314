#!/usr/bin/env bash
# Configures and builds ferry into build/ (or $FERRY_BUILD_DIR) with the system's CUDA toolkit
# when nvcc is found (FERRY_CUDA=AUTO), the CPU backend otherwise. Extra arguments go to cmake;
# FERRY_BUILD_TARGET builds only the targets it lists (separated by spaces), FERRY_BUILD_TYPE sets
# CMAKE_BUILD_TYPE (default RelWithDebInfo). Warnings are errors only with -DFERRY_WERROR=ON (what
# scripts/test.sh passes).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/cuda/bin"
dir=${FERRY_BUILD_DIR:-build}
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=${FERRY_BUILD_TYPE:-RelWithDebInfo} "$@" >/dev/null
cmake --build "$dir" -j "$(nproc)" ${FERRY_BUILD_TARGET:+--target $FERRY_BUILD_TARGET}
