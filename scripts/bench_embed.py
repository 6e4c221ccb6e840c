#!/usr/bin/env python3
"""Sentence embedding speed: `mllm embed --bench` against sentence-transformers on CPU
PyTorch (f32), same machine, same texts, same batch sizes and thread counts, the two
engines alternating within each round so that a noisy machine hits both alike.

  /work/venv-ref/bin/python scripts/bench_embed.py --mllm target/release/mllm \
      --model ~/.cache/mllm/all-MiniLM-L6-v2 --threads 1,2 --batch 1,32 --rounds 3

Each engine embeds the same N texts (English sentences of 10-30 words, made here with a
fixed seed) in calls of B texts (tokenizing included), one untimed warm-up then --reps
timed passes per round; sentences/s per pass. Prints a Markdown table of medians over all
passes and the mllm/PyTorch ratio. Needs torch and sentence-transformers (not in CI).
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time


def corpus(n):
    r = random.Random(0)
    subj = ["The cat", "A young woman", "My neighbour's dog", "The committee", "An old fisherman",
            "The new database server", "Two children", "The orchestra", "A startup in Berlin", "The river"]
    verb = ["quietly watched", "rapidly crossed", "carefully reviewed", "loudly celebrated", "slowly repaired",
            "eagerly explored", "politely declined", "suddenly remembered"]
    obj = ["the bridge near the station", "a long report about climate policy", "the broken fence",
           "an invitation to the annual conference", "the results of the experiment", "a small boat",
           "the ancient map of the city", "three proposals for the budget"]
    tail = ["before sunrise.", "during the storm, while everyone else was asleep.", "and then went home.",
            "because nobody else would do it.", "for the second time this week, despite the warnings from the manager.", "."]
    return [f"{r.choice(subj)} {r.choice(verb)} {r.choice(obj)} {r.choice(tail)}" for _ in range(n)]


def torch_worker(args):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads_one)
    texts = open(args.texts, encoding="utf-8").read().split("\n")[:-1]
    model = SentenceTransformer(args.model, device="cpu")
    tests = []
    with torch.inference_mode():
        for b in [int(x) for x in args.batch.split(",")]:
            samples = []
            for rep in range(args.reps + 1):
                t0 = time.perf_counter()
                for i in range(0, len(texts), b):
                    model.encode(texts[i:i + b], batch_size=b, convert_to_numpy=True)
                dt = time.perf_counter() - t0
                if rep > 0:
                    samples.append(len(texts) / dt)
            tests.append({"batch": b, "samples": samples})
    print(json.dumps({"engine": "torch", "threads": args.threads_one, "tests": tests,
                      "torch": torch.__version__}))


def run_json(cmd):
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mllm", default="target/release/mllm")
    ap.add_argument("--model", required=True, help="the sentence-transformers folder (mllm pull minilm prints it)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--texts-n", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batching", default="packed", help="mllm's --batching")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads-one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--texts", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)

    fd, path = tempfile.mkstemp(suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(corpus(args.texts_n)) + "\n")
    samples = {}
    try:
        for rnd in range(args.rounds):
            for t in [int(x) for x in args.threads.split(",")]:
                order = ["mllm", "torch"] if rnd % 2 == 0 else ["torch", "mllm"]
                for engine in order:
                    if engine == "mllm":
                        res = run_json([args.mllm, "embed", "-m", args.model, "-f", path, "--bench", args.batch,
                                        "--reps", str(args.reps), "-t", str(t), "--batching", args.batching])
                    else:
                        res = run_json([sys.executable, __file__, "--torch-worker", "--model", args.model,
                                        "--threads-one", str(t), "--texts", path, "--batch", args.batch,
                                        "--reps", str(args.reps)])
                    for test in res["tests"]:
                        samples.setdefault((engine, t, test["batch"]), []).extend(test["samples"])
                    print(f"round {rnd + 1} {engine} t={t}: "
                          + ", ".join(f"b{x['batch']} {statistics.median(x['samples']):.1f}/s" for x in res["tests"]),
                          file=sys.stderr)
    finally:
        os.unlink(path)
    print(f"\n{args.texts_n} texts, {args.rounds} rounds x {args.reps} passes, mllm --batching {args.batching}, "
          f"{platform.processor() or platform.machine()}\n")
    print("| threads | batch | mllm sentences/s (median) | PyTorch sentences/s (median) | mllm / PyTorch |")
    print("|---:|---:|---:|---:|---:|")
    for t in [int(x) for x in args.threads.split(",")]:
        for b in [int(x) for x in args.batch.split(",")]:
            m = statistics.median(samples[("mllm", t, b)])
            p = statistics.median(samples[("torch", t, b)])
            print(f"| {t} | {b} | {m:.1f} | {p:.1f} | {m / p:.2f}x |")


if __name__ == "__main__":
    main()
