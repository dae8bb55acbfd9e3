"""`mcompress quantize --model-free`: RTN on the tensors of checkpoints our runtime does not implement
(BERT-like, ViT-like names and shapes, f32 and bf16), written as a compressed-tensors "pack-quantized"
directory. Checked by code written here from the format descriptions, not by ours:
  * the oracle is RTN in numpy following the grid rtn.h documents (compressed-tensors' convention:
    symmetric scale 2 max|w| / (2^b - 1) with codes -2^(b-1)..2^(b-1)-1 stored + 2^(b-1); asymmetric
    scale (max - min) / (2^b - 1) over a range holding 0, zero point round(-min / scale); scales rounded
    up to float16 values, zero scales replaced by 1; codes rounded half to even);
  * the unpacker is compressed-tensors' unpack_from_int32 layout (32 // bits codes per int32 word, the
    first in the lowest bits; zero points packed along the output dimension);
every quantized tensor dequantizes to the oracle's values exactly, every other tensor is byte-identical.
Also: sharded input -> sharded output with an index; on a llama checkpoint the quantized tensors equal
`quantize --method rtn` + `export --format compressed-tensors` byte for byte; bad inputs exit 2 with one
line and leave nothing; peak memory stays about one tensor."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import mcompress_bin

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
import hf_families  # noqa: E402

ST = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


# ---- safetensors with bf16, in numpy -------------------------------------------------------------

def bf16_bits(a):
    """float32 -> bf16 bit patterns, round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_st(path, tensors):
    """tensors: {name: (dtype string, array)}; BF16 arrays are uint16 bit patterns. Streams: one tensor's
    bytes at a time."""
    header, off = {}, 0
    for name, (dt, a) in tensors.items():
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        for dt, a in tensors.values():
            f.write(np.ascontiguousarray(a).data)


def read_st(path):
    """{name: (dtype string, array, raw bytes)}."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = (e["dtype"], np.frombuffer(data[b:end], dtype=ST[e["dtype"]]).reshape(e["shape"]), data[b:end])
    return out


def read_dir(d):
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(read_st(os.path.join(d, f)))
    return out


def as_f32(dt, a):
    return bf16_to_f32(a) if dt == "BF16" else a.astype(np.float32)


# ---- the oracle ----------------------------------------------------------------------------------

def up16(s):
    """Positive float32 values rounded up to the next float16 value (exact ones stay)."""
    h = s.astype(np.float16)
    below = h.astype(np.float32) < s
    return (h.view(np.uint16) + below.astype(np.uint16)).view(np.float16).astype(np.float32)


def rtn_oracle(w, bits, group, sym):
    """(codes uint8 [out, in], scales f32 [out, G], zeros f32 [out, G]) as rtn.h defines the grid.
    group: > 0 columns per group, 0 per channel, -1 per tensor."""
    w = w.astype(np.float32)
    out_f, in_f = w.shape
    maxq = (1 << bits) - 1
    gc = group if group > 0 else in_f
    starts = list(range(0, in_f, gc))
    inv_maxq = np.float32(1.0) / np.float32(maxq)
    codes = np.zeros(w.shape, np.uint8)
    scales, zeros = [], []
    for s0 in starts:
        x = w[:, s0:s0 + gc]
        x_rng = x if group >= 0 else np.broadcast_to(w.reshape(1, -1), (out_f, w.size))  # -1: per tensor
        if sym:
            amax = np.abs(x_rng).max(axis=1)
            scale = (amax * (np.float32(2.0) * inv_maxq)).astype(np.float32)
        else:
            lo = np.minimum(x_rng.min(axis=1), np.float32(0))
            hi = np.maximum(x_rng.max(axis=1), np.float32(0))
            scale = ((hi - lo).astype(np.float32) * inv_maxq).astype(np.float32)
        scale = up16(scale)
        scale[scale == 0] = 1.0
        inv = (np.float32(1.0) / scale).astype(np.float32)
        if sym:
            zero = np.full(out_f, float(1 << (bits - 1)), np.float32)
        else:
            zero = np.clip(np.rint((-lo * inv).astype(np.float32)), 0, maxq).astype(np.float32)
        t = (x * inv[:, None]).astype(np.float32).astype(np.float64)  # the float32 product, then exact
        codes[:, s0:s0 + gc] = np.clip(np.rint(t + zero[:, None]), 0, maxq).astype(np.uint8)
        scales.append(scale)
        zeros.append(zero)
    return codes, np.stack(scales, 1), np.stack(zeros, 1)


def oracle_dequant(codes, scales, zeros, group):
    in_f = codes.shape[1]
    gc = group if group > 0 else in_f
    g = np.arange(in_f) // gc
    return ((codes.astype(np.float32) - zeros[:, g]) * scales[:, g]).astype(np.float32)


# ---- compressed-tensors unpacking ------------------------------------------------------------------

def unpack_int32(packed, n, bits, dim=1):
    """unpack_from_int32: 32 // bits codes per word, the first in the lowest bits; unsigned codes."""
    pf, mask = 32 // bits, (1 << bits) - 1
    p = packed.view(np.uint32)
    if dim == 0:
        return unpack_int32(np.ascontiguousarray(packed.T), n, bits).T
    out = np.zeros((p.shape[0], p.shape[1] * pf), np.uint32)
    for i in range(pf):
        out[:, i::pf] = (p >> (bits * i)) & mask
    return out[:, :n].astype(np.uint8)


def ct_dequant(t, module, bits, sym, group):
    """(codes, values) of a compressed-tensors weight: (q - zp) * scale with signed q and zp; column c in
    group c // group_size (the config's group_size, as vLLM reads it; a short last group stays short)."""
    shape = t[module + ".weight_shape"][1]
    out_f, in_f = int(shape[0]), int(shape[1])
    codes = unpack_int32(t[module + ".weight_packed"][1], in_f, bits)
    scale = t[module + ".weight_scale"][1].astype(np.float32)
    q = codes.astype(np.int32) - (1 << (bits - 1))
    if sym:
        zp = np.zeros_like(scale, dtype=np.int32)
    else:
        zp = unpack_int32(t[module + ".weight_zero_point"][1], out_f, bits, dim=0).astype(np.int32) - (1 << (bits - 1))
    assert scale.shape[1] == (-(-in_f // group) if group > 0 else 1)
    g = np.arange(in_f) // group if group > 0 else np.zeros(in_f, np.int64)
    return codes, ((q - zp[:, g]).astype(np.float32) * scale[:, g]).astype(np.float32)


# ---- checkpoints ----------------------------------------------------------------------------------

def bert_tensors(rng, dt, H=64, I=80, layers=2, V=100):
    t = {"bert.embeddings.word_embeddings.weight": (V, H), "bert.embeddings.position_embeddings.weight": (32, H),
         "bert.embeddings.LayerNorm.weight": (H,), "bert.embeddings.LayerNorm.bias": (H,)}
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for m in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            t[p + m + ".weight"], t[p + m + ".bias"] = (H, H), (H,)
        t[p + "attention.output.LayerNorm.weight"] = (H,)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = (I, H), (I,)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = (H, I), (H,)  # in = 80: a short last group
        t[p + "output.LayerNorm.weight"] = (H,)
    t["bert.pooler.dense.weight"] = (H, H)
    out = {}
    for name, shape in t.items():
        a = rng.standard_normal(shape).astype(np.float32) / np.float32(np.sqrt(shape[-1]))
        if name.endswith("query.weight"):
            a[1, :] = 0.0  # an all-zero row: scale 1, every code the zero point
        out[name] = ("BF16", bf16_bits(a)) if dt == "BF16" else ("F32", a)
    out["bert.embeddings.position_ids"] = ("I64", np.arange(32, dtype=np.int64).reshape(1, 32))
    return out


def vit_tensors(rng, dt, H=64, I=128, layers=2):
    t = {"vit.embeddings.cls_token": (1, 1, H), "vit.embeddings.position_embeddings": (1, 17, H),
         "vit.embeddings.patch_embeddings.projection.weight": (H, 3, 4, 4),
         "vit.embeddings.patch_embeddings.projection.bias": (H,)}
    for i in range(layers):
        p = f"vit.encoder.layer.{i}."
        for m in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                  "attention.output.dense"):
            t[p + m + ".weight"], t[p + m + ".bias"] = (H, H), (H,)
        t[p + "layernorm_before.weight"], t[p + "layernorm_after.weight"] = (H,), (H,)
        t[p + "intermediate.dense.weight"], t[p + "output.dense.weight"] = (I, H), (H, I)
    t["vit.layernorm.weight"] = (H,)
    t["classifier.weight"] = (10, H)
    out = {}
    for name, shape in t.items():
        a = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        out[name] = ("BF16", bf16_bits(a)) if dt == "BF16" else ("F32", a)
    return out


def expected_selected(tensors):
    """The documented default rule: 2-D float *.weight, not embed/lm_head/norm/router."""
    sel = set()
    for name, (dt, a) in tensors.items():
        low = name.lower()
        if (name.endswith(".weight") and a.ndim == 2 and dt in ("F32", "BF16", "F16") and "embed" not in low
                and "norm" not in low and "lm_head" not in low):
            sel.add(name)
    return sel


CASES = [  # (model, dtype, bits, group-size, sym)
    ("bert", "F32", 4, 32, True),
    ("vit", "BF16", 4, 16, False),
    ("bert", "BF16", 3, 0, False),
    ("vit", "F32", 8, -1, True),
    ("bert", "F32", 2, 64, True),
    ("vit", "BF16", 5, 32, True),
]


def write_model(d, model, dt, seed=0):
    rng = np.random.default_rng(seed)
    tensors = bert_tensors(rng, dt) if model == "bert" else vit_tensors(rng, dt)
    d.mkdir(parents=True, exist_ok=True)
    write_st(d / "model.safetensors", tensors)
    cfg = {"architectures": ["BertModel" if model == "bert" else "ViTForImageClassification"],
           "model_type": model, "hidden_size": 64, "torch_dtype": "bfloat16" if dt == "BF16" else "float32"}
    (d / "config.json").write_text(json.dumps(cfg))
    companion = "tokenizer.json" if model == "bert" else "preprocessor_config.json"
    (d / companion).write_text('{"x": 1}')
    return tensors, cfg, companion


def check_output(out, tensors, selected, bits, group, sym):
    """Every selected tensor dequantizes to the oracle exactly; every other is byte-identical."""
    got = read_dir(out)
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["layers"]}
    assert set(rows) == selected
    for name, (dt, a) in tensors.items():
        if name not in selected:
            assert name in got, name
            assert got[name][0] == dt and got[name][2] == a.tobytes(), name  # same dtype, same bytes
            continue
        module = name[: -len(".weight")]
        assert name not in got
        w = as_f32(dt, a)
        codes, scales, zeros = rtn_oracle(w, bits, group, sym)
        want = oracle_dequant(codes, scales, zeros, group)
        got_codes, values = ct_dequant(got, module, bits, sym, group)
        np.testing.assert_array_equal(got_codes, codes, err_msg=name)
        np.testing.assert_array_equal(values, want, err_msg=name)
        assert got[module + ".weight_scale"][0] == "F16"
        assert list(got[module + ".weight_shape"][1]) == list(w.shape)
        assert (module + ".weight_zero_point" in got) == (not sym)
        rel = np.linalg.norm((want - w).astype(np.float64)) / max(np.linalg.norm(w.astype(np.float64)), 1e-300)
        # REL_TOL: the report's error is summed in double over float32 blocks; 1e-6 leaves room for the order.
        assert rows[name]["rel_weight_error"] == pytest.approx(rel, rel=1e-6, abs=1e-12)
        assert rows[name]["max_abs_error"] == pytest.approx(float(np.abs(want - w).max()), rel=1e-6, abs=1e-12)
    return got


@pytest.mark.parametrize("model,dt,bits,group,sym", CASES)
def test_dequantizes_to_the_numpy_oracle_and_copies_the_rest(mc, tmp_path, model, dt, bits, group, sym):
    d = tmp_path / "in"
    tensors, cfg, companion = write_model(d, model, dt)
    out = tmp_path / "out"
    mc("quantize", "--model-free", d, "--bits", bits, "--group-size", group, "--asym" if not sym else "--sym",
       "-o", out, "-q")
    selected = expected_selected(tensors)
    assert len(selected) >= 9
    group = max(group, 0)  # --group-size 0 and -1 both mean per output channel
    check_output(out, tensors, selected, bits, group, sym)
    c = json.loads((out / "config.json").read_text())
    for k, v in cfg.items():
        assert c[k] == v
    qc = c["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    w = qc["config_groups"]["group_0"]["weights"]
    assert (w["num_bits"], w["symmetric"]) == (bits, sym)
    assert w["strategy"] == ("group" if group > 0 else "channel")
    assert w["group_size"] == (group if group > 0 else None)
    assert qc["config_groups"]["group_0"]["targets"] == ["Linear"]
    # every 2-D float .weight left in float is ignored (vLLM would look for weight_packed otherwise)
    left = {n[: -len(".weight")] for n, (dt_, a) in tensors.items()
            if n.endswith(".weight") and a.ndim == 2 and n not in selected}
    assert left <= set(qc["ignore"]) and "lm_head" in qc["ignore"]
    assert (out / companion).read_text() == '{"x": 1}'
    assert (out / "report.md").exists()


def test_single_file_input_targets_and_ignore(mc, tmp_path):
    """A bare .safetensors file; --targets (llm-compressor style: a plain module name and re:) and --ignore."""
    rng = np.random.default_rng(3)
    tensors = bert_tensors(rng, "F32")
    f = tmp_path / "bert.safetensors"
    write_st(f, tensors)
    out = tmp_path / "out"
    p = mc("quantize", "--model-free", f, "--bits", "4", "--group-size", "32", "-o", out,
           "--targets", "re:.*attention\\.self\\..*,bert.pooler.dense", "--ignore", "re:.*layer\\.1\\..*")
    assert "model.safetensors" in os.listdir(out) and "config.json" in os.listdir(out)
    selected = {n for n in tensors if n.endswith(".weight") and ("attention.self." in n or "pooler" in n)
                and "layer.1." not in n}
    check_output(out, tensors, selected, 4, 32, True)
    # a progress line per tensor and the table
    assert f"[ 1/{len(tensors)}]" in p.stdout and "MB/s" in p.stdout
    assert "rel. error" in p.stdout and "bert.pooler.dense.weight" in p.stdout


def test_sharded_input_gives_sharded_output_that_loads(mc, tmp_path):
    rng = np.random.default_rng(5)
    tensors = bert_tensors(rng, "BF16")
    names = list(tensors)
    d = tmp_path / "in"
    d.mkdir()
    parts = [names[:10], names[10:22], names[22:]]
    weight_map = {}
    for k, part in enumerate(parts):
        fn = f"model-{k + 1:05d}-of-00003.safetensors"
        write_st(d / fn, {n: tensors[n] for n in part})
        weight_map.update({n: fn for n in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    out = tmp_path / "out"
    mc("quantize", "--model-free", d, "--bits", "4", "--group-size", "32", "--asym", "-o", out, "-q")
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert files == [f"model-{k:05d}-of-00003.safetensors" for k in (1, 2, 3)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    wm = index["weight_map"]
    total = 0
    for fn in files:
        held = read_st(out / fn)
        total += sum(len(v[2]) for v in held.values())
        for n in held:
            assert wm[n] == fn, n
    assert index["metadata"]["total_size"] == total
    assert set(wm) == set(read_dir(out))
    # each quantized tensor's parts stay in its input shard
    for n, fn in weight_map.items():
        m = n[: -len(".weight")]
        if m + ".weight_packed" in wm:
            assert wm[m + ".weight_packed"] == wm[m + ".weight_scale"] == fn
    check_output(out, tensors, expected_selected(tensors), 4, 32, False)
    # and the output directory loads as a checkpoint (our reader checks the index against the shards)
    js = json.loads(mc("inspect", out, "--json").stdout)
    assert js is not None


@pytest.mark.parametrize("sym", [True, False])
def test_llama_equals_quantize_rtn_then_export(mc, tmp_path, sym):
    """On a llama checkpoint the model-free tensors equal those of the existing two-step path (quantize
    --method rtn, export --format compressed-tensors) byte for byte. What differs by design: the
    exporter writes every float tensor as float16 and generates config.json; model-free keeps the
    input's bf16 bytes and its config.json."""
    d = tmp_path / "llama"
    hf_families.write_family(d, "llama-3.2-1b", dtype="bf16", tokenizer=False)
    grid = ["--bits", "4", "--group-size", "32", "--sym" if sym else "--asym"]
    mc("quantize", d, "--method", "rtn", *grid, "-o", tmp_path / "q", "-q")
    mc("export", tmp_path / "q" / "model.safetensors", "--format", "compressed-tensors", "-o", tmp_path / "ct", "-q")
    mc("quantize", "--model-free", d, *grid, "-o", tmp_path / "mf", "-q")
    ct, mf = read_dir(tmp_path / "ct"), read_dir(tmp_path / "mf")
    ct_q = {n for n in ct if ".weight_" in n}
    mf_q = {n for n in mf if ".weight_" in n}
    assert ct_q == mf_q and len(ct_q) == 7 * 2 * (3 if sym else 4)
    for n in ct_q:
        assert ct[n][0] == mf[n][0] and ct[n][2] == mf[n][2], n
    qc_ct = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    qc_mf = json.loads((tmp_path / "mf" / "config.json").read_text())["quantization_config"]
    assert qc_ct["config_groups"] == qc_mf["config_groups"]
    inp = read_dir(d)
    for n in mf:
        if ".weight_" not in n:
            assert mf[n][2] == inp[n][2], n  # model-free: the input's bytes (bf16)


def one_line_exit_2(mc, tmp_path, *args):
    out = tmp_path / "never"
    p = mc("quantize", "--model-free", *args, "-o", out, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert not out.exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith("never")], os.listdir(tmp_path)
    return lines[0]


def test_bad_inputs_exit_2_with_one_line_and_no_output(mc, tmp_path):
    d = tmp_path / "in"
    tensors, _, _ = write_model(d, "bert", "F32")
    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a checkpoint\n" * 10)
    assert "notes.safetensors" in one_line_exit_2(mc, tmp_path, text, "--bits", "4")
    garbage = tmp_path / "weights.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    line = one_line_exit_2(mc, tmp_path, garbage, "--bits", "4")
    assert "weights.bin" in line and "safetensors" in line
    # a truncated shard
    sh = tmp_path / "sharded"
    sh.mkdir()
    names = list(tensors)
    write_st(sh / "model-00001-of-00002.safetensors", {n: tensors[n] for n in names[:8]})
    write_st(sh / "model-00002-of-00002.safetensors", {n: tensors[n] for n in names[8:]})
    wm = {n: "model-00001-of-00002.safetensors" for n in names[:8]}
    wm.update({n: "model-00002-of-00002.safetensors" for n in names[8:]})
    (sh / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    raw = (sh / "model-00002-of-00002.safetensors").read_bytes()
    (sh / "model-00002-of-00002.safetensors").write_bytes(raw[: len(raw) - 1000])
    line = one_line_exit_2(mc, tmp_path, sh, "--bits", "4")
    assert "model-00002-of-00002.safetensors" in line and "beyond" in line
    # a --targets pattern matching nothing, an invalid regex, bit widths outside 2..8
    line = one_line_exit_2(mc, tmp_path, d, "--bits", "4", "--targets", "re:.*decoder.*")
    assert "re:.*decoder.*" in line and "matches no" in line
    assert "regular expression" in one_line_exit_2(mc, tmp_path, d, "--bits", "4", "--targets", "re:(")
    for b in ("9", "1"):
        assert "2..8" in one_line_exit_2(mc, tmp_path, d, "--bits", b)
    assert "--calib" in one_line_exit_2(mc, tmp_path, d, "--bits", "4", "--calib", "x.txt")
    assert "gptq" in one_line_exit_2(mc, tmp_path, d, "--method", "gptq")
    # an input that is already quantized
    q = tmp_path / "q"
    mc("quantize", "--model-free", d, "--bits", "4", "-o", q, "-q")
    assert "already quantized" in one_line_exit_2(mc, tmp_path, q, "--bits", "4")


def test_dry_run_lists_the_plan_and_writes_nothing(mc, tmp_path):
    d = tmp_path / "in"
    tensors, _, _ = write_model(d, "vit", "BF16")
    p = mc("quantize", "--model-free", d, "--bits", "4", "-o", tmp_path / "out", "--dry-run")
    assert not (tmp_path / "out").exists()
    assert "vit.encoder.layer.0.attention.attention.query.weight" in p.stdout
    assert "copied (4-D)" in p.stdout and "default exclusion: norm" not in p.stdout  # norms are 1-D here


def test_mcompress_format_is_our_packed_file(mc, tmp_path):
    """--format mcompress: one packed safetensors (docs/packed-format.md) whose int4 codes, two per byte
    (low nibble first), are the oracle's; the other tensors keep their bytes."""
    d = tmp_path / "in"
    tensors, _, _ = write_model(d, "bert", "BF16")
    out = tmp_path / "out"
    mc("quantize", "--model-free", d, "--bits", "4", "--group-size", "32", "--format", "mcompress", "-o", out, "-q")
    with open(out / "model.safetensors", "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        assert "mcompress.quantization" in json.loads(f.read(n))["__metadata__"]
    got = read_st(out / "model.safetensors")
    for name, (dt, a) in tensors.items():
        if name in expected_selected(tensors):
            codes = rtn_oracle(as_f32(dt, a), 4, 32, True)[0]
            packed = got[name + ".qweight"][1]
            unpacked = np.stack([packed & 0xF, packed >> 4], axis=2).reshape(packed.shape[0], -1)[:, :codes.shape[1]]
            np.testing.assert_array_equal(unpacked, codes, err_msg=name)
        else:
            assert got[name][0] == dt and got[name][2] == a.tobytes(), name


# ---- memory --------------------------------------------------------------------------------------

# 8 tensors of 64 MiB (float32 [4096, 4096]): 512 MiB of weights.
MEM_TENSORS, MEM_ROWS, MEM_COLS = 8, 4096, 4096


def peak_rss_mib(args, out):
    """Peak resident set of one mcompress run, from /usr/bin/time -v (its wait4 on a child it forked
    itself: a child forked from this big pytest process would count the parent's pages, and the kernel
    keeps a maximum across exec). Cross-checked with the VmHWM the run reports."""
    if not os.path.exists("/usr/bin/time"):
        pytest.skip("/usr/bin/time not installed")
    p = subprocess.run(["/usr/bin/time", "-v", mcompress_bin(), *map(str, args), "-o", out, "-q"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    kib = [line for line in p.stderr.splitlines() if "Maximum resident set size" in line]
    peak = int(kib[0].split(":")[1]) / 1024.0
    reported = json.loads((out / "report.json").read_text())["steps"][0]["peak_rss_mib"]
    assert abs(reported - peak) < 16, (reported, peak)  # 16 MiB: what happens after the report is written
    return peak


def test_peak_memory_is_about_one_tensor(tmp_path):
    if not os.path.exists(mcompress_bin()):
        pytest.skip("mcompress not built")
    big = tmp_path / "big.safetensors"
    rng = np.random.default_rng(0)
    block = rng.standard_normal((MEM_ROWS, MEM_COLS), dtype=np.float32)
    names = [f"encoder.layer.{i}.mlp.fc.weight" for i in range(MEM_TENSORS)]
    write_st(big, {n: ("F32", block) for n in names})
    small = tmp_path / "small.safetensors"
    write_st(small, {n: ("F32", block[:64, :64]) for n in names})
    base = peak_rss_mib(["quantize", "--model-free", small, "--bits", "4"], tmp_path / "s")
    peak = peak_rss_mib(["quantize", "--model-free", big, "--bits", "4"], tmp_path / "b")
    total = MEM_TENSORS * MEM_ROWS * MEM_COLS * 4 / 2**20
    one = total / MEM_TENSORS
    growth = peak - base
    print(f"peak RSS {peak:.0f} MiB, baseline {base:.0f} MiB, growth {growth:.0f} MiB for {total:.0f} MiB of weights")
    # Per tensor: its float32 copy (64 MiB; the mapped pages are released as it is converted), its codes
    # (16 MiB), the int32 packing and its copy (2 x 8 MiB), error temporaries: measured 126 MiB of growth
    # (LibTorch 1.13, 2 cores). 2.5 tensors' worth is the bound: keeping the mapped pages (+512 MiB) or
    # holding the tensor twice (+64 MiB) breaks it; a whole-model load would hold all 8.
    assert growth < 2.5 * one, (peak, base)
