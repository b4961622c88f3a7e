#!/usr/bin/env bash
# A coordinator and three node agents on this machine, a client streaming
# through them, one agent's worker killed, a fourth agent joining, one agent
# leaving with SIGTERM; prints the membership epochs and stops everything.
# Each command is what you would paste into its own shell.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
test -f "$MODEL" || scripts/fetch-model.sh
cargo build --release -q
BIN=target/release/tokenflow
export TOKENFLOW_JOIN_TOKEN=${TOKENFLOW_JOIN_TOKEN:-demo-secret}
OUT=${OUT:-out/membership-demo}
mkdir -p "$OUT"
rm -f "$OUT/nodes.jsonl"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT

echo "== coordinator"
$BIN serve --coordinator --listen 127.0.0.1:8100 --min-nodes 3 --model "$MODEL" \
  --history "$OUT/nodes.jsonl" > "$OUT/coordinator.out" 2> "$OUT/coordinator.log" &
PIDS+=($!)
sleep 1
for n in a b c; do
  echo "== node $n"
  $BIN node --join http://127.0.0.1:8100 --name $n --model "$MODEL" --memory 80 \
    > "$OUT/node-$n.out" 2> "$OUT/node-$n.log" &
  PIDS+=($!)
done
until curl -sf http://127.0.0.1:8100/health > /dev/null; do sleep 0.2; done

control() { curl -s -H "Authorization: Bearer $TOKENFLOW_JOIN_TOKEN" "http://127.0.0.1:8100/control/$1"; }
epochs() {
  control epochs | python3 -c 'import json,sys
d = json.load(sys.stdin)
for e in d["epochs"]:
    print("  epoch %d (%s) on %s, stages %s, plan %s%s" % (e["epoch"], e["cause"][:60], ",".join(e["nodes"]),
          e["stages"], e["planned_by"], "" if e["ended"] is None else "; " + e["ended"][:60]))
print("  sessions moved between epochs: %d" % d["moved"])'
}
echo "== epochs"; epochs

echo "== a client streams 200 tokens; node b's worker is killed after 1 s"
curl -sN http://127.0.0.1:8100/v1/completions -H 'Content-Type: application/json' \
  -d '{"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "The lighthouse keeper", "max_tokens": 200,
       "temperature": 0, "ignore_eos": true, "stream": true}' > "$OUT/stream.txt" &
CURL=$!
sleep 1
WORKER=$(control nodes | python3 -c 'import json,sys
for n in json.load(sys.stdin)["nodes"]:
    if n["registration"]["name"] == "b":
        print([w["pid"] for w in n["status"]["workers"] if w["exit"] is None][-1])')
kill -9 "$WORKER"
wait $CURL
python3 -c 'import json,sys
text = "".join(json.loads(l[6:])["choices"][0]["text"] for l in open(sys.argv[1]) if l.startswith("data: {"))
print("  streamed:", repr(text))' "$OUT/stream.txt"
echo "== epochs"; epochs

echo "== node d joins"
$BIN node --join http://127.0.0.1:8100 --name d --model "$MODEL" --memory 80 > "$OUT/node-d.out" 2> "$OUT/node-d.log" &
PIDS+=($!)
sleep 3
echo "== epochs"; epochs

echo "== node a leaves (SIGTERM): it drains first"
kill -TERM "${PIDS[1]}"
wait "${PIDS[1]}" && echo "  node a exited 0"
echo "== epochs"; epochs
echo "== history"; control history | python3 -c 'import json,sys
d = json.load(sys.stdin)
for r in d["records"]: print("  %s %s" % (r["node"], r["event"]))'
echo "logs in $OUT"
