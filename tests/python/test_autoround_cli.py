"""mcompress quantize --method autoround end to end: the report (the tuning settings, each layer's block loss
note), the packed file decoded here with numpy (every code within one step of its weight's exact position on
the stored grid, as a rounding offset in [-0.5, 0.5] allows, unless clipped at the grid's ends), the file
evaluating as the report says, AutoRound beating RTN on the real stories260K model with calibration text other
than the evaluation text, and bad options refused in one line (exit 2, nothing written)."""
import json

import numpy as np
import pytest

from conftest import read_safetensors, shared
from test_packed_layout import unpack


def _decode(tensors, key, e):
    """(codes, scales, zeros) of a packed asymmetric entry, read as docs/packed-format.md says."""
    out_f, in_f = e["shape"]
    G = tensors[key + ".scales"].shape[1]
    return (unpack(tensors[key + ".qweight"], in_f, e["bits"]).astype(np.float64),
            tensors[key + ".scales"].astype(np.float64), unpack(tensors[key + ".zeros"], G, e["bits"]).astype(np.float64))


def test_autoround_report_and_packed_file(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    out = tmp_path / "ar"
    mc("quantize", model, "--method", "autoround", "--bits", "4", "--asym", "--group-size", "16",
       "--autoround-iters", "30", "--autoround-batch", "4", "--calib", d / "corpus" / "train.txt",
       "--calib-samples", "16", "--calib-seqlen", "32", "--eval", d / "corpus" / "valid.txt", "-o", out, "-q")
    rep = json.loads((out / "report.json").read_text())
    assert rep["method"] == "autoround" and "AutoRound int4 asym g16" in rep["title"]
    assert rep["settings"]["tuning"].startswith("30 signed-gradient steps per block, first step 0.0333")
    assert len(rep["layers"]) == 14
    for layer in rep["layers"]:
        assert layer["scheme"] == "autoround int4 asym g16"
        assert "block loss" in layer["note"] and "(rtn) ->" in layer["note"], layer

    tensors, meta = read_safetensors(out / "model.safetensors")
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    mc("convert", model, tmp_path / "orig.safetensors", "--dtype", "f32")
    orig, _ = read_safetensors(tmp_path / "orig.safetensors")
    moved = 0
    for layer in rep["layers"]:
        key = layer["name"] + ".weight"
        e = desc[key]
        out_f, in_f = e["shape"]
        codes, s, z = _decode(tensors, key, e)
        w = orig[key].astype(np.float64).reshape(out_f, in_f)
        g = np.arange(in_f) // 16
        pos = w / s[:, g] + z[:, g]  # the weight's exact position on its stored grid
        inside = (codes > 0) & (codes < 15)
        assert np.all(np.abs(codes - pos)[inside] <= 1.0 + 1e-4), key
        moved += int(np.count_nonzero(np.abs(codes - pos)[inside] > 0.5 + 1e-4))  # rounded the other way
    assert moved > 0
    j = json.loads(mc("eval", out / "model.safetensors", "--data", d / "corpus" / "valid.txt",
                      "--tokenizer", d / "corpus" / "tokenizer.bin", "--json").stdout)
    got = {m["name"]: m for m in rep["metrics"]}
    assert got["perplexity"]["compressed"] == pytest.approx(j["result"]["perplexity"], rel=1e-9)


def test_autoround_beats_rtn_on_stories260k(mc, tmp_path):
    model = shared("stories260K/stories260K.bin")
    calib = ["--calib", shared("tinyshakespeare/input.txt"), "--calib-samples", "32", "--calib-seqlen", "64",
             "--seed", "0"]
    ev = ["--eval", shared("tinystories/validation_100.txt"), "--window", "128", "--truncate"]
    bpb = {}
    for method in ("rtn", "autoround"):
        out = tmp_path / method
        mc("quantize", model, "--method", method, "--bits", "3", "--group-size", "32", "--autoround-iters", "50",
           *calib, *ev, "-o", out, "-q")
        rep = json.loads((out / "report.json").read_text())
        bpb[method] = next(m for m in rep["metrics"] if m["name"] == "bits per byte")["compressed"]
    # int3 g32 RTN loses ~0.5 bits per byte here; 50 steps win back well over a third of it.
    assert bpb["autoround"] < bpb["rtn"] - 0.1, bpb


@pytest.mark.parametrize("args,expect", [
    (["--autoround-iters", "0"], "--autoround-iters 0 outside 1..100000"),
    (["--autoround-batch", "0"], "--autoround-batch must be >= 1"),
    (["--autoround-lr", "-1"], "--autoround-lr must be >= 0"),
    (["--per-tensor"], "--per-tensor is only available with --method rtn"),
    (["--keep-sparsity"], "--keep-sparsity does not apply to autoround"),
])
def test_autoround_bad_options(mc, tiny_lm, tmp_path, args, expect):
    d, model = tiny_lm
    out = tmp_path / "bad"
    p = mc("quantize", model, "--method", "autoround", "--calib", d / "corpus" / "train.txt", "--calib-samples", "4",
           "-o", out, *args, check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and expect in p.stderr, p.stderr
    assert not out.exists()


def test_autoround_needs_calibration(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    p = mc("quantize", model, "--method", "autoround", "-o", tmp_path / "x", check=False)
    assert p.returncode == 2 and "calib" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "x").exists()


def test_autoround_kquant_exports_its_lattice_to_gguf_bit_for_bit(mc, tmp_path):
    """--autoround-kquant on a llama of 256-wide rows: the packed file stores float16 mins (docs/packed-format.md),
    its weights are code * scale - min with every scale d * sc (sc 1..63, d of 5 significant bits per 256 columns),
    and export --format gguf:q4_k writes Q4_K blocks that decode (numpy, from ggml's layout) to exactly those
    weights; llama.cpp's own fit of the same values would not (checked in the Catch2 suite)."""
    from test_gguf_export import decode_q4_k, read_gguf
    from test_model_reference import random_model, write_letter_tokenizer, write_llama2c_legacy
    from test_packed_layout import dequantize
    cfg = dict(dim=256, hidden=256, layers=1, heads=4, kv_heads=2, vocab=40, seq=64)
    W = random_model(cfg, 5)
    model = tmp_path / "wide.bin"
    write_llama2c_legacy(model, W, cfg)
    calib = np.random.default_rng(6).integers(0, cfg["vocab"], 256).astype(np.uint16)
    (tmp_path / "calib.u16").write_bytes(calib.tobytes())
    out = tmp_path / "k"
    mc("quantize", model, "--method", "autoround", "--bits", "4", "--asym", "--group-size", "32", "--autoround-kquant",
       "--autoround-iters", "20", "--calib", tmp_path / "calib.u16", "--calib-samples", "8", "--calib-seqlen", "32",
       "-o", out, "-q")
    rep = json.loads((out / "report.json").read_text())
    assert "Q4_K lattice" in rep["settings"]["tuning"]
    assert all("Q4_K lattice" in layer["note"] for layer in rep["layers"]), rep["layers"]
    tensors, meta = read_safetensors(out / "model.safetensors")
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    write_letter_tokenizer(tmp_path / "tok.bin", cfg["vocab"])
    mc("export", out / "model.safetensors", "--format", "gguf:q4_k", "--tokenizer", tmp_path / "tok.bin",
       "-o", tmp_path / "k.gguf", "-q")
    _, gg, _ = read_gguf(tmp_path / "k.gguf")
    # Rows of these keep their order in GGUF (q and k are permuted for llama.cpp's RoPE layout).
    for ours, theirs in (("layers.0.attention.wv.weight", "blk.0.attn_v.weight"),
                         ("layers.0.attention.wo.weight", "blk.0.attn_output.weight"),
                         ("layers.0.feed_forward.w1.weight", "blk.0.ffn_gate.weight"),
                         ("layers.0.feed_forward.w2.weight", "blk.0.ffn_down.weight"),
                         ("layers.0.feed_forward.w3.weight", "blk.0.ffn_up.weight")):
        e = desc[ours]
        assert e.get("mins") is True and ours + ".zeros" not in tensors
        w = dequantize(tensors, ours, e)
        s = tensors[ours + ".scales"].astype(np.float32)
        for sb in s.reshape(s.shape[0], -1, 8):  # per super-block: one d, 6-bit multiples of it
            top = sb.max(axis=1, keepdims=True)
            ok = np.zeros(sb.shape[0], bool)
            for k in range(59, 64):
                d = top / k
                m, _ = np.frexp(d)
                n = sb / d
                ok |= ((m * 32 == np.floor(m * 32)) & np.all(n == np.round(n), axis=1, keepdims=True)
                       & np.all((n >= 1) & (n <= 63), axis=1, keepdims=True))[:, 0]
            assert ok.all(), ours
        g = gg[theirs]
        assert g["type"] == "Q4_K", (theirs, g["type"])
        got = decode_q4_k(g["bytes"]).reshape(w.shape)
        assert np.array_equal(got, w.astype(np.float32)), (ours, np.abs(got - w).max())


@pytest.mark.parametrize("args,expect", [
    (["--bits", "4", "--group-size", "32"], "--autoround-kquant needs --bits 4 or 5, --asym and --group-size 32"),
    (["--bits", "3", "--asym", "--group-size", "32"], "--autoround-kquant needs --bits 4 or 5"),
])
def test_autoround_kquant_bad_grids(mc, tiny_lm, tmp_path, args, expect):
    d, model = tiny_lm
    out = tmp_path / "bad"
    p = mc("quantize", model, "--method", "autoround", "--autoround-kquant", *args, "--calib",
           d / "corpus" / "train.txt", "--calib-samples", "4", "-o", out, check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and expect in p.stderr, p.stderr
    assert not out.exists()
    p = mc("quantize", model, "--method", "gptq", "--autoround-kquant", "--calib", d / "corpus" / "train.txt",
           "-o", out, check=False)
    assert p.returncode == 2 and "applies to --method autoround only" in p.stderr, p.stderr
