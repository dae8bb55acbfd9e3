"""quantize --act-format fp8 | mxfp8 | mxfp4 | nvfp4 (FP activations, dynamic, simulated) against the PyTorch
reference llama of test_model_reference.py, whose linear inputs are rounded here from the format descriptions
(OCP MX v1.0: E8M0 scale 2^(floor(log2 amax) - emax) per 32 channels; NVIDIA NVFP4: E4M3 scale per 16 channels
under a float32 global scale 448 * 6 / amax; FP8: E4M3 per token, amax / 448), in float32 as a kernel would:
`mcompress eval` of the written file scores what the reference scores (and not what it scores with float
inputs); the file records the format per layer; bad combinations get one line and exit 2."""
import json
import numpy as np
import pytest
import torch

from test_kv_cache_cli import _setup, _weights
from test_model_reference import (CFG, eval_json, float64_reference, llama_forward, mean_nll,  # noqa: F401 (autouse)
                                  write_letter_tokenizer)


def floor_log2(a):
    """floor(log2 a) for a > 0, exactly (frexp: a = m 2^e, m in [0.5, 1))."""
    return torch.frexp(a)[1] - 1


def elem_round(y, mbits, emin, top):
    """Nearest value of a float format with `mbits` mantissa bits, smallest normal exponent `emin` and largest
    value `top` (half to even, saturating): steps of 2^(e - mbits) in binade e, the subnormals continuing the
    smallest binade's step."""
    a = y.abs().clamp(max=top)
    e = floor_log2(a.clamp(min=2.0 ** emin)).to(y.dtype)
    step = torch.pow(torch.tensor(2.0, dtype=y.dtype), e - mbits)
    return torch.sign(y) * (torch.round(a / step) * step).clamp(max=top)


def e4m3(y):
    return elem_round(y, 3, -6, 448.0)


def e2m1(y):
    return elem_round(y, 1, 0, 6.0)


def act_round(x, fmt):
    """x [..., C] float64 -> its activation-format values, computed in float32."""
    shape, C = x.shape, x.shape[-1]
    t = x.reshape(-1, C).to(torch.float32)
    tmax = t.abs().amax(-1, keepdim=True)
    if fmt == "fp8":
        s = torch.where(tmax > 0, tmax / 448.0, torch.ones_like(tmax))
        return (e4m3(t / s) * s).to(torch.float64).reshape(shape)
    g = 16 if fmt == "nvfp4" else 32
    n = (C + g - 1) // g
    padded = torch.nn.functional.pad(t, (0, n * g - C)).reshape(-1, n, g)
    amax = padded.abs().amax(-1, keepdim=True)
    elem = e2m1 if fmt in ("mxfp4", "nvfp4") else e4m3
    if fmt == "nvfp4":
        G = torch.where(tmax > 0, torch.tensor(448.0 * 6.0) / tmax, torch.ones_like(tmax)).unsqueeze(-1)
        S = e4m3((amax / 6.0) * G)
        S = torch.where(S == 0, torch.full_like(S, 0.125), S)
        v = elem(padded / (S / G)) * S / G
    else:
        emax = 2 if fmt == "mxfp4" else 8
        X = (floor_log2(amax.clamp(min=2.0 ** -126)) - emax).clamp(min=-127)
        X = torch.where(amax > 0, X, torch.full_like(X, -127))
        scale = torch.pow(torch.tensor(2.0, dtype=torch.float64), X.to(torch.float64)).to(torch.float32)
        v = elem(padded / scale) * scale
    return v.reshape(-1, n * g)[:, :C].to(torch.float64).reshape(shape)


def test_reference_rounding_by_hand():
    # MXFP4: amax 3 -> X = 1 - 2, scale 0.5: 6, 1.4, -2.4, 0.2 steps -> 6, 1.5, -2, 0
    # E2M1 ties go to the even code: 2.5 -> 2, 3.5 -> 4, 5 -> 4, 0.25 -> 0, 0.75 -> 1
    got = act_round(torch.tensor([[3.0, 0.7, -1.2, 0.1]], dtype=torch.float64), "mxfp4")
    assert got.tolist() == [[3.0, 0.75, -1.0, 0.0]]
    # E4M3: step 8 in [64, 128): 100.5 -> 104, 99.9 -> 96; saturation; 0.00293 = 1.5002 subnormal steps of 2^-9 -> 2
    assert e4m3(torch.tensor([100.5, 99.9, 500.0, 0.00293])).tolist() == [104.0, 96.0, 448.0, 0.00390625]
    assert e2m1(torch.tensor([2.5, 3.5, 5.0, 0.25, 0.75, 7.0])).tolist() == [2.0, 4.0, 4.0, 0.0, 1.0, 6.0]


@pytest.mark.parametrize("fmt", ["fp8", "mxfp8", "mxfp4", "nvfp4"])
def test_fp_activations_match_the_reference(mc, tmp_path, fmt):
    model, calib, ev = _setup(tmp_path)
    out = tmp_path / "q"
    mc("quantize", model, "--method", "rtn", "--bits", "8", "--per-channel", "--act-format", fmt, "-o", out, "-q")
    W, meta = _weights(out / "model.safetensors")
    layers = json.loads(meta["mcompress.activations"])["layers"]
    assert len(layers) == 7 * CFG["layers"]
    assert all(d["format"] == fmt and d["bits"] == (4 if "fp4" in fmt else 8) for d in layers.values())
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"]["activations"].startswith(fmt)
    got = eval_json(mc, out / "model.safetensors", tmp_path / "eval.u16", 16)
    want, n = mean_nll(lambda w: llama_forward(W, CFG, w, act=lambda x: act_round(x, fmt)), ev, 16)
    plain, _ = mean_nll(lambda w: llama_forward(W, CFG, w), ev, 16)
    assert got["predicted_tokens"] == n
    assert abs(got["mean_nll"] - want) < 1e-4, (got["mean_nll"], want, plain)
    assert abs(plain - want) > (1e-3 if "fp4" in fmt else 1e-4)  # the rounding is visible
    if fmt == "nvfp4":  # an export cannot carry them, and says so
        write_letter_tokenizer(tmp_path / "tok.bin", CFG["vocab"])
        p = mc("export", out / "model.safetensors", "--format", "gguf:q8_0", "--tokenizer", tmp_path / "tok.bin",
               "-o", tmp_path / "x.gguf")
        assert "quantized activations (mcompress.activations) are not carried" in p.stdout, p.stdout


@pytest.mark.parametrize("args,expect", [
    (["--act-format", "fp6"], "--act-format 'fp6' is not an activation format"),
    (["--act-format", "nvfp4", "--act-bits", "8"], "--act-bits 8 does not match --act-format nvfp4 (4 bits)"),
    (["--method", "smoothquant", "--act-format", "fp8"], "--act-format fp8 does not apply to --method smoothquant"),
])
def test_act_format_bad_options(mc, tmp_path, args, expect):
    model, _, _ = _setup(tmp_path)
    out = tmp_path / "bad"
    base = [] if "--method" in args else ["--method", "rtn"]
    p = mc("quantize", model, *base, *args, "--calib", tmp_path / "calib.u16", "-o", out, check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and expect in p.stderr, p.stderr
    assert not out.exists()
