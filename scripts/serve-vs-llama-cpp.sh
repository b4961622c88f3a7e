#!/usr/bin/env bash
# tokenflow's server against llama-cpp-python's OpenAI-compatible server on the
# same model file and the same load, one server at a time, both driven by
# `tokenflow bench --url --prompt-as text` (llama-cpp-python takes only text
# prompts; each server tokenizes them again). Prints one Markdown table.
# llama-cpp-python's server runs one request at a time; by default a new request
# interrupts the one running (cut-short streams count as failed), so it is told
# to queue them instead. Needs `pip install 'llama-cpp-python[server]'` (it builds llama.cpp: minutes).
# Usage: scripts/serve-vs-llama-cpp.sh [CONCURRENCY...] (default 1 8 32);
# REQUESTS (default 64), OUTPUT (default 32), THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/tokenflow
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
test -x "$BIN" || cargo build --release
test -f "$MODEL" || scripts/fetch-model.sh
python3 -c 'import llama_cpp.server' 2>/dev/null || {
  echo "llama-cpp-python's server is missing: pip install 'llama-cpp-python[server]'" >&2
  exit 1
}
REQUESTS=${REQUESTS:-64}
OUTPUT=${OUTPUT:-32}
THREADS=${THREADS:-2}
PORT=${PORT:-18733}
OUT=${OUT:-out/serve-vs-llama-cpp}
mkdir -p "$OUT"
LEVELS=("$@")
[ ${#LEVELS[@]} -gt 0 ] || LEVELS=(1 8 32)
load=(--requests "$REQUESTS" --prompt-len uniform:16:64 --output-len "fixed:$OUTPUT" --seed 1 --prompt-as text)

# Starts a server in the background (the command after the name), waits for
# /v1/models, runs every level against it, then stops it.
measure() {
  local name=$1
  shift
  "$@" >"$OUT/$name-server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null || { cat "$OUT/$name-server.log"; kill $pid; exit 1; }
  for c in "${LEVELS[@]}"; do
    "$BIN" bench --url "http://127.0.0.1:$PORT" --concurrency "$c" "${load[@]}" \
      --label "$name" --out "$OUT/$name-$c" >"$OUT/$name-$c.txt" 2>&1
  done
  kill -TERM $pid
  wait $pid || true
}

measure tokenflow "$BIN" serve --workers "$THREADS" --listen "127.0.0.1:$PORT" --queue-limit 1024 --model "$MODEL"
measure llama-cpp python3 -m llama_cpp.server --model "$MODEL" --port "$PORT" --n_threads "$THREADS" --n_ctx 2048 \
  --interrupt_requests False
version=$(python3 -c 'import llama_cpp; print(llama_cpp.__version__)')

python3 - "$OUT" "$version" "${LEVELS[@]}" <<'PY'
import json, sys
out, version, levels = sys.argv[1], sys.argv[2], sys.argv[3:]
def load(d):
    m = json.load(open(f"{out}/{d}/metrics.json"))
    l = json.load(open(f"{out}/{d}/latency.json"))
    return m["tokens"] / (m["span_us"] / 1e6), l
print(f"| streams | llama-cpp-python {version} tok/s | tokenflow tok/s | tokenflow/llama.cpp | TTFT p50 llama.cpp / tokenflow (ms) | TTFT p99 | ITL p50 | ITL p99 |")
print("|---|---|---|---|---|---|---|---|")
for c in levels:
    lt, ll = load(f"llama-cpp-{c}")
    tt, tl = load(f"tokenflow-{c}")
    cell = lambda k, q: f"{ll[k][q]:.1f} / {tl[k][q]:.1f}"
    print(f"| {c} | {lt:.1f} | {tt:.1f} | {tt/lt:.2f} | {cell('ttft','p50_ms')} | {cell('ttft','p99_ms')} | {cell('inter_token','p50_ms')} | {cell('inter_token','p99_ms')} |")
PY
