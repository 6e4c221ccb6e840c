#!/usr/bin/env python3
"""Reference figures for `mllm fidelity --reference`: HF transformers on CPU PyTorch, f32,
the GGUF dequantised on load, over every position of a set of texts.

    python3 -m venv ~/.cache/mllm/venv-torch
    ~/.cache/mllm/venv-torch/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu \\
        -r scripts/golden-requirements.txt
    ~/.cache/mllm/venv-torch/bin/python scripts/fidelity_reference.py \\
        ~/.cache/mllm/SmolLM2-135M-Instruct.Q4_1.gguf mllm-cli/src/fidelity_texts.txt /tmp/fidelity-ref.json
    mllm fidelity --reference /tmp/fidelity-ref.json          # the default precision
    mllm fidelity --reference /tmp/fidelity-ref.json --fast   # the 8-bit path

Texts are separated by lines holding only `---` (the format of `mllm fidelity --texts`).
For each text: its token ids (no BOS; control tokens such as <|im_start|> as the
tokenizer parses them) and, for each position but the last, the log-probability of the
token that follows, the top token, the margin between the two largest logits and the 20
largest [id, logit] pairs. Kept out of CI: not a test fixture.
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

TOP = 20


def split_texts(all_text):
    texts, cur = [], []
    for line in all_text.splitlines(keepends=True):
        if line.rstrip("\r\n") == "---":
            texts.append("".join(cur))
            cur = []
        else:
            cur.append(line)
    texts.append("".join(cur))
    return [t.strip("\r\n") for t in texts if t.strip("\r\n")]


def main(gguf_path, texts_path, out_path):
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    with open(texts_path, encoding="utf-8") as fh:
        texts = split_texts(fh.read())
    out_texts = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        positions = []
        for i in range(len(ids) - 1):
            vals, idx = torch.topk(logits[i], TOP)
            positions.append({
                "logprob": float(logp[i, ids[i + 1]]),
                "top": int(idx[0]),
                "margin": float(vals[0] - vals[1]),
                "top_logits": [[int(j), float(v)] for j, v in zip(idx, vals)],
            })
        out_texts.append({"text": text, "ids": ids, "positions": positions})
    out = {
        "made_with": f"transformers {transformers.__version__}, torch {torch.__version__}, f32 ({f})",
        "texts": out_texts,
    }
    with open(out_path, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
