#!/usr/bin/env bash
# Side-by-side benchmark: mllm-rs against llama.cpp on the same GGUF, same machine, same
# thread counts, in one run; prints one markdown table (via bench_vs_llamacpp_table.py).
# llama.cpp is built from the llama-cpp-python sdist into the cache dir, never into the repo.
#
# Usage: scripts/bench-vs-llamacpp.sh [--threads "1 2"] [--reps N] [--model FILE] [--out DIR] [--no-torch]
#                                     [--ik-bench PATH]
# Env:   LLAMA_CPP_PY_VERSION (default 0.3.36)  sdist whose vendor/llama.cpp is built
#        LLAMA_REPACK=auto|0|1 (default auto)   llama.cpp weight repacking ("extra buffer
#                                               types"); auto = on unless a smoke test crashes
#        MLLM_CACHE                             cache dir (default ~/.cache/mllm)
# PyTorch (HF transformers, f32, the GGUF dequantised on load; scripts/bench_torch.py) is the
# third engine: its venv (scripts/golden-requirements.txt, a large download the first time)
# is cached in $MLLM_CACHE/venv-torch. --no-torch leaves it out.
# On a busy machine llama.cpp's OpenMP threads spin-wait at barriers and lose badly when
# descheduled (its -t 2 drops far below -t 1); OMP_WAIT_POLICY=passive in the environment
# avoids that (mllm-rs uses rayon and ignores it). The default here is llama.cpp's default.
#
# --ik-bench PATH adds ik_llama.cpp (github ikawrakow/ik_llama.cpp) as a fourth engine: the
# llama-bench binary of a build you made yourself (nothing of it is fetched or built here).
# Its llama-bench has no -d: its tg is `-gp 128,128` (128 decode steps timed after a
# 128-token prompt, the same measurement). IK_RTR=auto|0|1 (default auto): its run-time
# repacking (-rtr), auto = whichever of the two is faster on a short pp128 + tg32 probe.
#
# Each repetition block runs, per thread count, mllm-rs then llama.cpp (ours, theirs, ours,
# theirs, ...), so slow drifts of machine load hit both engines alike. Per block and engine:
#   pp   : `bench -p 128,512 -r 1`: time to process a fresh 128/512-token prompt (one batch).
#   tg   : 128 single-token decode steps after a 128-token prompt already in the KV cache
#          (mllm: `bench -p 0 -n 128 --gen-after 128`; llama-bench: `-p 0 -n 128 -d 128`);
#          the prompt is not timed. Run under `/usr/bin/time -v` for the peak RSS (mllm with
#          --no-roof: its bandwidth probe's 256 MiB buffer is not the model's memory).
#   first: wall time of a whole process that loads the model, reads a short prompt and
#          prints one greedy token (`mllm run -n 1`, `llama-completion -n 1`), context 256.
# Each bench process does one untimed warm-up run per test (both tools do this by default).
set -euo pipefail

THREADS="1 2"
REPS=5
MODEL=""
OUT=""
TORCH=1
IK_BENCH=""
IK_RTR="${IK_RTR:-auto}"
VERSION="${LLAMA_CPP_PY_VERSION:-0.3.36}"
REPACK="${LLAMA_REPACK:-auto}"
PROMPT="The capital of France is"

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --no-torch) TORCH=0; shift ;;
    --ik-bench) IK_BENCH="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || { echo "--reps must be a positive integer" >&2; exit 2; }
for t in $THREADS; do
  [[ "$t" =~ ^[1-9][0-9]*$ ]] || { echo "--threads: '$t' is not a positive integer" >&2; exit 2; }
done
case "$REPACK" in auto | 0 | 1) ;; *) echo "LLAMA_REPACK must be auto, 0 or 1" >&2; exit 2 ;; esac
case "$IK_RTR" in auto | 0 | 1) ;; *) echo "IK_RTR must be auto, 0 or 1" >&2; exit 2 ;; esac
if [ -n "$IK_BENCH" ] && [ ! -x "$IK_BENCH" ]; then
  echo "--ik-bench: '$IK_BENCH' is not an executable (build ik_llama.cpp's llama-bench first)" >&2
  exit 2
fi

cd "$(dirname "$0")/.."
REPO="$PWD"
CACHE="${MLLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mllm}"
log() { echo "[bench-vs-llamacpp] $*" >&2; }

# --- tools, mllm-rs, llama.cpp (cached build) -------------------------------------------
# shellcheck source=scripts/lib/llamacpp.sh
. "$REPO/scripts/lib/llamacpp.sh"
ensure_tools /usr/bin/time:time
build_mllm
build_llamacpp "$VERSION" llama-bench llama-completion
LBENCH="$LDIR/build/bin/llama-bench"
LCOMPL="$LDIR/build/bin/llama-completion"

# --- PyTorch (cached venv) ---------------------------------------------------------------
TPY="$CACHE/venv-torch/bin/python"
if [ "$TORCH" = 1 ] && ! "$TPY" -c "import torch, transformers, gguf, accelerate" >/dev/null 2>&1; then
  log "installing torch + transformers into $CACHE/venv-torch (scripts/golden-requirements.txt; slow once)"
  python3 -m venv "$CACHE/venv-torch"
  "$TPY" -m pip install -q -r "$REPO/scripts/golden-requirements.txt" || {
    echo "could not install PyTorch; rerun with --no-torch to compare with llama.cpp only" >&2
    exit 1
  }
fi

# Weight repacking ("extra buffer types", e.g. AMX) is reported to crash on some VMs:
# keep llama.cpp's default (on) unless a short smoke test fails, then turn it off.
if [ "$REPACK" = auto ]; then
  if "$LBENCH" -m "$MODEL" -t 1 -p 16 -n 2 -r 1 --repack 1 -o json >/dev/null 2>&1; then
    REPACK=1
  else
    log "llama-bench crashed with --repack 1: using --repack 0 / --no-repack"
    REPACK=0
  fi
fi
if [ "$REPACK" = 1 ]; then CREPACK=(--repack); else CREPACK=(--no-repack); fi

# ik_llama.cpp's run-time repacking: keep whichever setting is faster on a short probe.
if [ -n "$IK_BENCH" ] && [ "$IK_RTR" = auto ]; then
  ik_probe() { # prints pp + tg t/s summed, or 0 when the run fails
    "$IK_BENCH" -m "$MODEL" -t 1 -p 128 -n 32 -r 1 -rtr "$1" -o json 2>/dev/null |
      python3 -c 'import json,sys; print(sum(e["avg_ts"] for e in json.load(sys.stdin)))' 2>/dev/null || echo 0
  }
  a=$(ik_probe 0)
  b=$(ik_probe 1)
  IK_RTR=$(python3 -c "print(1 if $b > $a else 0)")
  log "ik_llama.cpp probe: -rtr 0 $a, -rtr 1 $b (pp128 + tg32 t/s): using -rtr $IK_RTR"
fi

# --- runs --------------------------------------------------------------------------------
OUT="${OUT:-$REPO/target/bench-vs-llamacpp/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
trap 'echo "[bench-vs-llamacpp] failed at line $LINENO; logs in $OUT" >&2' ERR
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
now_ns() { date +%s%N; }
# first_token ENGINE T B CMD...: wall ms of one whole process, into $OUT/ENGINE-ft-tT-bB.ms
first_token() {
  local f="$OUT/$1-ft-t$2-b$3"
  shift 3
  local t0 t1
  t0=$(now_ns)
  "$@" </dev/null >"$f.out" 2>"$f.err"
  t1=$(now_ns)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", (b - a) / 1e6 }' >"$f.ms"
}
ours() {
  local t=$1 b=$2
  "$MLLM" bench -m "$MODEL" -t "$t" -p 128,512 -n 0 -r 1 -o json >"$OUT/ours-pp-t$t-b$b.json"
  /usr/bin/time -v -o "$OUT/ours-tg-t$t-b$b.time" \
    "$MLLM" bench -m "$MODEL" -t "$t" -p 0 -n 128 --gen-after 128 -r 1 --no-roof -o json >"$OUT/ours-tg-t$t-b$b.json"
  first_token ours "$t" "$b" "$MLLM" run -m "$MODEL" -t "$t" -n 1 --ctx 256 -p "$PROMPT"
}
theirs() {
  local t=$1 b=$2
  "$LBENCH" -m "$MODEL" -t "$t" -p 128,512 -n 0 -r 1 --repack "$REPACK" -o json \
    >"$OUT/theirs-pp-t$t-b$b.json" 2>"$OUT/theirs-pp-t$t-b$b.err"
  /usr/bin/time -v -o "$OUT/theirs-tg-t$t-b$b.time" \
    "$LBENCH" -m "$MODEL" -t "$t" -p 0 -n 128 -d 128 -r 1 --repack "$REPACK" -o json \
    >"$OUT/theirs-tg-t$t-b$b.json" 2>"$OUT/theirs-tg-t$t-b$b.err"
  first_token theirs "$t" "$b" "$LCOMPL" -m "$MODEL" -t "$t" -n 1 -c 256 -p "$PROMPT" \
    -no-cnv --temp 0 "${CREPACK[@]}"
}

ik() {
  local t=$1 b=$2
  "$IK_BENCH" -m "$MODEL" -t "$t" -p 128,512 -n 0 -r 1 -rtr "$IK_RTR" -o json \
    >"$OUT/ik-pp-t$t-b$b.json" 2>"$OUT/ik-pp-t$t-b$b.err"
  /usr/bin/time -v -o "$OUT/ik-tg-t$t-b$b.time" \
    "$IK_BENCH" -m "$MODEL" -t "$t" -p 0 -n 0 -gp 128,128 -r 1 -rtr "$IK_RTR" -o json \
    >"$OUT/ik-tg-t$t-b$b.json" 2>"$OUT/ik-tg-t$t-b$b.err"
}

torch_run() {
  local t=$1 b=$2
  "$TPY" "$REPO/scripts/bench_torch.py" --model "$MODEL" --threads "$t" --prompt 128,512 --gen 0 \
    >"$OUT/torch-pp-t$t-b$b.json" 2>"$OUT/torch-pp-t$t-b$b.err"
  "$TPY" "$REPO/scripts/bench_torch.py" --model "$MODEL" --threads "$t" --prompt 0 --gen 128 --gen-after 128 \
    >"$OUT/torch-tg-t$t-b$b.json" 2>"$OUT/torch-tg-t$t-b$b.err"
}

log "results in $OUT; threads: $THREADS; $REPS repetition blocks; llama.cpp repack=$REPACK; torch=$TORCH"
for ((b = 1; b <= REPS; b++)); do
  for t in $THREADS; do
    log "block $b/$REPS, $t thread(s): mllm-rs"
    ours "$t" "$b"
    log "block $b/$REPS, $t thread(s): llama.cpp"
    theirs "$t" "$b"
    if [ -n "$IK_BENCH" ]; then
      log "block $b/$REPS, $t thread(s): ik_llama.cpp"
      ik "$t" "$b"
    fi
    if [ "$TORCH" = 1 ]; then
      log "block $b/$REPS, $t thread(s): PyTorch"
      torch_run "$t" "$b"
    fi
  done
done

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1);" \
    "$(nproc) cores; mllm-rs $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?');" \
    "llama-cpp-python $VERSION sdist; llama.cpp repack=$REPACK;" \
    "${IK_BENCH:+ik_llama.cpp $(git -C "$(dirname "$IK_BENCH")" rev-parse --short HEAD 2>/dev/null || echo '?') -rtr $IK_RTR;}" \
    "model $(basename "$MODEL");" \
    "load average (1/5/15 min) at start $LOAD_BEFORE, at end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  python3 "$REPO/scripts/bench_vs_llamacpp_table.py" "$OUT"
} | tee "$OUT/table.md"
