"""quantize --kv-bits 8 --kv-format int8|fp8 against the PyTorch reference llama of test_model_reference.py:
the scales in the file are each kv head's max |key| (after RoPE) and |value| over the calibration tokens, run
through the quantized weights (decoded here from the packed file as docs/packed-format.md says), divided by
127 (int8) or 448 (fp8); `mcompress eval` of a file whose scales were coarsened here scores what the
reference scores with its keys and values rounded to those grids (and not what it scores without them);
generation runs with the quantized cache; bad options get one line and exit 2."""
import json
import math
import numpy as np
import torch
import pytest

from conftest import read_safetensors, write_safetensors
from test_model_reference import (CFG, eval_json, float64_reference, llama_forward, mean_nll,  # noqa: F401 (autouse)
                                  random_model, write_letter_tokenizer, write_llama2c_legacy)
from test_packed_layout import dequantize


def _setup(tmp_path):
    W = random_model(CFG, 7)
    model = tmp_path / "tiny.bin"
    write_llama2c_legacy(model, W, CFG)
    calib = np.random.default_rng(8).integers(0, CFG["vocab"], 32).astype(np.uint16)
    (tmp_path / "calib.u16").write_bytes(calib.tobytes())
    ev = np.random.default_rng(9).integers(0, CFG["vocab"], 48).astype(np.uint16)
    (tmp_path / "eval.u16").write_bytes(ev.tobytes())
    return model, calib.tolist(), ev.tolist()


def _weights(path):
    """Every tensor of our packed file as float64 numpy: quantized weights dequantized, the rest as stored."""
    t, meta = read_safetensors(path)
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    W = {k: dequantize(t, k, d) for k, d in desc.items()}
    for k, a in t.items():
        if not any(k.startswith(q + ".") for q in desc) and k not in desc:
            W[k] = a.astype(np.float64)
    return W, meta


def sylvester(n):
    """The Sylvester Hadamard matrix of order n (a power of two), normalized: orthogonal and symmetric."""
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(n)


@pytest.mark.parametrize("fmt,top,hadamard", [("int8", 127.0, False), ("fp8", 448.0, False), ("int8", 127.0, True),
                                              ("fp8", 448.0, True)])
def test_kv_scales_and_runtime_match_the_reference(mc, tmp_path, fmt, top, hadamard):
    model, calib, ev = _setup(tmp_path)
    out = tmp_path / "q"
    mc("quantize", model, "--method", "rtn", "--bits", "8", "--per-channel", "--kv-bits", "8", "--kv-format", fmt,
       *(["--kv-hadamard"] if hadamard else []),
       "--calib", tmp_path / "calib.u16", "--calib-samples", "1", "--calib-seqlen", "32", "-o", out, "-q")
    W, meta = _weights(out / "model.safetensors")
    kv = json.loads(meta["mcompress.kv_cache"])
    assert kv["format"] == fmt and sorted(kv["k_scale"]) == ["0", "1"] and sorted(kv["v_scale"]) == ["0", "1"]
    assert kv.get("rotation") == ("hadamard" if hadamard else None)
    hd = CFG["dim"] // CFG["heads"]
    H = sylvester(hd) if hadamard else None
    # The scales: per kv head, max |x| (of x H with the rotation) over the calibration tokens through the
    # quantized weights / top.
    amax = {}

    def observe(i, k, v):
        if H is not None:
            Ht = torch.tensor(H, dtype=k.dtype)
            k, v = k @ Ht, v @ Ht
        amax[i] = (k.abs().amax(dim=(0, 1, 3)), v.abs().amax(dim=(0, 1, 3)))
    llama_forward(W, CFG, calib, observe=observe)
    for i in range(CFG["layers"]):
        assert len(kv["k_scale"][str(i)]) == CFG["kv_heads"]
        np.testing.assert_allclose(kv["k_scale"][str(i)], (amax[i][0] / top).numpy(), rtol=1e-5)
        np.testing.assert_allclose(kv["v_scale"][str(i)], (amax[i][1] / top).numpy(), rtol=1e-5)
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"]["KV cache"].startswith(fmt)

    # The runtime: scales 16x coarser than calibrated (written into the file here), so rounding matters.
    t, _ = read_safetensors(out / "model.safetensors")
    coarse = {"format": fmt, "k_scale": {b: [16 * x for x in s] for b, s in kv["k_scale"].items()},
              "v_scale": {b: [16 * x for x in s] for b, s in kv["v_scale"].items()}}
    if hadamard:
        coarse["rotation"] = "hadamard"
    meta2 = dict(meta)
    meta2["mcompress.kv_cache"] = json.dumps(coarse)
    write_safetensors(tmp_path / "coarse.safetensors", t, meta2)
    got = eval_json(mc, tmp_path / "coarse.safetensors", tmp_path / "eval.u16", 16)
    ks = [coarse["k_scale"][str(i)] for i in range(CFG["layers"])]
    vs = [coarse["v_scale"][str(i)] for i in range(CFG["layers"])]
    want, n = mean_nll(lambda w: llama_forward(W, CFG, w, kv=(fmt, ks, vs, H)), ev, 16)
    plain, _ = mean_nll(lambda w: llama_forward(W, CFG, w), ev, 16)
    assert got["predicted_tokens"] == n
    assert abs(got["mean_nll"] - want) < 1e-4, (got["mean_nll"], want, plain)
    assert abs(plain - want) > 1e-3  # the rounding is visible: a runtime ignoring it would fail above

    # Generation reads the same rounded cache: the reference's greedy continuation of "ABC".
    write_letter_tokenizer(tmp_path / "tok.bin", CFG["vocab"])
    g = json.loads(mc("generate", tmp_path / "coarse.safetensors", "--tokenizer", tmp_path / "tok.bin", "--prompt",
                      "ABC", "--max-tokens", 10, "--temperature", 0, "--json").stdout)
    ids, gen = [1, 3, 4, 5], []
    for _ in range(10):
        nxt = int(llama_forward(W, CFG, ids, kv=(fmt, ks, vs, H))[0, -1].argmax())
        if nxt in (1, 2):
            break
        ids.append(nxt)
        gen.append(nxt)
    assert g["ids"] == gen


@pytest.mark.parametrize("args,expect", [
    (["--kv-bits", "4"], "--kv-bits 4: 8 or 0 (off)"),
    (["--kv-bits", "8", "--kv-format", "fp4"], "--kv-format 'fp4': int8 or fp8"),
    (["--kv-format", "fp8"], "--kv-format needs --kv-bits 8"),
    (["--kv-hadamard"], "--kv-hadamard needs --kv-bits 8"),
])
def test_kv_bad_options(mc, tmp_path, args, expect):
    model, _, _ = _setup(tmp_path)
    out = tmp_path / "bad"
    p = mc("quantize", model, "--method", "rtn", "--calib", tmp_path / "calib.u16", "-o", out, *args, check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and expect in p.stderr, p.stderr
    assert not out.exists()
