#!/usr/bin/env bash
# Installs every package ferry needs on a Debian/Ubuntu machine. Idempotent: a second
# run checks with dpkg and prints nothing when all is present.
# The CUDA toolkit (nvcc, cuBLASLt) is not installed here: it comes with the machine or
# from NVIDIA; without it ferry builds its CPU backend only.
set -euo pipefail

debs=(
  build-essential cmake ninja-build pkg-config git
  clang libclang-rt-14-dev          # libFuzzer target and sanitizer runtimes
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libfmt-dev libxxhash-dev libcxxopts-dev libconcurrentqueue-dev libpcre2-dev libutf8proc-dev gnuplot-nox
  libcpp-httplib-dev                # ferry serve's HTTP layer
  chromium                          # the chat page's test (headless)
  clang-format python3
)

missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
