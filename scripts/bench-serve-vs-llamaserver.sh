#!/usr/bin/env bash
# Side-by-side load benchmark of the OpenAI-compatible servers: `mllm serve` against
# llama.cpp's `llama-server`, same GGUF, same machine, same threads, same number of slots
# and per-slot context, in one run; prints one markdown table (engine column + ratios).
# llama.cpp is built from the llama-cpp-python sdist into the cache dir, never into the repo
# (the same cache and build dir as scripts/bench-vs-llamacpp.sh; only `llama-server` is added).
#
# Usage: scripts/bench-serve-vs-llamaserver.sh [--threads 2] [--clients 1,4,16] [--requests 2]
#          [--max-tokens 32] [--slots 16] [--ctx 512] [--reps 1] [--model FILE] [--out DIR]
#          [--prompt-cache]
#        scripts/bench-serve-vs-llamaserver.sh --table DIR   (the table of an earlier run's --out DIR)
#   --threads     compute threads of both servers (mllm -t; llama-server -t and -tb)
#   --clients     concurrency levels; each client sends --requests streamed chat requests
#   --slots       sequences generating at once: mllm --max-concurrent, llama-server -np
#   --ctx         context per slot: mllm --ctx; llama-server -c is slots x ctx, split evenly
#                 over its slots (--no-kv-unified)
#   --reps        repetitions; engine order alternates (ours, theirs; theirs, ours; ...);
#                 ratios of the median and of the best repetition (max tok/s, min TTFT)
#   --prompt-cache  keep llama-server's per-slot prompt reuse (its default; a request then
#                 skips the prompt prefix it shares with the slot's previous one). Without
#                 it every request sends "cache_prompt": false, so both engines process
#                 every prompt token (mllm serve has no prompt cache).
# Env:   LLAMA_CPP_PY_VERSION (default 0.3.36)  sdist whose vendor/llama.cpp is built
#        LLAMA_REPACK=0|1 (default 1, llama.cpp's default) llama.cpp weight repacking
#        MLLM_CACHE                             cache dir (default ~/.cache/mllm)
#        OMP_WAIT_POLICY                        passed through (llama.cpp's OpenMP threads
#                                               spin at barriers; see bench-vs-llamacpp.sh)
# On a shared machine llama-server's figures collapse (5-20x) whenever another process
# takes a core; use --reps 3 and look at the best-of-reps ratios, or a quiet machine.
# Per engine and repetition: start the server on a free 127.0.0.1 port, wait for /health
# (bounded), one untimed warm-up request, then scripts/bench-serve.py once per level
# (llama-server's /metrics is read around each level: llama_decode calls and busy slots
# per call, i.e. how many sequences it batched per step), then stop the server. Servers
# run at normal priority; builds run under `nice -n 10`. Nothing is left running on exit.
set -euo pipefail

THREADS=2
CLIENTS="1,4,16"
REQUESTS=2
MAX_TOKENS=32
SLOTS=16
CTX=512
REPS=1
MODEL=""
OUT=""
PROMPT_CACHE=0
TABLE_ONLY=""
VERSION="${LLAMA_CPP_PY_VERSION:-0.3.36}"
REPACK="${LLAMA_REPACK:-1}"
HEALTH_WAIT=120   # seconds a server may take to load
REQ_TIMEOUT=120   # seconds one request may take

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --clients) CLIENTS="$2"; shift 2 ;;
    --requests) REQUESTS="$2"; shift 2 ;;
    --max-tokens) MAX_TOKENS="$2"; shift 2 ;;
    --slots) SLOTS="$2"; shift 2 ;;
    --ctx) CTX="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --prompt-cache) PROMPT_CACHE=1; shift ;;
    --table) TABLE_ONLY="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in THREADS REQUESTS MAX_TOKENS SLOTS CTX REPS; do
  opt="${v,,}"
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "--${opt//_/-}: '${!v}' is not a positive integer" >&2; exit 2; }
done
[[ "$CLIENTS" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "--clients: expected e.g. 1,4,16" >&2; exit 2; }
[ "$MAX_TOKENS" -lt "$CTX" ] || { echo "--max-tokens must be below --ctx" >&2; exit 2; }
case "$REPACK" in 0 | 1) ;; *) echo "LLAMA_REPACK must be 0 or 1" >&2; exit 2 ;; esac

# print_table DIR: the combined markdown table of a run's output directory.
print_table() {
  [ ! -f "$1/header.txt" ] || { cat "$1/header.txt"; echo; }
  python3 - "$1" <<'EOF'
import statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
# Levels and repetitions from the files of the run (ENGINE-rR-cN.row).
runs = [f.stem.split("-") for f in out.glob("*-r*-c*.row")]
levels = sorted({int(c[1:]) for _, _, c in runs})
reps = max((int(r[1:]) for _, r, _ in runs), default=0)
NAMES = {"ours": "mllm serve", "theirs": "llama-server"}

def row(engine, r, n):
    f = out / f"{engine}-r{r}-c{n}.row"
    cells = [c.strip() for c in f.read_text().strip().split("|")[1:-1]] if f.exists() else []
    return cells[1:] if len(cells) == 10 else None  # drop the label

def metrics(path):
    m = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("llamacpp:"):
            k, v = line[len("llamacpp:"):].split()
            m[k] = float(v)
    return m

def per_step(r, n):
    a, b = metrics(out / f"theirs-r{r}-c{n}.before"), metrics(out / f"theirs-r{r}-c{n}.after")
    if "n_decode_total" not in a or "n_decode_total" not in b:
        return "?", "?"
    steps = b["n_decode_total"] - a["n_decode_total"]
    busy = b["n_busy_slots_per_decode"] * b["n_decode_total"] - a["n_busy_slots_per_decode"] * a["n_decode_total"]
    cached = b["prompt_tokens_cached_total"] - a["prompt_tokens_cached_total"]
    return f"{steps:.0f} steps, {busy / max(steps, 1):.1f} seqs/step", f"{cached:.0f}"

def num(x):
    try:
        return float(x)
    except ValueError:
        return float("nan")

print("| engine | rep | clients | requests | prompt tokens | gen tokens | wall s | agg gen tok/s | TTFT p50 ms "
      "| TTFT p95 ms | per-req gen tok/s | llama_decode calls (batching) | prompt tokens reused |")
print("| :----- | --: | ------: | -------: | ------------: | ---------: | -----: | ------------: | ----------: "
      "| ----------: | ----------------: | :---------------------------- | ------------------: |")
missing = False
for n in levels:
    med, best = {}, {}
    for engine in ("ours", "theirs"):
        got = []
        for r in range(1, reps + 1):
            cells = row(engine, r, n)
            if cells is None:
                missing = True
                print(f"| {NAMES[engine]} | {r} | {n} | failed, see {engine}-r{r}.log | | | | | | | | | |")
                continue
            got.append(cells)
            steps, cached = per_step(r, n) if engine == "theirs" else ("batched (not exposed)", "0")
            print(f"| {NAMES[engine]} | {r} | " + " | ".join(cells) + f" | {steps} | {cached} |")
        cols = [[num(c[i]) for c in got] for i in (5, 6, 7)]  # agg tok/s, TTFT p50, TTFT p95
        med[engine] = [statistics.median(c) if c else float("nan") for c in cols]
        best[engine] = [max(cols[0]), min(cols[1]), min(cols[2])] if got else [float("nan")] * 3
    kinds = [("median of reps", med), ("best of reps", best)] if reps > 1 else [("", med)]
    for label, v in kinds:
        ratio = [f"**{a / b:.2f}**" if b else "-" for a, b in zip(v["ours"], v["theirs"])]
        print(f"| ours/theirs | {label} | {n} | | | | | {ratio[0]} | {ratio[1]} | {ratio[2]} | | | |")
sys.exit(1 if missing else 0)
EOF
}
[ -z "$TABLE_ONLY" ] || { print_table "$TABLE_ONLY"; exit; }

cd "$(dirname "$0")/.."
REPO="$PWD"
CACHE="${MLLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mllm}"
log() { echo "[bench-serve-vs-llamaserver] $*" >&2; }

# --- tools, mllm-rs, llama.cpp's llama-server (cached build) -----------------------------
# shellcheck source=scripts/lib/llamacpp.sh
. "$REPO/scripts/lib/llamacpp.sh"
ensure_tools timeout:coreutils
build_mllm
build_llamacpp "$VERSION" llama-server
LSERVER="$LDIR/build/bin/llama-server"

# --- servers -----------------------------------------------------------------------------
OUT="${OUT:-$REPO/target/bench-serve-vs-llamaserver/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
SERVER_PID=""
BENCH_PID=""
stop_server() {
  [ -z "$BENCH_PID" ] || { kill "$BENCH_PID" 2>/dev/null || true; BENCH_PID=""; }
  [ -n "$SERVER_PID" ] || return 0
  kill "$SERVER_PID" 2>/dev/null || true
  local i
  for ((i = 0; i < 50; i++)); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.2
  done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM
trap 'log "failed at line $LINENO; logs in $OUT"' ERR

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# http_get PORT PATH [FILE]: 0 when the answer is 200 (body into FILE if given).
http_get() {
  python3 - "$@" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", timeout=5) as r:
        body = r.read()
except Exception:
    sys.exit(1)
if len(sys.argv) > 3:
    open(sys.argv[3], "wb").write(body)
EOF
}
# start_server ENGINE LOG: start it on a free port ($PORT), wait for /health.
start_server() {
  local engine=$1 log_file=$2 i
  PORT="$(free_port)"
  if [ "$engine" = ours ]; then
    "$MLLM" serve --model "$MODEL" --host 127.0.0.1 --port "$PORT" --threads "$THREADS" \
      --max-concurrent "$SLOTS" --ctx "$CTX" >"$log_file" 2>&1 &
  else
    local repack=(--repack)
    [ "$REPACK" = 1 ] || repack=(--no-repack)
    "$LSERVER" -m "$MODEL" --host 127.0.0.1 --port "$PORT" -t "$THREADS" -tb "$THREADS" \
      -np "$SLOTS" -c $((SLOTS * CTX)) --no-kv-unified -cb "${repack[@]}" --metrics --no-webui \
      >"$log_file" 2>&1 &
  fi
  SERVER_PID=$!
  for ((i = 0; i < HEALTH_WAIT * 2; i++)); do
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "the $engine server exited; see $log_file" >&2; exit 1; }
    http_get "$PORT" /health && return 0
    sleep 0.5
  done
  echo "the $engine server was not healthy after ${HEALTH_WAIT}s; see $log_file" >&2
  exit 1
}
# bench ENGINE ARGS...: scripts/bench-serve.py against $PORT, bounded in time.
bench() {
  local engine=$1 model=bench extra='{}'
  shift
  if [ "$engine" = theirs ]; then
    model="$(basename "$MODEL")"
    [ "$PROMPT_CACHE" = 1 ] || extra='{"cache_prompt": false}'
  fi
  # In the background + wait, so that a signal stops the script at once (see the traps).
  timeout -k 5 $((REQUESTS * REQ_TIMEOUT + 60)) python3 "$REPO/scripts/bench-serve.py" --port "$PORT" \
    --requests "$REQUESTS" --max-tokens "$MAX_TOKENS" --timeout "$REQ_TIMEOUT" --model "$model" \
    --extra-body "$extra" --no-header --label "$engine" "$@" &
  BENCH_PID=$!
  local rc=0
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  return "$rc"
}
run_engine() {
  local engine=$1 r=$2 n
  log "repetition $r/$REPS: $engine"
  start_server "$engine" "$OUT/$engine-r$r.log"
  bench "$engine" --clients 1 --requests 1 --max-tokens 2 --no-warmup >/dev/null # warm-up
  for n in ${CLIENTS//,/ }; do
    [ "$engine" = ours ] || http_get "$PORT" /metrics "$OUT/$engine-r$r-c$n.before"
    # A level with failed requests still prints its row (and the errors on stderr).
    bench "$engine" --clients "$n" --no-warmup >"$OUT/$engine-r$r-c$n.row" ||
      log "$engine, $n clients: bench-serve.py failed or timed out (see above)"
    [ "$engine" = ours ] || http_get "$PORT" /metrics "$OUT/$engine-r$r-c$n.after"
  done
  stop_server
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "results in $OUT; threads $THREADS, slots $SLOTS x ctx $CTX, clients $CLIENTS, $REPS repetition(s)"
for ((r = 1; r <= REPS; r++)); do
  if ((r % 2)); then order="ours theirs"; else order="theirs ours"; fi
  for e in $order; do run_engine "$e" "$r"; done
done

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1);" \
  "$(nproc) cores; mllm-rs $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?');" \
  "llama-cpp-python $VERSION sdist (llama-server, repack=$REPACK, prompt cache $([ "$PROMPT_CACHE" = 1 ] && echo on || echo off));" \
  "model $(basename "$MODEL"); $THREADS threads; $SLOTS slots x $CTX tokens; $REQUESTS streamed chat requests" \
  "per client, max_tokens $MAX_TOKENS, greedy; OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset};" \
  "load average (1/5/15 min) at start $LOAD_BEFORE, at end $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/header.txt"
print_table "$OUT" | tee "$OUT/table.md"
