#!/usr/bin/env python3
"""Reference sentence embeddings of all-MiniLM-L6-v2 for tests/minilm.rs.

HF transformers on CPU PyTorch (f32) computes them the way sentence-transformers defines
the model: tokens truncated at max_seq_length (256, special tokens included), mean pooling
over the attention mask, L2 normalisation. Writes tests/fixtures/minilm-reference.json:
per text its token ids and the 384-d vector.

  /work/venv-ref/bin/python scripts/golden_minilm.py --model ~/.cache/mllm/all-MiniLM-L6-v2

Needs torch and transformers (scripts/golden-requirements.txt); kept out of CI, which uses
the committed JSON. If sentence-transformers is installed, its own output is compared too.
"""

import argparse
import json
import os

LONG = " ".join(
    f"Sentence {i} of a long document about rivers, mountains and the weather in spring." for i in range(40)
)

CORPUS = [
    "",
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "I love pizza 🍕🍕 and sunshine ☀️😀 #happy",
    "Café crème brûlée à la française, naïve façade, Ångström, São Paulo",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "我喜欢在公园里散步，天气很好。",
    "Москва — столица России.",
    "اللغة العربية جميلة جدا",
    "東京は日本の首都です。",
    "  fn main() {\n\tprintln!(\"hi\");\n}  ",
    "COVID-19 vaccines were 95% effective in 2020-12 trials; see https://example.org/a?b=c.",
    LONG,
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the sentence-transformers folder")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "minilm-reference.json"))
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    max_len = json.load(open(os.path.join(args.model, "sentence_bert_config.json")))["max_seq_length"]
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model, dtype=torch.float32).eval()
    cases = []
    with torch.inference_mode():
        for text in CORPUS:
            enc = tok(text, truncation=True, max_length=max_len, padding=False, return_tensors="pt")
            out = model(**enc).last_hidden_state[0]
            mask = enc["attention_mask"][0].unsqueeze(-1).float()
            v = (out * mask).sum(0) / mask.sum(0).clamp(min=1e-9)
            v = torch.nn.functional.normalize(v, p=2, dim=0)
            cases.append({
                "text": text,
                "ids": enc["input_ids"][0].tolist(),
                "embedding": [float(f"{x:.7g}") for x in v.tolist()],
            })
    assert len(cases[-1]["ids"]) == max_len, "the long text must be truncated"
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(args.model, device="cpu")
        ref = st.encode(CORPUS, normalize_embeddings=False, convert_to_tensor=True)
        ours = torch.tensor([c["embedding"] for c in cases])
        cos = torch.nn.functional.cosine_similarity(ref, ours).min().item()
        print(f"sentence-transformers {st.__class__.__module__}: worst cosine to this reference {cos:.8f}")
    except ImportError:
        print("(sentence-transformers not installed: not compared)")
    doc = {
        "about": "all-MiniLM-L6-v2 reference embeddings: scripts/golden_minilm.py "
        f"(transformers {transformers.__version__}, torch {torch.__version__}, f32 CPU); mean pooling over the "
        f"attention mask, L2 norm, truncation at {max_len} tokens",
        "max_seq_length": max_len,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
