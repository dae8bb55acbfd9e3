"""`mcompress quantize --scheme fp8|fp8-channel|fp8-block|mxfp4|nvfp4`, model-free and on a model, written as
compressed-tensors (float-quantized, mxfp4-pack-quantized, nvfp4-pack-quantized). Checked by code written
here from the format descriptions, not by ours:
  * decoders from the bit fields: OCP FP8 E4M3 (bias 7, subnormals at E=0, no infinities), OCP MX E2M1
    (bias 1) and E8M0 (2^(e-127)); FP4 pairs in a byte, the first element in the low nibble
    (compressed-tensors pack_fp4_to_uint8); NVFP4 value = e2m1 * e4m3 scale / global scale;
  * the oracle quantizer in numpy float32: scales as compressed-tensors computes them (fp8 amax / 448,
    NVFP4 global 448 * 6 / amax and group scale e4m3(amax_g / 6 * global), MX scale
    2^(floor(log2 amax_g) - emax) per OCP MX v1.0), elements by searching every code for the nearest value
    with ties to the even code, saturating;
every stored code and scale equals the oracle's, dequantized weights stay within the format's error, other
tensors are byte-identical, and bad inputs exit 2 with one line and leave nothing."""
import json
import os
import struct

import numpy as np
import pytest

from conftest import shared, train_tiny_lm, write_safetensors

ST = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "U8": np.uint8, "F8_E4M3": np.uint8}


def read_st(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    return {k: (e["dtype"], np.frombuffer(data[e["data_offsets"][0]:e["data_offsets"][1]], ST[e["dtype"]]).reshape(e["shape"]))
            for k, e in header.items()}


def write_st(path, tensors):
    write_safetensors(path, {k: np.asarray(v, np.float32) for k, v in tensors.items()})


# ---- decoders from the specifications --------------------------------------------------------------
def e4m3(c):
    c = np.asarray(c, np.int64)
    e, m = (c >> 3) & 15, c & 7
    v = np.where(e == 0, m / 8.0 * 2.0 ** -6, (1 + m / 8.0) * 2.0 ** (e - 7))
    v = np.where((e == 15) & (m == 7), np.nan, v)
    return np.where(c & 0x80, -v, v)


def e2m1(c):
    c = np.asarray(c, np.int64)
    e, m = (c >> 1) & 3, c & 1
    v = np.where(e == 0, m / 2.0, (1 + m / 2.0) * 2.0 ** (e - 1))
    return np.where(c & 8, -v, v)


def e8m0(c):
    return 2.0 ** (np.asarray(c, np.float64) - 127)


def unpack_fp4(packed):
    return np.stack([packed & 15, packed >> 4], -1).reshape(packed.shape[0], -1)


# ---- the oracle quantizer --------------------------------------------------------------------------
def nearest(x, table):
    """Codes of float32 x over the magnitude table (codes 0..n-1 ascending), ties to the even code; sign bit above."""
    a = np.abs(x).astype(np.float64)
    d = np.abs(a[..., None] - table[None, :])
    c = d.argmin(-1)
    nxt = np.minimum(c + 1, len(table) - 1)
    tie = (np.take_along_axis(d, nxt[..., None], -1)[..., 0] == np.take_along_axis(d, c[..., None], -1)[..., 0]) & (nxt != c)
    c = np.where(tie & (c % 2 == 1), nxt, c)
    sign = 0x80 if len(table) > 8 else 8
    return (c | np.where(np.signbit(x), sign, 0)).astype(np.uint8)


E4M3_TABLE = e4m3(np.arange(0x7F))  # 0 .. 448
E2M1_TABLE = e2m1(np.arange(8))     # 0 .. 6


def grouped(w, g):
    ng = -(-w.shape[1] // g)
    return np.pad(w, ((0, 0), (0, ng * g - w.shape[1]))).reshape(w.shape[0], ng, g)


def oracle(w, scheme):
    """(codes [out, in] unpacked, scale, global scale) as the stored tensors hold them."""
    w = w.astype(np.float32)
    out, cols = w.shape
    if scheme.startswith("fp8"):
        if scheme == "fp8":
            amax = np.abs(w).max().reshape(1, 1)
        elif scheme == "fp8-channel":
            amax = np.abs(w).max(1, keepdims=True)
        else:
            rb, cb = -(-out // 128), -(-cols // 128)
            p = np.pad(w, ((0, rb * 128 - out), (0, cb * 128 - cols))).reshape(rb, 128, cb, 128)
            amax = np.abs(p).max((1, 3))
        s = np.where(amax == 0, np.float32(1), amax / np.float32(448)).astype(np.float32)
        full = np.repeat(np.repeat(s, 128, 0), 128, 1)[:out, :cols] if scheme == "fp8-block" else s
        return nearest((w / full).astype(np.float32), E4M3_TABLE), s.reshape(-1) if scheme == "fp8" else s, None
    g = 16 if scheme == "nvfp4" else 32
    wg = grouped(w, g)
    amax = np.abs(wg).max(2)
    if scheme == "nvfp4":
        t = np.abs(w).max()
        gs = np.float32(2688) / t if t > 0 else np.float32(1)
        sc = nearest(((amax / np.float32(6)) * gs).astype(np.float32), E4M3_TABLE)
        sc = np.where(sc == 0, 0x20, sc).astype(np.uint8)
        div = (e4m3(sc).astype(np.float32) / gs).astype(np.float32)
    else:
        ex = np.frexp(amax)[1] - 1 - 2 + 127
        sc = np.where(amax > 0, np.clip(ex, 0, 254), 0).astype(np.uint8)
        div = e8m0(sc).astype(np.float32)
        gs = None
    codes = nearest((wg / div[..., None]).astype(np.float32), E2M1_TABLE).reshape(out, -1)[:, :cols]
    return codes, sc, gs


def decode(parts, module, scheme, shape):
    """The dequantized weight from the stored tensors, by the decoders above (float64)."""
    out, cols = shape
    if scheme.startswith("fp8"):
        codes = parts[module + ".weight"][1]
        s = parts[module + ".weight_scale"][1].astype(np.float64)
        if scheme == "fp8-block":
            s = np.repeat(np.repeat(s, 128, 0), 128, 1)[:out, :cols]
        return codes, e4m3(codes) * (s.reshape(1, 1) if scheme == "fp8" else s)
    g = 16 if scheme == "nvfp4" else 32
    codes = unpack_fp4(parts[module + ".weight_packed"][1])
    sc = parts[module + ".weight_scale"][1]
    scale = e4m3(sc) / float(parts[module + ".weight_global_scale"][1][0]) if scheme == "nvfp4" else e8m0(sc)
    return codes, (grouped(e2m1(codes), g) * scale[..., None]).reshape(out, -1)[:, :cols]


FORMATS = {"fp8": "float-quantized", "fp8-channel": "float-quantized", "fp8-block": "float-quantized",
           "mxfp4": "mxfp4-pack-quantized", "nvfp4": "nvfp4-pack-quantized"}
# Largest |W - Q(W)| relative to the scale group's amax: E4M3 rounds to 3 mantissa bits (half a step
# <= 1/16 of the value); E2M1 half-steps reach 1 unit with MXFP4's unit up to amax / 4 and saturation
# losing up to 2 units (amax / 2), NVFP4's unit about amax / 6 (with its E4M3-rounded scale, < amax / 5).
REL_BOUND = {"fp8": 1 / 16, "fp8-channel": 1 / 16, "fp8-block": 1 / 16, "mxfp4": 1 / 2, "nvfp4": 1 / 5}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("fpck")
    rng = np.random.default_rng(3)
    t = {
        "embed_tokens.weight": rng.normal(0, 1, (40, 48)),
        "layers.0.attn.q.weight": rng.normal(0, 0.02, (136, 160)),  # partial 128-blocks, 5 MX groups
        "layers.0.mlp.down.weight": rng.normal(0, 0.05, (48, 172)),  # no group size divides 172
        "layers.0.norm.weight": np.ones(48),
    }
    t["layers.0.attn.q.weight"][3, :32] = 0  # an all-zero group
    t["layers.0.attn.q.weight"][4, 5] = 2.0  # an outlier
    write_st(d / "model.safetensors", t)
    return d / "model.safetensors", {k: np.asarray(v, np.float32) for k, v in t.items()}


@pytest.mark.parametrize("scheme", list(FORMATS))
def test_model_free_codes_equal_the_oracle(mc, tmp_path, checkpoint, scheme):
    path, weights = checkpoint
    mc("quantize", "--model-free", path, "--scheme", scheme, "-o", tmp_path / "out", "-q")
    parts = read_st(tmp_path / "out" / "model.safetensors")
    qc = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qc["format"] == FORMATS[scheme]
    args = qc["config_groups"]["group_0"]["weights"]
    assert (args["type"], args["num_bits"]) == ("float", 8 if scheme.startswith("fp8") else 4)
    for name in ("layers.0.attn.q.weight", "layers.0.mlp.down.weight"):
        module, w = name[:-len(".weight")], weights[name]
        codes, deq = decode(parts, module, scheme, w.shape)
        ocodes, oscale, ogs = oracle(w, scheme)
        assert np.array_equal(codes, ocodes), name
        scale_key = module + ".weight_scale"
        assert parts[scale_key][0] == ("F32" if scheme.startswith("fp8") else "F8_E4M3" if scheme == "nvfp4" else "U8")
        assert np.array_equal(parts[scale_key][1], oscale), name
        if ogs is not None:
            assert parts[module + ".weight_global_scale"][1][0] == ogs
        if scheme.startswith("fp8"):
            assert parts[module + ".weight"][0] == "F8_E4M3"
            group_amax = None
        else:
            g = 16 if scheme == "nvfp4" else 32
            group_amax = np.repeat(np.abs(grouped(w, g)).max(2), g, 1)[:, :w.shape[1]]
        err = np.abs(deq - w)
        # plus half a subnormal step of the largest scale (E4M3: 2^-10 of amax / 448) and float32 rounding
        bound = REL_BOUND[scheme] * (np.abs(w) if scheme.startswith("fp8") else group_amax) + np.abs(w).max() / 448 / 1000
        assert (err <= bound).all(), (name, float((err - bound).max()))
    assert np.array_equal(parts["embed_tokens.weight"][1], weights["embed_tokens.weight"])
    assert np.array_equal(parts["layers.0.norm.weight"][1], weights["layers.0.norm.weight"])
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {l["scheme"] for l in rep["layers"]} == {scheme}


@pytest.mark.parametrize("args", [["--scheme", "mxfp8"], ["--scheme", "fp8", "--format", "mcompress"],
                                  ["--scheme", "fp8", "--bits", "4"], ["--scheme", "fp6"]])
def test_bad_input_exits_2_without_output(mc, tmp_path, checkpoint, args):
    path, _ = checkpoint
    p = mc("quantize", "--model-free", path, *args, "-o", tmp_path / "out", check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "out").exists()


def test_odd_width_fp4_exits_2_without_output(mc, tmp_path):
    write_st(tmp_path / "m.safetensors", {"a.weight": np.ones((4, 33))})
    p = mc("quantize", "--model-free", tmp_path / "m.safetensors", "--scheme", "nvfp4", "-o", tmp_path / "out", check=False)
    assert p.returncode == 2 and "odd" in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scheme", ["fp8", "nvfp4"])
def test_model_path_evaluates_dequantized_weights_and_writes_compressed_tensors(mc, tmp_path_factory, scheme):
    d, model = train_tiny_lm(tmp_path_factory.mktemp("lm"))
    out = d / ("out-" + scheme)
    mc("quantize", model, "--scheme", scheme, "--eval", d / "corpus" / "valid.txt", "--max-docs", "20", "-o", out, "-q")
    rep = json.loads((out / "report.json").read_text())
    assert rep["layers"] and all(l["scheme"] == scheme and l["rel_weight_error"] > 0 for l in rep["layers"])
    assert max(l["rel_weight_error"] for l in rep["layers"]) < (0.03 if scheme == "fp8" else 0.15)
    bpb = [m for m in rep["metrics"] if m["name"] == "bits per byte"][0]
    assert bpb["compressed"] != bpb["baseline"] and abs(bpb["compressed"] / bpb["baseline"] - 1) < 0.1
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == FORMATS[scheme] and qc["config_groups"]["group_0"]["targets"] == ["Linear"]
    parts = read_st(out / "model.safetensors")
    key = "model.layers.0.mlp.down_proj" + (".weight" if scheme == "fp8" else ".weight_packed")
    assert parts[key][0] == ("F8_E4M3" if scheme == "fp8" else "U8")


def test_stories260k_fp8_close_to_float(mc, tmp_path):
    model = shared("stories260K/stories260K.bin")
    data = shared("tinystories/validation_100.txt")
    mc("quantize", model, "--scheme", "fp8", "--eval", data, "--window", "128", "--truncate", "-o", tmp_path / "o", "-q")
    bpb = [m for m in json.loads((tmp_path / "o" / "report.json").read_text())["metrics"] if m["name"] == "bits per byte"][0]
    assert abs(bpb["baseline"] - 0.8132) < 1e-4  # the published figure
    assert bpb["compressed"] < 0.83  # measured 0.8182: E4M3 keeps 3 mantissa bits


def decode_gguf_mxfp4(raw, shape):
    """ggml's block_mxfp4 (ggml-common.h) as dequantize_row_mxfp4 reads it: {u8 e; u8 qs[16]}, element j in the
    low nibble of qs[j], element j + 16 in its high nibble, value kvalues_mxfp4[code] * 2^(e - 128)."""
    kvalues = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float64)
    b = np.frombuffer(raw, np.uint8).reshape(-1, 17)
    codes = np.concatenate([b[:, 1:] & 15, b[:, 1:] >> 4], 1)
    return (kvalues[codes] * 2.0 ** (b[:, :1].astype(np.float64) - 128)).reshape(shape)


def test_gguf_mxfp4_blocks_equal_the_compressed_tensors_mxfp4_values(mc, tmp_path):
    """The same stories260K weights through export --format gguf:mxfp4 and quantize --scheme mxfp4 decode to the
    same values (each by its own decoder here): the E8M0 exponents and E2M1 codes carry over exactly."""
    from test_gguf_export import read_gguf
    model, tok = shared("stories260K/stories260K.bin"), shared("stories260K/tok512.bin")
    mc("export", "--format", "gguf:mxfp4", model, "--tokenizer", tok, "-o", tmp_path / "m.gguf")
    mc("quantize", model, "--scheme", "mxfp4", "-o", tmp_path / "ct", "-q")
    kv, tensors, _ = read_gguf(tmp_path / "m.gguf")
    assert kv["general.file_type"][1] == 38  # LLAMA_FTYPE_MOSTLY_MXFP4_MOE
    parts = read_st(tmp_path / "ct" / "model.safetensors")
    # q/k rows are ordered differently in the two files (GGUF interleaved RoPE, HF rotate-half); the others match.
    pairs = {"attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj"}
    for layer in range(5):
        for g, h in pairs.items():
            t = tensors[f"blk.{layer}.{g}.weight"]
            assert t["type"] == "MXFP4", (g, t["type"])
            module = f"model.layers.{layer}.{h}"
            _, want = decode(parts, module, "mxfp4", t["shape"])
            assert np.array_equal(decode_gguf_mxfp4(t["bytes"], t["shape"]), want), module
        # ffn_down: 172 columns, not whole blocks of 32: llama.cpp's fallback (F16)
        assert tensors[f"blk.{layer}.ffn_down.weight"]["type"] == "F16"
