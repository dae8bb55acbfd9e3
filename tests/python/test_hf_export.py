"""Hugging Face GPTQ / compressed-tensors and llama2.c Q8_0 exports of stories260K, checked by code
written here from the other projects' own readers, not from ours:
  * hf-gptq: AutoGPTQ's dequantization (qlinear_cuda_old.py forward, 2/4/8-bit and 3-bit unpacking,
    zeros + 1, scales[g_idx] * (w - zeros[g_idx])) in numpy;
  * compressed-tensors: unpack_from_int32 (signed = unsigned - 2^(bits-1)) and (x_q - zp) * scale;
  * llama2c-q8: the file parsed as runq.c memory-maps it, values q * s, and export.py's quantize_q80.
Each must give exactly our dequantized weights (q/k rows permuted as convert_llama_weights_to_hf.py
does); the GPTQ export, dequantized and evaluated as a float Hugging Face model, must score what the
packed model scores (the issue's closing figure).

The exports run through the CLI (`mcompress export`)."""
import json
import os
import struct
import subprocess

import numpy as np
import pytest

from conftest import mcompress_bin, read_safetensors, shared, write_safetensors

MODEL, TOK, DATA = "stories260K/stories260K.bin", "stories260K/tok512.bin", "tinystories/validation_100.txt"
# The export stores embeddings and norms as float16 and runs RoPE as rotate-half; the issue asks the
# exported model to score within 1e-4 bits per byte of the packed one.
BPB_TOL = 1e-4
N_HEADS, N_KV, HEAD_DIM, DIM, HIDDEN, LAYERS = 8, 4, 8, 64, 172, 5
ROLES = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj",
         "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj"}
L2C = {"wq": "attention.wq", "wk": "attention.wk", "wv": "attention.wv", "wo": "attention.wo",
       "w1": "feed_forward.w1", "w2": "feed_forward.w2", "w3": "feed_forward.w3"}


def run_export(fmt, src, out):
    """`mcompress export --format FMT SRC -o OUT`; returns the notes it printed."""
    binary = mcompress_bin()
    if not os.path.exists(binary):
        pytest.skip(f"mcompress not built at {binary}")
    p = subprocess.run([binary, "export", "--format", fmt, str(src), "-o", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return [l[6:] for l in p.stdout.splitlines() if l.startswith("note: ")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """stories260K quantized four ways with the CLI."""
    binary = mcompress_bin()
    if not os.path.exists(binary):
        pytest.skip(f"mcompress not built at {binary}")
    model, tok, data = shared(MODEL), shared(TOK), shared(DATA)
    d = tmp_path_factory.mktemp("hfq")

    def quantize(name, *args):
        out = d / name
        subprocess.run([binary, "quantize", model, "-o", out, "--tokenizer", tok, "--calib", data,
                        "--calib-samples", "16", "-q", *args], check=True, capture_output=True)
        return out / "model.safetensors"
    return {
        "gptq4": quantize("gptq4", "--method", "gptq", "--bits", "4", "--group-size", "32"),
        "gptq3_act": quantize("gptq3", "--method", "gptq", "--bits", "3", "--group-size", "32", "--act-order"),
        "rtn4_asym": quantize("rtn4a", "--method", "rtn", "--bits", "4", "--group-size", "32", "--asym"),
        "rtn8": quantize("rtn8", "--method", "rtn", "--bits", "8", "--group-size", "32"),
        "dir": d,
    }


# ---- our packed file, read by the layout in docs/packed-format.md -------------------------------
def unpack_bytes(packed, n, bits):
    bitstr = np.unpackbits(packed, axis=1, bitorder="little")[:, : n * bits]
    bitstr = bitstr.reshape(packed.shape[0], n, bits).astype(np.uint32)
    return (bitstr << np.arange(bits, dtype=np.uint32)).sum(axis=2).astype(np.float32)


def ours(path):
    """name -> float32 weights of our packed checkpoint ((code - zero) * scale), and the description."""
    t, meta = read_safetensors(path)
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    w = {k: v.astype(np.float32) for k, v in t.items() if not any(k.endswith(s) for s in (".qweight", ".scales", ".zeros", ".g_idx"))}
    for key, e in desc.items():
        out, inn = e["shape"]
        b, gs = e["bits"], e["group_size"]
        codes = unpack_bytes(t[key + ".qweight"], inn, b)
        scales = t[key + ".scales"].astype(np.float32)
        G = scales.shape[1]
        zeros = unpack_bytes(t[key + ".zeros"], G, b) if not e["symmetric"] else np.full((out, G), 2 ** (b - 1), np.float32)
        g = t[key + ".g_idx"].astype(np.int64) if e.get("g_idx") else (np.arange(inn) // gs if gs > 0 else np.zeros(inn, np.int64))
        w[key] = (codes - zeros[:, g]) * scales[:, g]
    return w, desc


def to_hf_rows(w, n_heads):
    """convert_llama_weights_to_hf.py permute: view(n_heads, head_dim/2, 2, in).transpose(1, 2).reshape."""
    return w.reshape(n_heads, HEAD_DIM // 2, 2, w.shape[1]).transpose(0, 2, 1, 3).reshape(w.shape)


def expected_hf(w, role, layer):
    x = w[f"layers.{layer}.{L2C[role]}.weight"]
    if role == "wq":
        x = to_hf_rows(x, N_HEADS)
    if role == "wk":
        x = to_hf_rows(x, N_KV)
    return x


# ---- AutoGPTQ (qlinear_cuda_old.py forward), in numpy -----------------------------------------------
WF3 = np.array([[0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0], [0, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31],
                [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0]], np.uint32)


def autogptq_unpack_zeros(qzeros, bits):
    q = qzeros.view(np.uint32)
    if bits != 3:
        wf = np.arange(0, 32, bits, dtype=np.uint32)
        z = (q[:, :, None] >> wf[None, None, :]) & (2 ** bits - 1)
        return z.reshape(q.shape[0], -1).astype(np.int64) + 1
    z = q.reshape(q.shape[0], q.shape[1] // 3, 3, 1) >> WF3[None, None, :, :]
    z[:, :, 0, 10] = (z[:, :, 0, 10] & 0x3) | ((z[:, :, 1, 0] << 2) & 0x4)
    z[:, :, 1, 11] = (z[:, :, 1, 11] & 0x1) | ((z[:, :, 2, 0] << 1) & 0x6)
    z = z & 0x7
    z = np.concatenate([z[:, :, 0, :11], z[:, :, 1, 1:12], z[:, :, 2, 1:11]], axis=2)
    return z.reshape(q.shape[0], -1).astype(np.int64) + 1


def autogptq_unpack_weight(qweight, bits):
    q = qweight.view(np.uint32)
    if bits != 3:
        wf = np.arange(0, 32, bits, dtype=np.uint32)
        w = (q[:, None, :] >> wf[None, :, None]) & (2 ** bits - 1)
        return w.reshape(-1, q.shape[1]).astype(np.int64)
    w = q.reshape(q.shape[0] // 3, 3, 1, q.shape[1]) >> WF3[None, :, :, None]
    w = w & 0x7
    w[:, 0, 10] = (w[:, 0, 10] & 0x3) | ((w[:, 1, 0] << 2) & 0x4)
    w[:, 1, 11] = (w[:, 1, 11] & 0x1) | ((w[:, 2, 0] << 1) & 0x6)
    w = w & 0x7
    w = np.concatenate([w[:, 0, :11], w[:, 1, 1:12], w[:, 2, 1:11]], axis=1)
    return w.reshape(-1, q.shape[-1]).astype(np.int64)


def autogptq_dequant(t, module, bits):
    """[out, in] float32: scales[g_idx] * (weight - zeros[g_idx]), transposed from AutoGPTQ's [in, out]."""
    g = t[module + ".g_idx"].astype(np.int64)
    weight, zeros = autogptq_unpack_weight(t[module + ".qweight"], bits), autogptq_unpack_zeros(t[module + ".qzeros"], bits)
    scales = t[module + ".scales"].astype(np.float32)
    return (scales[g] * (weight - zeros[g]).astype(np.float32)).T


def check_gptq(tmp_path, src, bits, act_order):
    out = tmp_path / "gptq"
    notes = run_export("hf-gptq", src, out)
    t, meta = read_safetensors(out / "model.safetensors")
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"],
            cfg["vocab_size"], cfg["max_position_embeddings"]) == (64, 8, 4, 5, 512, 512)
    assert cfg["intermediate_size"] == 192 and any("padded from 172 to 192" in n for n in notes)
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "float16"
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["rms_norm_eps"], cfg["rope_theta"]) == (1, 2, 1e-5, 10000.0)
    assert qc == {**qc, "quant_method": "gptq", "bits": bits, "group_size": 32, "desc_act": act_order, "sym": True,
                  "checkpoint_format": "gptq"}
    assert {"damp_percent", "true_sequential"} <= set(qc)
    assert json.loads((out / "quantize_config.json").read_text())["bits"] == bits
    assert any("llama2.c" in n or "no tokenizer" in n for n in notes)
    w, _ = ours(src)
    for layer in range(LAYERS):
        for role, hf in ROLES.items():
            m = f"model.layers.{layer}.{hf}"
            inn = {"wo": DIM, "w2": 192}.get(role, DIM)
            out_f = {"wk": 32, "wv": 32, "w1": 192, "w3": 192}.get(role, DIM)
            G = inn // 32
            assert t[m + ".qweight"].dtype == np.int32 and t[m + ".qweight"].shape == (inn * bits // 32, out_f)
            assert t[m + ".qzeros"].dtype == np.int32 and t[m + ".qzeros"].shape == (G, out_f * bits // 32)
            assert t[m + ".scales"].dtype == np.float16 and t[m + ".scales"].shape == (G, out_f)
            assert t[m + ".g_idx"].dtype == np.int32 and t[m + ".g_idx"].shape == (inn,)
            if not act_order:
                assert np.array_equal(t[m + ".g_idx"], np.arange(inn) // 32)
            d = autogptq_dequant(t, m, bits)
            e = expected_hf(w, role, layer)
            assert np.array_equal(d[: e.shape[0], : e.shape[1]], e), m
            assert not d[e.shape[0]:].any() and not d[:, e.shape[1]:].any()  # padding: exactly 0
    for n in ["model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight",
              "model.layers.4.post_attention_layernorm.weight"]:
        assert t[n].dtype == np.float16
    assert np.array_equal(t["model.embed_tokens.weight"], w["tok_embeddings.weight"].astype(np.float16))
    assert "lm_head.weight" not in t
    return out, t, cfg


def test_hf_gptq_int4_matches_autogptq_dequantization_and_scores_the_same(models, tmp_path, mc):
    out, t, cfg = check_gptq(tmp_path, models["gptq4"], 4, False)
    # the dequantized export as a float Hugging Face directory, evaluated like the packed model
    fdir = tmp_path / "float"
    fdir.mkdir()
    cfg.pop("quantization_config")
    (fdir / "config.json").write_text(json.dumps(cfg))
    floats = {}
    for n, a in t.items():
        if n.endswith(".qweight"):
            m = n[: -len(".qweight")]
            floats[m + ".weight"] = np.ascontiguousarray(autogptq_dequant(t, m, 4))
        elif a.dtype == np.float16 and not n.endswith(".scales"):
            floats[n] = a.astype(np.float32)
    write_safetensors(fdir / "model.safetensors", floats)
    args = ["--data", shared(DATA), "--tokenizer", shared(TOK), "--truncate", "--json"]
    before = json.loads(mc("eval", models["gptq4"], *args).stdout)["result"]["bits_per_byte"]
    after = json.loads(mc("eval", fdir, *args).stdout)["result"]["bits_per_byte"]
    print(f"stories260K gptq int4 g32: packed {before:.6f} bpb, hf-gptq export {after:.6f} bpb")
    assert abs(after - before) < BPB_TOL


def test_hf_gptq_int3_act_order(models, tmp_path):
    check_gptq(tmp_path, models["gptq3_act"], 3, True)


# ---- compressed-tensors (pack_quantized helpers), in numpy ----------------------------------------
def ct_unpack(packed, bits, cols):
    """unpack_from_int32 along dim 1: signed int values [rows, cols]."""
    pf, v = 32 // bits, packed.view(np.uint32)
    out = np.zeros((v.shape[0], v.shape[1] * pf), np.int64)
    for i in range(pf):
        out[:, i::pf] = (v >> np.uint32(bits * i)) & (2 ** bits - 1)
    return out[:, :cols] - 2 ** (bits - 1)


@pytest.mark.parametrize("key,bits,sym", [("gptq4", 4, True), ("rtn4_asym", 4, False), ("rtn8", 8, True)])
def test_compressed_tensors_matches_its_unpacking(models, tmp_path, key, bits, sym):
    out = tmp_path / "ct"
    run_export("compressed-tensors", models[key], out)
    t, meta = read_safetensors(out / "model.safetensors")
    assert meta.get("format") == "pt"
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert qc["quantization_status"] == "compressed" and qc["ignore"] == ["lm_head"]
    g0 = qc["config_groups"]["group_0"]
    assert g0["targets"] == ["Linear"] and g0["input_activations"] is None
    assert g0["weights"] == {**g0["weights"], "num_bits": bits, "type": "int", "symmetric": sym, "strategy": "group",
                             "group_size": 32, "dynamic": False}
    assert cfg["intermediate_size"] == HIDDEN
    w, _ = ours(models[key])
    for layer in range(LAYERS):
        for role, hf in ROLES.items():
            m = f"model.layers.{layer}.{hf}"
            e = expected_hf(w, role, layer)
            out_f, inn = e.shape
            G = -(-inn // 32)
            assert t[m + ".weight_packed"].dtype == np.int32 and t[m + ".weight_packed"].shape == (out_f, -(-inn * bits // 32))
            assert t[m + ".weight_scale"].dtype == np.float16 and t[m + ".weight_scale"].shape == (out_f, G)
            assert t[m + ".weight_shape"].tolist() == [out_f, inn]
            x = ct_unpack(t[m + ".weight_packed"], bits, inn)
            assert x.min() >= -2 ** (bits - 1) and x.max() < 2 ** (bits - 1)
            if sym:
                zp = np.zeros((out_f, G), np.int64)
                assert m + ".weight_zero_point" not in t
            else:  # packed_dim=0: transpose, unpack along the output dimension, transpose back
                zpk = t[m + ".weight_zero_point"]
                assert zpk.dtype == np.int32 and zpk.shape == (-(-out_f * bits // 32), G)
                zp = ct_unpack(np.ascontiguousarray(zpk.T), bits, out_f).T
            g = np.arange(inn) // 32
            d = (x - zp[:, g]).astype(np.float32) * t[m + ".weight_scale"].astype(np.float32)[:, g]
            assert np.array_equal(d, e), m


# ---- llama2.c version 2 (runq.c read_checkpoint / memory_map_weights), in numpy ----------------------
def quantize_q80(w, gs):
    """export.py quantize_q80."""
    g = w.astype(np.float32).reshape(-1, gs)
    scale = (np.abs(g).max(axis=1) / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.round(g / scale[:, None])
    q[scale == 0] = 0
    return q.astype(np.int8).reshape(-1), scale


def read_q8(path):
    raw = open(path, "rb").read()
    magic, version = struct.unpack_from("<Ii", raw, 0)
    cfg = struct.unpack_from("<7i", raw, 8)
    shared_cls, gs = raw[36], struct.unpack_from("<i", raw, 37)[0]
    assert raw[41:256] == bytes(215)
    dim, hidden, L, H, KV, V, S = cfg
    off = 256
    f32 = lambda n: np.frombuffer(raw, np.float32, n, off)
    norms = f32(2 * L * dim + dim)
    off += norms.nbytes
    tensors = {}

    def q8(name, rows, cols):
        nonlocal off
        q = np.frombuffer(raw, np.int8, rows * cols, off)
        off += rows * cols
        s = np.frombuffer(raw, np.float32, rows * cols // gs, off)
        off += s.nbytes
        tensors[name] = (q, s)
    q8("tok_embeddings.weight", V, dim)
    kv = dim * KV // H
    for role, (r, c) in [("wq", (dim, dim)), ("wk", (kv, dim)), ("wv", (kv, dim)), ("wo", (dim, dim)),
                         ("w1", (hidden, dim)), ("w2", (dim, hidden)), ("w3", (hidden, dim))]:
        for l in range(L):
            q8(f"layers.{l}.{L2C[role]}.weight", r, c)
    if not shared_cls:
        q8("output.weight", V, dim)
    assert off == len(raw)
    return (magic, version, cfg, shared_cls, gs), norms, tensors


def q8_dequant(q, s, gs):
    return (q.reshape(-1, gs).astype(np.float32) * s[:, None]).reshape(-1)


@pytest.mark.parametrize("key", ["rtn8", "gptq4"])
def test_llama2c_q8_layout_and_values(models, tmp_path, key):
    out = tmp_path / "q8.bin"
    notes = run_export("llama2c-q8", models[key], out)
    (magic, version, cfg, shared_cls, gs), norms, tensors = read_q8(out)
    assert (magic, version, cfg, shared_cls, gs) == (0x616B3432, 2, (64, 172, 5, 8, 4, 512, 512), 1, 4)
    w, desc = ours(models[key])
    assert np.array_equal(norms[:64], w["layers.0.attention_norm.weight"])
    assert np.array_equal(norms[5 * 64:6 * 64], w["layers.0.ffn_norm.weight"])
    assert np.array_equal(norms[-64:], w["norm.weight"])
    for name, (q, s) in tensors.items():
        if key == "rtn8" and name in desc:  # int8 groups of 32 hold whole groups of 4: the codes themselves
            d = q8_dequant(q, s, gs)
            assert np.array_equal(d, w[name].reshape(-1)), name
        else:  # export.py's quantization of our (dequantized) values
            rq, rs = quantize_q80(w[name], gs)
            assert np.array_equal(q, rq) and np.array_equal(s, rs), name
    assert any(("35 tensors carried over exactly" if key == "rtn8" else "0 tensors carried over exactly") in n for n in notes)


def test_llama2c_q8_of_the_float_model_scores_like_it(models, tmp_path, mc):
    """The float stories260K exported to Q8_0 (group size 4) and dequantized: its bits per byte."""
    out = tmp_path / "q8.bin"
    run_export("llama2c-q8", shared(MODEL), out)
    (_, _, cfg, _, gs), norms, tensors = read_q8(out)
    w = {n: q8_dequant(q, s, gs) for n, (q, s) in tensors.items()}
    shapes = {"tok_embeddings.weight": (512, 64)}
    for l in range(LAYERS):
        for role, shape in [("wq", (64, 64)), ("wk", (32, 64)), ("wv", (32, 64)), ("wo", (64, 64)), ("w1", (172, 64)),
                            ("w2", (64, 172)), ("w3", (172, 64))]:
            shapes[f"layers.{l}.{L2C[role]}.weight"] = shape
    f = {n: w[n].reshape(shapes[n]) for n in w}
    for l in range(LAYERS):
        f[f"layers.{l}.attention_norm.weight"] = norms[l * 64:(l + 1) * 64].copy()
        f[f"layers.{l}.ffn_norm.weight"] = norms[(5 + l) * 64:(6 + l) * 64].copy()
    f["norm.weight"] = norms[-64:].copy()
    meta = {"dim": "64", "hidden_dim": "172", "n_layers": "5", "n_heads": "8", "n_kv_heads": "4", "vocab_size": "512",
            "seq_len": "512", "shared_classifier": "1"}
    p = tmp_path / "q8_float.safetensors"
    write_safetensors(p, f, {"mcompress.arch": "llama", "mcompress.llama.config": json.dumps(
        {"dim": 64, "hidden_dim": 172, "n_layers": 5, "n_heads": 8, "n_kv_heads": 4, "head_dim": 8, "vocab_size": 512,
         "max_seq_len": 512, "norm_eps": 1e-5, "rope_theta": 10000.0, "rope_layout": "interleaved", "names": "llama2c",
         "tied": True}), **meta})
    args = ["--data", shared(DATA), "--tokenizer", shared(TOK), "--truncate", "--json"]
    bpb = json.loads(mc("eval", p, *args).stdout)["result"]["bits_per_byte"]
    print(f"stories260K llama2c-q8 (group size 4): {bpb:.4f} bpb (float 0.8132)")
    # Q8_0 in groups of 4 moves the published float figure by far less than a thousandth.
    assert abs(bpb - 0.8132) < 1e-3
