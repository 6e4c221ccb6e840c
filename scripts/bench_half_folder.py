#!/usr/bin/env python3
"""16-bit folders as stored against widened to f32: `mllm embed --bench 1,32` on a bf16
copy of all-MiniLM-L6-v2 with a binary from before the native 16-bit path (widened on
load) and one from after, plus the f32 folder on the new binary; the three alternate
within each round (order reversed every other round), 1 and 2 threads. Prints medians of
sentences/s over all passes and the median peak RSS (GNU time) per configuration.

  python3 scripts/bench_half_folder.py ROUNDS
Paths below are those of the run in BENCHMARKS.md ("Native bf16/f16 weights"); the bf16
copy is made with torch: `save_file({k: v.to(torch.bfloat16) ...})` of model.safetensors.
The texts are the 256 sentences of scripts/bench_embed.py's corpus(256), one per line.
"""
import json, subprocess, statistics, sys, re
R = int(sys.argv[1]) if len(sys.argv) > 1 else 3
cfgs = [("before (widened)", "/tmp/mllm-before-bf16", "/tmp/minilm-bf16"),
        ("after (native bf16)", "/tmp/mllm-after-bf16", "/tmp/minilm-bf16"),
        ("after, f32 folder", "/tmp/mllm-after-bf16", "/root/.cache/mllm/all-MiniLM-L6-v2")]
res = {}
for r in range(R):
    order = cfgs if r % 2 == 0 else cfgs[::-1]
    for t in (1, 2):
        for name, binp, model in order:
            p = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb=%M", binp, "embed", "-m", model, "--file", "/tmp/bf16-texts.txt",
                                "--bench", "1,32", "--reps", "3", "-t", str(t)], capture_output=True, text=True, check=True)
            j = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
            rss = int(re.search(r"maxrss_kb=(\d+)", p.stderr).group(1))
            for test in j["tests"]:
                res.setdefault((name, t, test["batch"]), {"s": [], "rss": []})["s"] += test["samples"]
            for b in (1, 32):
                res[(name, t, b)]["rss"].append(rss)
print("| folder / binary | threads | batch | sentences/s (median) | peak RSS MiB (median) |")
print("|---|---:|---:|---:|---:|")
for (name, t, b), v in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
    print(f"| {name} | {t} | {b} | {statistics.median(v['s']):.0f} | {statistics.median(v['rss'])/1024:.0f} |")
print(json.dumps({f"{k[0]}|{k[1]}|{k[2]}": v for k, v in res.items()}))
