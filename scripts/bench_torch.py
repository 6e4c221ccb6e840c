#!/usr/bin/env python3
"""Prompt-processing and generation speed of HF transformers on CPU PyTorch (f32, the GGUF
dequantised on load) for scripts/bench-vs-llamacpp.sh, measured like `mllm bench`:

  ppN : one forward pass over N random prompt tokens (logits of the last position only),
  tgN : N greedy single-token steps with the KV cache, after a prompt of --gen-after tokens
        (the prompt is not timed).

One untimed warm-up per test. Prints `mllm bench -o json`'s shape:
{"tests": [{"test": "pp128", "samples": [tokens/s, ...]}, ...]}

Needs torch, transformers, gguf, accelerate (scripts/golden-requirements.txt); the bench
script installs them into a cached venv.
"""

import argparse
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt", default="128,512", help="prompt lengths, comma separated; 0 to skip")
    ap.add_argument("--gen", type=int, default=0, help="generated tokens for the tg test; 0 to skip")
    ap.add_argument("--gen-after", type=int, default=128)
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    if args.threads < 1 or args.reps < 1:
        sys.exit("--threads and --reps must be at least 1")

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, f = os.path.split(os.path.abspath(args.model))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    tests = []

    def ids(n, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randint(100, vocab, (1, n), generator=g)

    with torch.inference_mode():
        for p in [int(x) for x in args.prompt.split(",") if x.strip() and int(x) > 0]:
            x = ids(p, p)
            samples = []
            for rep in range(args.reps + 1):
                t0 = time.perf_counter()
                model(input_ids=x, use_cache=False, logits_to_keep=1)
                dt = time.perf_counter() - t0
                if rep > 0:
                    samples.append(p / dt)
            tests.append({"test": f"pp{p}", "samples": samples})
        if args.gen > 0:
            prompt = ids(max(args.gen_after, 1), 7)
            samples = []
            for rep in range(args.reps + 1):
                out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
                past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                t0 = time.perf_counter()
                for _ in range(args.gen):
                    out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                    past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                dt = time.perf_counter() - t0
                if rep > 0:
                    samples.append(args.gen / dt)
            label = f"tg{args.gen} @ pp{args.gen_after}" if args.gen_after > 0 else f"tg{args.gen}"
            tests.append({"test": label, "samples": samples})
    print(json.dumps({"engine": "pytorch", "torch": torch.__version__, "threads": args.threads, "tests": tests}))


if __name__ == "__main__":
    main()
