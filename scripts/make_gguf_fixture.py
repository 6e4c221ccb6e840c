#!/usr/bin/env python3
"""Regenerate tests/fixtures/gguf/small.gguf and small.json: a small GGUF v3 file written
by the `gguf` Python package's GGUFWriter (independent of our reader), and what it holds.

Pinned: gguf==0.19.0 with numpy 2.x, in a throw-away venv outside the repo:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install gguf==0.19.0 numpy
    /tmp/venv/bin/python scripts/make_gguf_fixture.py

small.json lists every metadata key with its GGUF value type and value, and every
tensor with its row-major dims, GGML type name and values (dequantised by gguf.quants).
"""

import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType as VT, GGUFWriter, quants

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    path = OUT / "small.gguf"
    w = GGUFWriter(path, "llama")
    w.add_uint8("t.u8", 7)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_uint32("t.u32", 30)
    w.add_int32("t.i32", -5)
    w.add_float32("t.f32", 1e-5)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**40))
    w.add_float64("t.f64", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "Ġhello ✓")
    w.add_array("t.strs", ["<s>", "Ġa", "b c"])
    w.add_key_value("t.i32s", [1, -2, 3], VT.ARRAY, sub_type=VT.INT32)
    w.add_key_value("t.f32s", [0.5, -1.5], VT.ARRAY, sub_type=VT.FLOAT32)
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_custom_alignment(64)

    tensors = {
        "a.f32": (rng.standard_normal((2, 3)).astype(np.float32), None),
        "b.f16": (rng.standard_normal(5).astype(np.float16), None),
        "c.q8_0": (quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), T.Q8_0), T.Q8_0),
        "d.q4_1": (quants.quantize(rng.standard_normal((3, 32)).astype(np.float32), T.Q4_1), T.Q4_1),
        "e.bf16": (quants.quantize(rng.standard_normal((1, 4)).astype(np.float32), T.BF16), T.BF16),
    }
    for name, (data, qtype) in tensors.items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # what the file holds, read back with the package's own reader
    r = GGUFReader(path)
    meta = {}
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        meta[f.name] = {"type": [t.name for t in f.types], "value": f.contents()}
    # GGUFReader flattens nested arrays; record what was written
    meta["t.nested"]["value"] = [[1, 2], [3]]
    out_tensors = []
    for t in r.tensors:
        values = quants.dequantize(np.array(t.data), t.tensor_type).astype(np.float32)
        out_tensors.append(
            {
                "name": t.name,
                "dims": [int(d) for d in reversed(t.shape.tolist())],
                "ggml_type": t.tensor_type.name,
                "values": [float(v) for v in values.reshape(-1)],
            }
        )
    doc = {"alignment": 64, "metadata": meta, "tensors": out_tensors}
    (OUT / "small.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes) and small.json")


if __name__ == "__main__":
    main()
