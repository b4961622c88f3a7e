#!/usr/bin/env bash
# The server against the engine's batch mode on the same load: for each
# concurrency, `tokenflow bench` (requests handed to the engine in-process) and
# `tokenflow bench --url` against `tokenflow serve` (the same prompts, seed and
# lengths over HTTP, timed by the client from the streamed chunks). Prints one
# Markdown table: generated tokens/s of each and their ratio, and the latency the
# HTTP path adds at p50 and p99. Usage: scripts/serve-vs-batch.sh [CONCURRENCY...]
# (default 1 8 32); REQUESTS (default 64), OUTPUT (default 32), WORKERS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/tokenflow
test -x "$BIN" || cargo build --release
REQUESTS=${REQUESTS:-64}
OUTPUT=${OUTPUT:-32}
WORKERS=${WORKERS:-2}
PORT=${PORT:-18731}
OUT=${OUT:-out/serve-vs-batch}
mkdir -p "$OUT"
LEVELS=("$@")
[ ${#LEVELS[@]} -gt 0 ] || LEVELS=(1 8 32)
load=(--requests "$REQUESTS" --prompt-len uniform:16:64 --output-len "fixed:$OUTPUT" --seed 1)

"$BIN" serve --workers "$WORKERS" --listen "127.0.0.1:$PORT" --queue-limit 1024 >"$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { cat "$OUT/serve.log"; exit 1; }

for c in "${LEVELS[@]}"; do
  # Batch mode runs while the server idles (it parks: no spinning).
  "$BIN" bench --workers "$WORKERS" --concurrency "$c" "${load[@]}" --out "$OUT/batch-$c" >"$OUT/batch-$c.txt" 2>&1
  "$BIN" bench --url "http://127.0.0.1:$PORT" --concurrency "$c" "${load[@]}" --out "$OUT/url-$c" >"$OUT/url-$c.txt" 2>&1
done
kill -TERM $SERVER; wait $SERVER || true; trap - EXIT

python3 - "$OUT" "${LEVELS[@]}" <<'PY'
import json, sys
out, levels = sys.argv[1], sys.argv[2:]
def load(d):
    m = json.load(open(f"{out}/{d}/metrics.json"))
    l = json.load(open(f"{out}/{d}/latency.json"))
    return m["tokens"] / (m["span_us"] / 1e6), l
print("| streams | batch tok/s | server tok/s | server/batch | TTFT p50 batch → server (ms) | TTFT p99 | ITL p50 | ITL p99 |")
print("|---|---|---|---|---|---|---|---|")
for c in levels:
    bt, bl = load(f"batch-{c}")
    st, sl = load(f"url-{c}")
    cell = lambda k, q: f"{bl[k][q]:.1f} → {sl[k][q]:.1f}"
    print(f"| {c} | {bt:.1f} | {st:.1f} | {st/bt:.3f} | {cell('ttft','p50_ms')} | {cell('ttft','p99_ms')} | {cell('inter_token','p50_ms')} | {cell('inter_token','p99_ms')} |")
PY
