#!/usr/bin/env python3
"""Regenerate tests/fixtures/gemma3-q4km-transformers.json with an independent
implementation: HF transformers on CPU PyTorch, which dequantises the GGUF to f32.

    python3 -m venv /tmp/golden && /tmp/golden/bin/pip install -r scripts/golden-requirements.txt
    /tmp/golden/bin/python scripts/golden_gemma3.py ~/.cache/mllm/gemma-3-270m-q4_k_m.gguf

Made with transformers 5.24.0, torch 2.15.0, gguf 0.19.0, tokenizers 0.23.3, numpy 2.4.6
(sentencepiece/protobuf are not needed: transformers builds the tokenizer from the GGUF
vocabulary); about 10 minutes on 2 cores, most of it loading (dequantising) the GGUF.

The model is Gemma 3 270M (the base model, not instruction-tuned; Gemma Terms of Use),
gemma-3-270m-q4_k_m.gguf, SHA-256 a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818.
Before writing anything the script checks that transformers loaded Gemma3ForCausalLM with the
file's configuration (18 layers, hidden 640, 4 heads / 1 KV head of 256, sliding window 512 on
5 of every 6 layers, RoPE base 1e6 global / 1e4 local, query_pre_attn_scalar 256, vocabulary
262144, tied output), that every tensor equals the GGUF's dequantised tensor, and that every
norm weight is the GGUF's minus 1 (llama.cpp's converter stores Gemma's (1 + w) gains with
the +1 added; transformers' Gemma3RMSNorm multiplies by (1 + w) and subtracts it on load).

Writes:
  gguf_tokenizer: the GGUF facts a tokenizer needs (model, add_bos, special ids, token types
                  with counts, the user-defined tokens verbatim, the ranges of the others).
  tokenizer:      text -> ids (add_special_tokens=False); a few cases also have ids_with_bos
                  (the tokenizer's default, which prepends <bos>).
  generation:     3 raw prompts (base model, no chat template), with <bos> as the tokenizer
                  adds it: prompt ids and 32 greedy steps (chosen id, top-10 [id, logit] pairs,
                  margin top1 - top2); generation does not stop at EOS.
  teacher_forced: one ~640-token text (with <bos>) so that the window-512 layers matter: at
                  every 25th position, every position 505..520 and the last 10 positions that
                  have a next token, the top-10 [id, logit] pairs, the logit and log-softmax
                  of the actual next token.
  checks:         how sensitive the teacher-forced logits are to the sliding window (the same
                  model with the window disabled, or 511 / 513 instead of 512) and the
                  eager-vs-SDPA attention difference.
Floats are rounded to 5 decimals.
"""
import hashlib
import importlib.metadata
import json
import os
import sys

import numpy as np
import tokenizers
import torch
import transformers
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import AutoModelForCausalLM, AutoTokenizer

SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PLAIN = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
STEPS = 32
TOP = 10

TOKENIZER_CASES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " one leading space",
    "trailing space ",
    "   three leading, two trailing  ",
    "runs: a  b   c    d     e",
    "tab\there\t\tdouble tab\t",
    "line one\nline two\n\nthree newlines\n\n\nfour\n\n\n\nend\n",
    "O\u00f9 est la biblioth\u00e8que ? \u00c9l\u00e8ve, gar\u00e7on, c\u0153ur, na\u00efve, d\u00e9j\u00e0-vu.",
    "Gr\u00f6\u00dfenwahn: Fu\u00dfg\u00e4nger\u00fcberg\u00e4nge \u00fcber Fl\u00fcsse, STRASSE vs. Stra\u00dfe.",
    "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5, \u03c4\u03b9 \u03ba\u03ac\u03bd\u03b5\u03b9\u03c2;",
    "\u0421\u044a\u0435\u0448\u044c \u0436\u0435 \u0435\u0449\u0451 \u044d\u0442\u0438\u0445 \u043c\u044f\u0433\u043a\u0438\u0445 "
    "\u0444\u0440\u0430\u043d\u0446\u0443\u0437\u0441\u043a\u0438\u0445 \u0431\u0443\u043b\u043e\u043a.",
    "\u6211\u80fd\u541e\u4e0b\u73bb\u7483\u800c\u4e0d\u4f24\u8eab\u4f53\u3002\u673a\u5668\u5b66\u4e60\u5f88\u6709\u8da3\uff01",
    "\u79c1\u306f\u30ac\u30e9\u30b9\u3092\u98df\u3079\u3089\u308c\u307e\u3059\u3002\u30ab\u30bf\u30ab\u30ca\u3068"
    "\u3072\u3089\u304c\u306a\u3001\uff8a\uff9d\uff76\uff78\u3082\u3002",
    "\u0623\u0646\u0627 \u0642\u0627\u062f\u0631 \u0639\u0644\u0649 \u0623\u0643\u0644 \u0627\u0644\u0632\u062c\u0627\u062c.",
    "\u092e\u0948\u0902 \u0915\u093e\u0901\u091a \u0916\u093e \u0938\u0915\u0924\u093e \u0939\u0942\u0901\u0964",
    "I \U0001f980 Rust \U0001f680\U0001f525 family \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 "
    "flags \U0001f1eb\U0001f1f7\U0001f1ef\U0001f1f5 \U0001f3f3\ufe0f\u200d\U0001f308 thumbs \U0001f44d\U0001f3fd",
    "fn main() {\n    let v = vec![1, 2, 3];\n    for x in &v {\n        println!(\"{x}\");\n    }\n}\n",
    "def f(x):\n\tif x:\n\t\treturn x ** 2\n  # two-space comment\n    return None",
    "pi = 3.14159265358979323846, n = 1234567890123456789012345, 1,000,000.00 on 2024-06-01",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<pad>more<eos> <unk> <mask> [multimodal] <table><tr><td>x</td></tr></table>",
    "rare \U00020000\U00020001\U0002a6a5 bell\x07 esc\x1b[0m del\x7f nul\x00 pua\ue000 max\U0010fffd",
    "zero\u200bwidth \ufeffbom, ligature \ufb01, decomposed e\u0301, Angstrom \u212b, nbsp\u00a0here",
    "don't won't I'll https://example.com/a_b?q=1&r=2#frag",
    "\n",
    "   ",
    "",
]
WITH_BOS = {"Hello world", "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n", ""}

# Written for this fixture (no third-party text); ~640 tokens with <bos>.
LONG_TEXT = """The lighthouse at Carrow Point had been dark for eleven years when Maren Holt rowed out to it on a grey morning in early April. The sea was calm, the colour of old pewter, and the only sound was the creak of the oars and the cry of a gull somewhere above the fog. She had inherited the building from an uncle she had met twice, a quiet man who kept bees and wrote long letters about the weather, and she did not yet know whether she meant to keep it or sell it.

The door at the base of the tower was swollen with damp and took three hard shoves before it gave. Inside, the air smelled of salt, rust and candle wax. A spiral stair of cast iron climbed into the gloom, and on every landing there was a small window, its glass crusted white. On the third landing she found a table, a chair and a stack of notebooks tied with string. The first page of the top notebook was dated the fourteenth of March, and the handwriting was careful and small.

"Wind from the south-west, force four," it read. "Barometer falling. Saw the grey seal again near the northern rocks; she has a pup now. The lamp mechanism needs oil before the end of the month, though nobody will ever light it again." Maren turned the pages slowly. Her uncle had written something every single day: the tides, the birds, the ships that passed on the horizon, the number of jars of honey he had sold at the market in the village. Between the entries about weather there were small drawings of shells, of clouds, of the gears inside the great lamp.

By noon the fog had lifted and the sun came through the high windows in long pale bars. Maren climbed the last flight of stairs to the lamp room. The lens was enormous, taller than she was, built from rings of thick glass that caught the light and broke it into a hundred small rainbows across the floor. She stood there for a long time, watching the colours move as the clouds drifted past.

In the evening she rowed back to the harbour with the notebooks wrapped in oilcloth on the seat beside her. The old woman who ran the chandlery asked her what she had decided. Maren said she did not know yet, but that she would be coming back tomorrow, and the day after that, and that she would need a good deal of lamp oil, a new pane of glass for the third landing, and perhaps, if anyone in the village still kept them, a hive of bees.

The old woman smiled and wrote the order down in a ledger. "Your uncle always said the light would come back," she said. "He just never said who would bring it."

That night Maren sat at the kitchen table of her rented room and read the notebooks by the light of a single lamp. The last entry was short. "Calm sea, clear sky, the seal and her pup asleep on the rocks. Someone ought to see this place in summer." She closed the book, put out the lamp, and listened to the waves until she fell asleep."""

TOKEN_TYPES = {1: "normal", 2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}
# GGUF tensor name -> transformers parameter name (per layer).
LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
}


def r5(x):
    return round(float(x), 5)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def ranges(ids):
    """[[first, last], ...] runs of consecutive ids."""
    out = []
    for i in ids:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def gguf_tokenizer_facts(reader):
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = np.array(field(reader, "tokenizer.ggml.token_type"))
    facts = {
        "model": field(reader, "tokenizer.ggml.model"),
        "pre": field(reader, "tokenizer.ggml.pre"),
        "vocab_size": len(tokens),
        "add_bos": field(reader, "tokenizer.ggml.add_bos_token"),
        "add_eos": field(reader, "tokenizer.ggml.add_eos_token"),
        "add_space_prefix": field(reader, "tokenizer.ggml.add_space_prefix"),
        "has_merges": "tokenizer.ggml.merges" in reader.fields,
        "has_chat_template": "tokenizer.chat_template" in reader.fields,
    }
    for name in ("bos", "eos", "unknown", "padding"):
        facts[f"{name}_id"] = field(reader, f"tokenizer.ggml.{name}_token_id")
    facts["token_types"] = {}
    for t in sorted(set(types.tolist())):
        ids = np.nonzero(types == t)[0].tolist()
        entry = {"type": t, "count": len(ids), "id_ranges": ranges(ids)}
        if TOKEN_TYPES.get(t) != "normal":
            entry["examples"] = [[i, tokens[i]] for i in ids[:3] + ids[-2:]]
        if TOKEN_TYPES.get(t) == "user_defined":
            entry["tokens"] = [[i, tokens[i]] for i in ids]
        facts["token_types"][TOKEN_TYPES.get(t, str(t))] = entry
    return facts


def check_model(model, reader):
    """The class, the config against the file, and every weight against the GGUF's."""
    c = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM", type(model)
    g = lambda k: field(reader, f"gemma3.{k}")  # noqa: E731
    want = dict(
        num_hidden_layers=(18, g("block_count")), hidden_size=(640, g("embedding_length")),
        intermediate_size=(2048, g("feed_forward_length")), num_attention_heads=(4, g("attention.head_count")),
        num_key_value_heads=(1, g("attention.head_count_kv")), head_dim=(256, g("attention.key_length")),
        sliding_window=(512, g("attention.sliding_window")), vocab_size=(262144, None),
        query_pre_attn_scalar=(256, None),
    )
    for k, (v, from_file) in want.items():
        assert getattr(c, k) == v and from_file in (None, v), (k, getattr(c, k), v, from_file)
    assert abs(c.rms_norm_eps - g("attention.layer_norm_rms_epsilon")) < 1e-12
    assert c.layer_types == ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)]
    rp = c.rope_parameters
    assert rp["full_attention"]["rope_theta"] == g("rope.freq_base") == 1e6, rp
    assert rp["sliding_attention"]["rope_theta"] == 1e4, rp
    assert all(p["rope_type"] == "default" for p in rp.values()), rp
    assert c.final_logit_softcapping is None and c.attn_logit_softcapping is None
    assert c.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert c.hidden_activation == "gelu_pytorch_tanh"

    sd = model.state_dict()
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    for i in range(c.num_hidden_layers):
        for a, b in LAYER_TENSORS.items():
            names[f"blk.{i}.{a}.weight"] = f"model.layers.{i}.{b}.weight"
    assert sorted(names) == sorted(t.name for t in reader.tensors), "unexpected GGUF tensors"
    norms = 0
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(sd[names[t.name]].shape)
        ours = sd[names[t.name]].numpy()
        if t.name.endswith("norm.weight"):
            assert np.array_equal(ours, w - 1), f"{t.name}: not the GGUF's weight minus 1"
            norms += 1
        else:
            assert np.array_equal(ours, w), f"{t.name}: differs from the dequantised GGUF tensor"
    quant = sorted({t.tensor_type.name for t in reader.tensors})
    return {
        "class": type(model).__name__,
        "model_type": c.model_type,
        "attn_implementation": c._attn_implementation,
        **{k: getattr(c, k) for k in want},
        "rms_norm_eps": c.rms_norm_eps,
        "layer_types": c.layer_types,
        "rope_theta": {k: v["rope_theta"] for k, v in rp.items()},
        "hidden_activation": c.hidden_activation,
        "tie_word_embeddings": c.tie_word_embeddings,
        "final_logit_softcapping": c.final_logit_softcapping,
        "embed_scale": r5(model.model.embed_tokens.embed_scale),
        "norm_weights": f"all {norms} norm weights equal the GGUF's minus 1 (the file stores 1 + w; "
        "transformers' Gemma3RMSNorm multiplies by 1 + w)",
        "other_weights": f"equal to the GGUF tensors dequantised by gguf-py ({', '.join(quant)})",
    }


def top(logits):
    vals, idx = torch.topk(logits, TOP)
    return [[int(i), r5(v)] for i, v in zip(idx, vals)], vals


def main(gguf_path, out_path):
    d, f = os.path.split(os.path.abspath(gguf_path))
    digest = sha256(gguf_path)
    if digest != SHA256:
        print(f"warning: {f} has SHA-256 {digest}, not the expected {SHA256}", file=sys.stderr)
    reader = GGUFReader(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    config = check_model(model, reader)
    torch.set_grad_enabled(False)

    facts = gguf_tokenizer_facts(reader)
    facts["transformers_tokenizer"] = type(tok).__name__
    assert tok.bos_token_id == facts["bos_id"] and tok.eos_token_id == facts["eos_id"]
    assert tok.unk_token_id == facts["unknown_id"] and tok.pad_token_id == facts["padding_id"]

    cases = []
    for t in TOKENIZER_CASES:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        case = {"text": t, "ids": ids}
        if t in WITH_BOS:
            case["ids_with_bos"] = tok(t)["input_ids"]
            assert case["ids_with_bos"] == [facts["bos_id"]] + ids
        decoded = tok.decode(ids)
        if decoded != t:
            case["decoded"] = decoded
            print(f"note: {t!r} decodes to {decoded!r}", file=sys.stderr)
        cases.append(case)

    def run(prompt):
        ids = tok(prompt)["input_ids"]  # with <bos>, as the tokenizer adds it by default
        assert ids[0] == facts["bos_id"]
        cur = torch.tensor([ids])
        steps = []
        for _ in range(STEPS):
            logits = model(cur, logits_to_keep=1).logits[0, -1]
            pairs, vals = top(logits)
            nxt = pairs[0][0]
            steps.append({"next_id": nxt, "top10": pairs, "margin": r5(vals[0] - vals[1])})
            cur = torch.cat([cur, torch.tensor([[nxt]])], dim=1)
        return {"kind": "plain", "prompt": prompt, "text": prompt, "prompt_ids": ids, "steps": steps}

    gens = [run(p) for p in PLAIN]

    ids = tok(LONG_TEXT)["input_ids"]
    n = len(ids)
    assert n > 600, n
    positions = sorted(set(range(0, n - 1, 25)) | set(range(505, 521)) | set(range(n - 11, n - 1)))
    sel = torch.tensor(positions)
    x = torch.tensor([ids])

    def logits_at(m):
        return m(x, logits_to_keep=sel).logits[0]

    logits = logits_at(model)
    logprobs = torch.log_softmax(logits, dim=-1)
    tf = []
    for row, p in enumerate(positions):
        pairs, _ = top(logits[row])
        nxt = ids[p + 1]
        tf.append({"pos": p, "next_id": nxt, "next_logit": r5(logits[row, nxt]),
                   "next_logprob": r5(logprobs[row, nxt]), "top10": pairs})

    # How much the window matters: the same model with the window disabled.
    before = [i for i, p in enumerate(positions) if p < 512]
    after = [i for i, p in enumerate(positions) if p >= 512]
    def with_window(w):
        model.config.sliding_window = w
        try:
            return logits_at(model)
        finally:
            model.config.sliding_window = 512

    nowin = with_window(1 << 20)
    off_by_one = {w: (with_window(w) - logits).abs().amax(dim=-1) for w in (511, 513)}
    diff = (nowin - logits).abs().amax(dim=-1)
    flips = [positions[i] for i in after if int(nowin[i].argmax()) != int(logits[i].argmax())]
    # Attention implementation: eager against the default (SDPA).
    model.set_attn_implementation("eager")
    eager = logits_at(model)
    model.set_attn_implementation(config["attn_implementation"])
    assert torch.equal(logits_at(model), logits), "the teacher-forced logits are not reproducible"
    checks = {
        "sliding_window_disabled": {
            "max_abs_logit_diff_pos_lt_512": r5(diff[before].max()),
            "max_abs_logit_diff_pos_ge_512": r5(diff[after].max()),
            "positions_ge_512_whose_top1_changes": flips,
            "max_abs_logit_diff_by_pos": [[p, r5(diff[i])] for i, p in enumerate(positions) if p >= 505],
        },
        "window_off_by_one": {  # max |logit diff| per position with window 511 or 513 instead of 512
            f"window_{w}": [[p, r5(dw[i])] for i, p in enumerate(positions) if p >= 505 and dw[i] > 0]
            for w, dw in off_by_one.items()
        },
        "eager_vs_sdpa_max_abs_logit_diff": r5((eager - logits).abs().max()),
    }

    out = {
        "made_with": f"transformers {transformers.__version__}, torch {torch.__version__}, gguf {importlib.metadata.version('gguf')}, "
        f"tokenizers {tokenizers.__version__}, GGUF dequantised to f32, {config['attn_implementation']} attention, "
        "greedy = argmax, <bos> added as the tokenizer does by default (the GGUF says add_bos_token = true) "
        "except in tokenizer.ids, generation does not stop at EOS",
        "command": f"python scripts/golden_gemma3.py gemma-3-270m-q4_k_m.gguf {os.path.relpath(out_path)}",
        "model": f"{f} (SHA-256 {digest}), Gemma 3 270M base model, Gemma Terms of Use",
        "config": config,
        "gguf_tokenizer": facts,
        "tokenizer": cases,
        "generation": gens,
        "teacher_forced": {"text": LONG_TEXT, "ids": ids, "positions": tf},
        "checks": checks,
    }
    with open(out_path, "w") as fh:
        json.dump(out, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    print(json.dumps({"tokens": n, "checks": checks,
                      "min_margins": sorted(s["margin"] for g in gens for s in g["steps"])[:5]}), file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/gemma3-q4km-transformers.json")
