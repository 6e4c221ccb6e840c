#!/usr/bin/env python3
"""Write a Hugging Face folder (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, generation_config.json) holding the weights of a LLaMA-family GGUF,
dequantised by the `gguf` package (llama.cpp's own Python reader), not by mllm.

tests/hf_real_folder.rs uses it to run a real model from a folder: SmolLM2-135M-Instruct
Q4_1, whose dequantised weights are exactly what the transformers reference of
tests/fixtures/smollm2-q41-transformers.json computed with, so the folder must give the
same logits as the GGUF.

    python3 scripts/gguf_to_hf_folder.py GGUF OUT_DIR [--dtype f32|bf16] [--venv DIR]

Without `gguf` and `numpy` importable it makes a venv (default ~/.cache/mllm/venv-gguf,
pinned versions below) and runs itself there. OUT_DIR is written as a temporary folder
beside it and renamed into place at the end, so a killed run leaves no half folder.

What a GGUF converter changed is undone: the q/k rows permuted for interleaved RoPE pairs
go back to the halves layout of transformers; a missing output.weight means tied
embeddings. The tokenizer (GPT-2 byte-level BPE, `tokenizer.ggml.model == "gpt2"`) is
rebuilt from the GGUF's tokens, merges and token types, with the pre-tokenizer its
`tokenizer.ggml.pre` names (only "smollm": digits one by one, then byte-level).
"""
import glob
import json
import os
import shutil
import subprocess
import sys

REQUIREMENTS = ["gguf==0.19.0", "numpy==2.4.6"]


def ensure_env(venv):
    """Run on in a venv that has the pinned packages (made or completed when needed)."""
    try:
        import gguf  # noqa: F401
        import numpy  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(venv, "bin", "python")
    if os.environ.get("MLLM_GGUF_TO_HF_IN_VENV"):
        sys.exit(f"{py} still cannot import gguf and numpy")
    ready = os.path.exists(py) and subprocess.run([py, "-c", "import gguf, numpy"], capture_output=True).returncode == 0
    if not ready:
        print(f"installing {' '.join(REQUIREMENTS)} into {venv}", file=sys.stderr)
        if not os.path.exists(py):
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
                       check=True)
    env = dict(os.environ, MLLM_GGUF_TO_HF_IN_VENV="1")
    sys.exit(subprocess.run([py, *sys.argv], env=env).returncode)


def unpermute(w, n_head):
    """Inverse of the converter's q/k permutation: per head, rows were reordered from
    [first half | second half] to interleaved pairs."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_bf16_bits(a):
    """f32 -> bf16 as uint16, rounding to nearest even (NaN stays NaN)."""
    import numpy as np

    bits = a.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(a)
    out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def write_safetensors(path, tensors, dtype):
    """`tensors`: name -> f32 array. The format: an 8-byte little-endian header length,
    a JSON header of dtype, shape and data offsets, then the raw little-endian data."""
    import numpy as np

    blobs, header, offset = [], {}, 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        data = (to_bf16_bits(a) if dtype == "bf16" else a).tobytes()
        header[name] = {"dtype": "BF16" if dtype == "bf16" else "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for b in blobs:
            f.write(b)


LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def tokenizer_json(meta):
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    if meta.get("tokenizer.ggml.model") != "gpt2":
        sys.exit(f"only byte-level BPE tokenizers are converted, not {meta.get('tokenizer.ggml.model')!r}")
    pre = meta.get("tokenizer.ggml.pre")
    if pre != "smollm":
        sys.exit(f"unknown pre-tokenizer {pre!r} (only 'smollm' is converted)")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    # Token type 3 is a control token, 4 a user-defined one: both are added tokens.
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": types[i] == 3}
             for i, t in enumerate(tokens) if types[i] in (3, 4)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]},
        "post_processor": dict(byte_level, trim_offsets=False),
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": meta["tokenizer.ggml.merges"]},
    }


def main():
    args = sys.argv[1:]
    dtype, venv = "f32", os.path.join(os.path.expanduser("~"), ".cache", "mllm", "venv-gguf")
    if "--dtype" in args:
        i = args.index("--dtype")
        dtype = args[i + 1]
        del args[i:i + 2]
    if "--venv" in args:
        i = args.index("--venv")
        venv = args[i + 1]
        del args[i:i + 2]
    if len(args) != 2 or dtype not in ("f32", "bf16"):
        sys.exit(__doc__)
    ensure_env(venv)
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    src, out = args
    r = GGUFReader(src)
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    if meta.get("general.architecture") != "llama":
        sys.exit(f"only LLaMA-family GGUFs are converted, not {meta.get('general.architecture')!r}")
    n_head, n_kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    n_layer = meta["llama.block_count"]

    tensors = {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        name = t.name
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        elif name == "output.weight":
            hf = "lm_head.weight"
        else:
            blk, i, part, kind = name.split(".")
            if blk != "blk" or part not in LAYER_NAMES:
                sys.exit(f"unknown tensor {name}")
            if part == "attn_q":
                w = unpermute(w, n_head)
            elif part == "attn_k":
                w = unpermute(w, n_kv)
            hf = f"model.layers.{i}.{LAYER_NAMES[part]}.{kind}"
        tensors[hf] = w
    tied = "lm_head.weight" not in tensors

    tokens = meta["tokenizer.ggml.tokens"]
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": meta["llama.embedding_length"],
        "intermediate_size": meta["llama.feed_forward_length"],
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": meta.get("llama.rope.dimension_count", meta["llama.embedding_length"] // n_head),
        "hidden_act": "silu",
        "max_position_embeddings": meta["llama.context_length"],
        "rms_norm_eps": meta["llama.attention.layer_norm_rms_epsilon"],
        "rope_theta": meta.get("llama.rope.freq_base", 10000.0),
        "vocab_size": len(tokens),
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "bfloat16" if dtype == "bf16" else "float32",
    }
    tok_config = {
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
        "unk_token": tokens[meta["tokenizer.ggml.unknown_token_id"]] if "tokenizer.ggml.unknown_token_id" in meta else None,
        "pad_token": tokens[meta["tokenizer.ggml.padding_token_id"]] if "tokenizer.ggml.padding_token_id" in meta else None,
        "model_max_length": meta["llama.context_length"],
        "tokenizer_class": "GPT2Tokenizer",
    }
    if "tokenizer.chat_template" in meta:
        tok_config["chat_template"] = meta["tokenizer.chat_template"]

    tmp = out.rstrip("/") + f".tmp-{os.getpid()}"
    # What a killed run left.
    for old in glob.glob(glob.escape(out.rstrip("/")) + ".tmp-*"):
        shutil.rmtree(old, ignore_errors=True)
    os.makedirs(tmp)
    write_safetensors(os.path.join(tmp, "model.safetensors"), tensors, dtype)
    for name, value in [("config.json", config), ("tokenizer.json", tokenizer_json(meta)),
                        ("tokenizer_config.json", tok_config),
                        ("generation_config.json", {"bos_token_id": bos, "eos_token_id": eos})]:
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False, indent=1)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(tmp, out)
    print(f"wrote {out}: {len(tensors)} tensors ({dtype}), tied embeddings: {tied}", file=sys.stderr)


if __name__ == "__main__":
    main()
