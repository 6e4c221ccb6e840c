#!/usr/bin/env python3
"""SmolLM2-135M-Instruct from a Hugging Face folder, each way it can run, against the
GGUF it was made from: `mllm bench` on the Q4_1 GGUF, the f32 and bf16 folders of
scripts/gguf_to_hf_folder.py as stored, and the f32 folder with --quantize q8_0, q4_k and
q4_0. The configurations alternate within each round (order reversed every other round);
prints the median tokens/s of every sample of each, and the load time and peak RSS.

  python3 scripts/bench_real_folder.py [ROUNDS] [MLLM]
Folders: ~/.cache/mllm/hf-from-gguf-{f32,bf16} (tests/golden.rs makes them).
"""
import json, os, statistics, subprocess, sys

R = int(sys.argv[1]) if len(sys.argv) > 1 else 3
MLLM = sys.argv[2] if len(sys.argv) > 2 else "target/release/mllm"
C = os.path.expanduser("~/.cache/mllm")
cfgs = [("GGUF Q4_1", [f"{C}/SmolLM2-135M-Instruct.Q4_1.gguf"]),
        ("folder f32", [f"{C}/hf-from-gguf-f32"]),
        ("folder bf16", [f"{C}/hf-from-gguf-bf16"]),
        ("folder f32 --quantize q8_0", [f"{C}/hf-from-gguf-f32", "--quantize", "q8_0"]),
        ("folder f32 --quantize q4_k", [f"{C}/hf-from-gguf-f32", "--quantize", "q4_k"]),
        ("folder f32 --quantize q4_0", [f"{C}/hf-from-gguf-f32", "--quantize", "q4_0"])]
res = {}
for r in range(R):
    for t in (1, 2):
        for name, args in (cfgs if r % 2 == 0 else cfgs[::-1]):
            p = subprocess.run([MLLM, "bench", "-m", *args, "-t", str(t), "-p", "128", "-n", "64", "-r", "3", "-o", "json"],
                               capture_output=True, text=True, check=True)
            j = json.loads(p.stdout.strip().splitlines()[-1])
            d = res.setdefault((name, t), {"load": [], "rss": []})
            d["load"].append(j["load_ms"])
            d["rss"].append(j["peak_rss_bytes"])
            for test in j["tests"]:
                d.setdefault(test["test"], []).extend(test["samples"])
print("| model | threads | pp128 t/s | tg64 t/s | load ms | peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|")
for t in (1, 2):
    for name, _ in cfgs:
        d = res[(name, t)]
        tg = next(k for k in d if k.startswith("tg"))
        print(f"| {name} | {t} | {statistics.median(d['pp128']):.0f} | {statistics.median(d[tg]):.1f} | "
              f"{statistics.median(d['load']):.0f} | {statistics.median(d['rss'])/2**20:.0f} |")
