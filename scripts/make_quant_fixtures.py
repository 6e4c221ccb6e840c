#!/usr/bin/env python3
"""Regenerate tests/fixtures/quant/: random GGML blocks dequantised, and random f32
rows quantised, by the `gguf` Python package (an implementation independent of ours).

Pinned: gguf==0.19.0 with numpy 2.x. Run it in a throw-away venv outside the repo:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install gguf==0.19.0 numpy
    /tmp/venv/bin/python scripts/make_quant_fixtures.py

Files written (all little-endian, no headers):
    <fmt>.blocks     raw blocks of <fmt> (random bytes, finite f16 scales), every format
    <fmt>.f32        gguf.quants.dequantize of <fmt>.blocks
    quant_<fmt>.f32  random f32 input rows (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
    quant_<fmt>.blocks  gguf.quants.quantize of quant_<fmt>.f32 (GGML's reference rounding)
"""

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "quant"

# format -> (type, block count, byte offsets of the f16 fields in one block)
DEQUANT = {
    "q4_0": (T.Q4_0, 48, [0]),
    "q4_1": (T.Q4_1, 48, [0, 2]),
    "q8_0": (T.Q8_0, 48, [0]),
    "q4_k": (T.Q4_K, 8, [0, 2]),
    "q5_k": (T.Q5_K, 8, [0, 2]),
    "q6_k": (T.Q6_K, 8, [208]),
}
QUANT = {"q4_0": T.Q4_0, "q4_1": T.Q4_1, "q8_0": T.Q8_0}

# Formats added later draw from their own generator, so that adding them leaves the
# fixtures above byte for byte unchanged.
LATER_SEED = 20250101
LATER_DEQUANT = {
    "q5_0": (T.Q5_0, 48, [0]),
    "q5_1": (T.Q5_1, 48, [0, 2]),
}
LATER_QUANT = {"q5_0": T.Q5_0, "q5_1": T.Q5_1}


def random_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mostly ordinary scales, plus zero, negative, subnormal and the largest finite f16."""
    v = (rng.standard_normal(n) * 0.05).astype(np.float16)
    specials = np.array([0.0, -0.0, 6e-8, -3e-5, 65504.0, -1.0, 1.0], dtype=np.float16)
    k = min(n, len(specials))
    v[rng.choice(n, size=k, replace=False)] = specials[:k]
    return v


def make_dequant(rng: np.random.Generator, formats: dict) -> None:
    for name, (qtype, n_blocks, f16_offsets) in formats.items():
        _, type_size = quants.GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
        for off in f16_offsets:
            blocks[:, off : off + 2] = random_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        flat = blocks.reshape(-1)
        values = quants.dequantize(flat, qtype).astype("<f4")
        assert np.all(np.isfinite(values)), name
        flat.tofile(OUT / f"{name}.blocks")
        values.reshape(-1).tofile(OUT / f"{name}.f32")


def make_quant(rng: np.random.Generator, formats: dict) -> None:
    for name, qtype in formats.items():
        rows = []
        # blocks at many scales, an all-zero block, a constant block, one outlier,
        # exact half-steps, and a block whose largest magnitude is negative
        for _ in range(40):
            rows.append(rng.standard_normal(32) * 10.0 ** rng.uniform(-4, 3))
        rows.append(np.zeros(32))
        rows.append(np.full(32, 0.375))
        outlier = rng.standard_normal(32) * 0.01
        outlier[17] = 40.0
        rows.append(outlier)
        rows.append(np.arange(32) * 0.5 - 8.0)
        neg = rng.uniform(-1, 1, 32)
        neg[3] = -7.0
        rows.append(neg)
        x = np.concatenate(rows).astype(np.float32)
        q = quants.quantize(x.reshape(1, -1), qtype).reshape(-1).astype(np.uint8)
        x.astype("<f4").tofile(OUT / f"quant_{name}.f32")
        q.tofile(OUT / f"quant_{name}.blocks")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240611)
    make_dequant(rng, DEQUANT)
    make_quant(rng, QUANT)
    later = np.random.default_rng(LATER_SEED)
    make_dequant(later, LATER_DEQUANT)
    make_quant(later, LATER_QUANT)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
