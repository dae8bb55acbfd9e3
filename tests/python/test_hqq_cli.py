"""mcompress quantize --method hqq end to end on the project's generated model, without calibration data:
the report, the packed file decoded here with numpy (fractional zero points stored as float16; per group
an L1 weight error no larger than RTN asymmetric's on the same scale, computed here from the original
weights), the file evaluating as the report says, --hqq-iters 0 giving RTN's bytes, --sym refused, and the
exports that store integer zero points refusing the model in one line (exit 2, nothing written)."""
import json

import numpy as np
import pytest

from conftest import read_safetensors

# Slack on per-group L1 sums computed in float64 here and in float32/float64 by mcompress.
L1_SLACK = 1e-6


def _decode(tensors, key, e):
    """(codes, scales, zeros) of a packed 4-bit entry, unpacked by numpy (code k in bits 4k..4k+3 of the row)."""
    out_f, in_f = e["shape"]
    qw = tensors[key + ".qweight"]
    codes = np.stack([qw & 0xF, qw >> 4], axis=-1).reshape(out_f, -1)[:, :in_f].astype(np.float32)
    return codes, tensors[key + ".scales"].astype(np.float32), tensors[key + ".zeros"].astype(np.float32)


def _groups(a, gs):
    """[out, in] -> list of [out, cols] column blocks of gs (the last one possibly shorter)."""
    return [a[:, c:c + gs] for c in range(0, a.shape[1], gs)]


def test_hqq_report_and_packed_file(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    out = tmp_path / "hqq"
    mc("quantize", model, "--method", "hqq", "--bits", "4", "--group-size", "32", "--eval", d / "corpus" / "valid.txt",
       "-o", out, "-q")
    rep = json.loads((out / "report.json").read_text())
    assert rep["method"] == "hqq" and "HQQ int4 asym g32" in rep["title"]
    assert rep["settings"]["zero points"].startswith("HQQ, 20 updates")
    assert len(rep["layers"]) == 14 and all(l["scheme"] == "hqq int4 asym g32" for l in rep["layers"])

    tensors, meta = read_safetensors(out / "model.safetensors")
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    mc("convert", model, tmp_path / "orig.safetensors", "--dtype", "f32")
    orig, _ = read_safetensors(tmp_path / "orig.safetensors")
    fractional = 0
    for layer in rep["layers"]:
        key = layer["name"] + ".weight"
        e = desc[key]
        assert e["zero_dtype"] == "F16" and e["symmetric"] is False and e["bits"] == 4
        out_f, in_f = e["shape"]
        groups = -(-in_f // 32)
        assert tensors[key + ".zeros"].dtype == np.float16 and tensors[key + ".zeros"].shape == (out_f, groups)
        stored = sum(tensors[key + s].nbytes for s in (".qweight", ".scales", ".zeros"))
        assert layer["bits_per_weight"] == pytest.approx(8 * stored / (out_f * in_f))
        codes, s, z = _decode(tensors, key, e)
        fractional += int(np.count_nonzero(z != np.round(z)))
        w = orig[key].astype(np.float64).reshape(out_f, in_f)
        # Per group: HQQ's L1 error <= RTN asymmetric's with the same (RTN) scale, RTN computed here.
        for g, (wg, cg) in enumerate(zip(_groups(w, 32), _groups(codes, 32))):
            sg, zg = s[:, g:g + 1].astype(np.float64), z[:, g:g + 1].astype(np.float64)
            hqq = np.abs(wg - (cg - zg) * sg).sum(axis=1)
            lo, hi = np.minimum(wg.min(axis=1, keepdims=True), 0), np.maximum(wg.max(axis=1, keepdims=True), 0)
            z_rtn = np.clip(np.round(-lo / sg), 0, 15)
            rtn = np.abs(wg - (np.clip(np.round(wg / sg + z_rtn), 0, 15) - z_rtn) * sg).sum(axis=1)
            assert np.all(hqq <= rtn * (1 + L1_SLACK) + 1e-12), (key, g)
    assert fractional > 0
    # The file evaluates as the report says (read back through the float16 zeros).
    j = json.loads(mc("eval", out / "model.safetensors", "--data", d / "corpus" / "valid.txt",
                      "--tokenizer", d / "corpus" / "tokenizer.bin", "--json").stdout)
    got = {m["name"]: m for m in rep["metrics"]}
    assert got["perplexity"]["compressed"] == pytest.approx(j["result"]["perplexity"], rel=1e-9)
    ins = json.loads(mc("inspect", out / "model.safetensors", "--json").stdout)
    assert "int4 asym g32 fp16-zero" in json.dumps(ins)


def test_hqq_iters_0_is_rtn_asym(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    mc("quantize", model, "--method", "hqq", "--hqq-iters", "0", "--bits", "3", "-o", tmp_path / "h", "-q")
    mc("quantize", model, "--method", "rtn", "--asym", "--bits", "3", "-o", tmp_path / "r", "-q")
    h, hm = read_safetensors(tmp_path / "h" / "model.safetensors")
    r, _ = read_safetensors(tmp_path / "r" / "model.safetensors")
    assert sorted(h) == sorted(r)
    for name in h:
        assert h[name].dtype == r[name].dtype and np.array_equal(h[name], r[name]), name
    assert "zero_dtype" not in hm["mcompress.quantization"]  # integer zeros: the U8 layout


@pytest.mark.parametrize("args,expect", [
    (["--sym"], "--sym does not apply to --method hqq"),
    (["--per-tensor"], "--per-tensor is only available with --method rtn"),
    (["--hqq-iters", "1001"], "--hqq-iters 1001 outside 0..1000"),
    (["--keep-sparsity"], "--keep-sparsity does not apply to --method hqq"),
])
def test_hqq_bad_options(mc, tiny_lm, tmp_path, args, expect):
    d, model = tiny_lm
    out = tmp_path / "bad"
    p = mc("quantize", model, "--method", "hqq", "-o", out, *args, check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and expect in p.stderr, p.stderr
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["hf-gptq", "compressed-tensors"])
def test_integer_zero_point_exports_refuse_hqq(mc, tiny_lm, tmp_path, fmt):
    d, model = tiny_lm
    q = tmp_path / "q"
    mc("quantize", model, "--method", "hqq", "--bits", "4", "--group-size", "16", "-o", q, "-q")
    out = tmp_path / "exported"
    p = mc("export", "--format", fmt, q / "model.safetensors", "-o", out, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "fractional zero points" in lines[0] and "layers.0." in lines[0], p.stderr
    assert not out.exists()
    assert not list(tmp_path.glob("exported*"))  # no temp directory left either
