"""The packed checkpoint layout read by numpy from docs/packed-format.md alone: a file written by the C++
writer (through the hidden Catch2 case "[pack-export]") must dequantize here to exactly the float32
values the C++ QuantResult::dequantize() produced, which the same test case writes next to it.
When `mcompress quantize` exists this can use the CLI instead."""
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import catch2_binary, read_safetensors


# --- the reader of docs/packed-format.md -------------------------------------------------------
def unpack(packed, n, bits):
    bitstr = np.unpackbits(packed, axis=1, bitorder="little")[:, : n * bits]
    bitstr = bitstr.reshape(packed.shape[0], n, bits).astype(np.uint32)
    return (bitstr << np.arange(bits, dtype=np.uint32)).sum(axis=2).astype(np.uint8)


def dequantize(t, key, desc):
    out, inn = desc["shape"]
    b, gs = desc["bits"], desc["group_size"]
    codes = unpack(t[key + ".qweight"], inn, b).astype(np.float32)
    scales = t[key + ".scales"].astype(np.float32)
    G = scales.shape[1]
    if desc["symmetric"]:
        assert key + ".zeros" not in t
        zeros = np.full((out, G), 2 ** (b - 1), np.float32)
    else:
        zeros = unpack(t[key + ".zeros"], G, b).astype(np.float32)
    if desc.get("g_idx", False):
        g = t[key + ".g_idx"].astype(np.int64)
        assert g.shape == (inn,) and g.min() >= 0 and g.max() < G
    else:
        assert key + ".g_idx" not in t
        g = np.arange(inn) // gs if gs > 0 else np.zeros(inn, dtype=np.int64)
    return (codes - zeros[:, g]) * scales[:, g]
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    binary = catch2_binary()
    if not os.path.exists(binary):
        pytest.skip(f"test binary not built at {binary} (set MC_TESTS_BIN)")
    d = tmp_path_factory.mktemp("packed")
    p = subprocess.run([binary, "[pack-export]"], env={**os.environ, "MC_PACKED_EXPORT": str(d)},
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return read_safetensors(d / "packed.safetensors"), read_safetensors(d / "reference.safetensors")


def test_numpy_dequantization_matches_cpp_exactly(exported):
    (packed, meta), (ref, _) = exported
    desc = json.loads(meta["mcompress.quantization"])
    assert desc["format"] == "mcompress-packed-v1"
    assert meta["note"] == "export"  # the caller's metadata is kept
    kinds = set()
    for key, e in desc["tensors"].items():
        out, inn = e["shape"]
        b, gs = e["bits"], e["group_size"]
        G = -(-inn // gs) if gs > 0 else 1
        assert packed[key + ".qweight"].shape == (out, -(-inn * b // 8))
        assert packed[key + ".scales"].dtype == np.float16 and packed[key + ".scales"].shape == (out, G)
        w = dequantize(packed, key, e)
        assert w.dtype == np.float32 and np.array_equal(w, ref[key]), key
        if e.get("g_idx", False):
            gi = packed[key + ".g_idx"]
            assert gi.dtype == np.int32 and gi.shape == (inn,)
            # act-order GPTQ: every group but the last holds gs columns, and they are not one column range
            assert np.array_equal(np.bincount(gi, minlength=G)[:-1], np.full(G - 1, gs))
            assert not np.array_equal(gi, np.arange(inn) // gs)
        kinds.add((b, e["symmetric"], gs > 0 and inn % gs != 0, gs, e.get("g_idx", False)))
    # the export covers odd widths, asymmetric zeros, a ragged last group, per channel and per tensor,
    # and a column -> group map (g_idx) next to entries without one
    assert {k[0] for k in kinds} >= {2, 3, 4, 5, 8}
    assert any(not k[1] for k in kinds) and any(k[2] for k in kinds)
    assert {0, -1} <= {k[3] for k in kinds}
    assert {True, False} == {k[4] for k in kinds}


def test_dense_tensors_unchanged(exported):
    (packed, meta), (ref, _) = exported
    desc = json.loads(meta["mcompress.quantization"])
    dense = [n for n in ref if n not in desc["tensors"]]
    assert dense
    for n in dense:
        assert np.array_equal(packed[n], ref[n]) and packed[n].dtype == ref[n].dtype


def test_hand_packed_bytes():
    # the examples of docs/packed-format.md
    assert unpack(np.array([[0x21]], np.uint8), 2, 4).tolist() == [[1, 2]]
    assert unpack(np.array([[0x39]], np.uint8), 4, 2).tolist() == [[1, 2, 3, 0]]
    assert unpack(np.array([[0xD1, 0x58, 0x1F]], np.uint8), 8, 3).tolist() == [[1, 2, 3, 4, 5, 6, 7, 0]]
