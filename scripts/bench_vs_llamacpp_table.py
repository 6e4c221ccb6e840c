#!/usr/bin/env python3
"""Formats the raw results of scripts/bench-vs-llamacpp.sh as one markdown table.

Reads a results directory (standard library only) and prints to stdout; runs nothing itself.
File names: {ours,theirs,ik,torch}-{pp,tg}-t{T}-b{B}.json, *-tg-*.time (/usr/bin/time -v), *-ft-*.ms.
"torch" files (scripts/bench_torch.py) have the shape of `mllm bench -o json`; "ik" files are
ik_llama.cpp's llama-bench JSON, whose `-gp P,G` entries (G decode steps timed after a P-token
prompt) are our "tgG @ ppP".
"""

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"^(ours|theirs|ik|torch)-(pp|tg|ft)-t(\d+)-b(\d+)\.(json|time|ms)$")


def theirs_label(entry, engine):
    """llama-bench JSON entry -> the label our bench uses for the same measurement."""
    n_prompt, n_gen, depth = entry["n_prompt"], entry["n_gen"], entry.get("n_depth", 0)
    if engine == "ik" and n_prompt > 0 and n_gen > 0:
        return f"tg{n_gen} @ pp{n_prompt}"
    if n_prompt > 0 and n_gen == 0 and depth == 0:
        return f"pp{n_prompt}"
    if n_prompt == 0 and n_gen > 0:
        return f"tg{n_gen} @ pp{depth}" if depth > 0 else f"tg{n_gen}"
    return f"pp{n_prompt}+tg{n_gen} @ d{depth}"


def max_rss_kib(path):
    for line in path.read_text().splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1])
    raise ValueError(f"{path}: no 'Maximum resident set size' line (did /usr/bin/time -v run?)")


def stats(v):
    med = statistics.median(v)
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return med, sd


def fmt(v, digits):
    if not v:
        return "n/a"
    med, sd = stats(v)
    return f"{med:.{digits}f} ± {sd:.{digits}f}"


def ratio(a, b):
    if not a or not b:
        return "n/a"
    return f"{statistics.median(a) / statistics.median(b):.2f}"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: bench_vs_llamacpp_table.py RESULTS_DIR")
    root = Path(sys.argv[1])
    speed = defaultdict(list)  # (engine, test, threads) -> tokens/s samples
    rss = defaultdict(list)  # (engine, threads) -> MiB
    first = defaultdict(list)  # (engine, threads) -> ms
    for path in sorted(root.iterdir()):
        m = NAME.match(path.name)
        if not m:
            continue
        engine, kind, threads, ext = m.group(1), m.group(2), int(m.group(3)), m.group(5)
        if path.stat().st_size == 0:
            print(f"skipping empty {path.name} (run still going or failed)", file=sys.stderr)
            continue
        if ext == "ms":
            first[(engine, threads)].append(float(path.read_text()))
        elif ext == "time":
            rss[(engine, threads)].append(max_rss_kib(path) / 1024)
        elif engine in ("ours", "torch"):
            doc = json.loads(path.read_text())
            for t in doc["tests"]:
                speed[(engine, t["test"], threads)].extend(t["samples"])
        else:
            for entry in json.loads(path.read_text()):
                speed[(engine, theirs_label(entry, engine), threads)].extend(entry["samples_ts"])
    if not speed:
        sys.exit(f"{root}: no results found")

    tests = sorted({k[1] for k in speed}, key=lambda s: (not s.startswith("pp"), len(s), s))
    threads = sorted({k[2] for k in speed})
    torch = any(k[0] == "torch" for k in speed)
    ik = any(k[0] == "ik" for k in speed)
    head = "| test | threads | mllm-rs | llama.cpp | mllm-rs / llama.cpp |"
    rule = "| --- | ---: | ---: | ---: | ---: |"
    if ik:
        head += " ik_llama.cpp | mllm-rs / ik_llama.cpp |"
        rule += " ---: | ---: |"
    if torch:
        head += " PyTorch f32 | mllm-rs / PyTorch |"
        rule += " ---: | ---: |"
    print(head)
    print(rule)
    for test in tests:
        for t in threads:
            a, b = speed.get(("ours", test, t), []), speed.get(("theirs", test, t), [])
            row = f"| {test} (t/s) | {t} | {fmt(a, 2)} | {fmt(b, 2)} | {ratio(a, b)} |"
            if ik:
                c = speed.get(("ik", test, t), [])
                row += f" {fmt(c, 2)} | {ratio(a, c)} |"
            if torch:
                c = speed.get(("torch", test, t), [])
                row += f" {fmt(c, 2)} | {ratio(a, c)} |"
            print(row)
    pad = " | |" if torch else ""
    for t in threads:
        a, b = rss.get(("ours", t), []), rss.get(("theirs", t), [])
        row = f"| peak RSS, tg128 @ pp128 process (MiB) | {t} | {fmt(a, 1)} | {fmt(b, 1)} | {ratio(a, b)} |"
        if ik:
            c = rss.get(("ik", t), [])
            row += f" {fmt(c, 1)} | {ratio(a, c)} |"
        print(row + pad)
    if ik:
        pad = " | |" + pad
    for t in threads:
        a, b = first.get(("ours", t), []), first.get(("theirs", t), [])
        print(f"| first token, whole process (ms) | {t} | {fmt(a, 0)} | {fmt(b, 0)} | {ratio(a, b)} |{pad}")
    n = max((len(v) for v in speed.values()), default=0)
    print()
    print(f"median ± sd over {n} samples per cell; t/s: higher is better, RSS and ms: lower is better.")


if __name__ == "__main__":
    main()
