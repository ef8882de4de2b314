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

# cuobjdump and nvdisasm for the SASS check (scripts/sass_check.py, a CTest test): part of a full
# CUDA toolkit but not of the nvcc-only installs some machines have. NVIDIA publishes both as
# PyPI wheels; fetched once into .tools/cuda/bin (ignored), pinned and checked by sha256. A
# failed fetch is a warning: the check then skips with a message.
fetch_cuda_disassembler() {
  local dir tmp
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.tools/cuda/bin"
  command -v nvcc >/dev/null || return 0
  command -v cuobjdump >/dev/null && command -v nvdisasm >/dev/null && return 0
  [[ -x $dir/cuobjdump && -x $dir/nvdisasm ]] && return 0
  tmp=$(mktemp -d)
  echo "setup: fetching cuobjdump and nvdisasm 13.5.37 (NVIDIA's PyPI wheels) into $dir"
  if python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    -d "$tmp" nvidia-cuda-cuobjdump==13.5.37 nvidia-cuda-nvdisasm==13.5.37 >/dev/null 2>&1 &&
    (cd "$tmp" && sha256sum -c --quiet) <<'SUMS'
38780fee50863252a0b8926357faa91615ca1c8346490563f33a06100cd73f58  nvidia_cuda_cuobjdump-13.5.37-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
d3fdbdd49fa53e2e4aacd3db8259d052bd2b049ececdcb69e92e083c6728e7ca  nvidia_cuda_nvdisasm-13.5.37-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
SUMS
  then
    mkdir -p "$dir"
    python3 - "$tmp" "$dir" <<'PY'
import glob, os, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
for wheel in glob.glob(os.path.join(tmp, "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith(("/bin/cuobjdump", "/bin/nvdisasm")):
                dest = os.path.join(out, os.path.basename(name))
                with open(dest, "wb") as f:
                    f.write(z.read(name))
                os.chmod(dest, 0o755)
PY
  else
    echo "setup: warning: could not fetch cuobjdump/nvdisasm; the SASS check will skip"
  fi
  rm -rf "$tmp"
}
fetch_cuda_disassembler
