"""mcompress quantize --eora RANK end to end on the project's trained model: the adapter written beside the
model in PEFT's LoRA layout (adapter_config.json, float32 lora_A [r, in] / lora_B [out, r] named
base_model.model.<layer>), its product of rank <= r (numpy), the report's rows with and without it,
`mcompress eval --adapter` reproducing the report's with-adapter figure from the files alone, and bad
input (a negative rank, W8A8, no calibration data, an adapter that does not fit) refused in one line with
exit status 2 and nothing written. The fit itself is checked against a Cholesky-SVD oracle in test_eora.cpp."""
import json

import numpy as np
import pytest

from conftest import read_safetensors


def _quantize(mc, tiny_lm, out, *extra):
    d, model = tiny_lm
    mc("quantize", model, "--method", "gptq", "--bits", "3", "--group-size", "16", "--calib", d / "corpus" / "train.txt",
       "--calib-samples", "16", "--calib-seqlen", "64", "--eval", d / "corpus" / "valid.txt", "-o", out, "-q", *extra)
    return json.loads((out / "report.json").read_text())


def test_eora_adapter_files_and_report(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    out = tmp_path / "q"
    rep = _quantize(mc, tiny_lm, out, "--eora", "4")
    assert rep["settings"]["EoRA"].startswith("rank 4 correction")
    cfg = json.loads((out / "eora" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 4 and cfg["bias"] == "none"
    tensors, _ = read_safetensors(out / "eora" / "adapter_model.safetensors")
    layers = rep["layers"]
    assert len(layers) == 14 and len(tensors) == 2 * len(layers)
    assert sorted(cfg["target_modules"]) == sorted({l["name"].rsplit(".", 1)[1] for l in layers})
    for l in layers:
        out_f, in_f = json.loads(l["shape"])
        a = tensors[f"base_model.model.{l['name']}.lora_A.weight"]
        b = tensors[f"base_model.model.{l['name']}.lora_B.weight"]
        assert a.dtype == np.float32 and a.shape == (4, in_f)
        assert b.dtype == np.float32 and b.shape == (out_f, 4)
        assert np.linalg.matrix_rank(b.astype(np.float64) @ a.astype(np.float64)) <= 4
        # The row's error is with the adapter; the note keeps the one without: the fit lowers it.
        without = float(l["note"].split("eora rank 4 (relative output error ")[1].split(" ")[0])
        assert l["rel_output_error"] < without
    metrics = {m["name"]: m for m in rep["metrics"]}
    plain, fixed = metrics["perplexity"], metrics["perplexity (with the EoRA rank-4 adapter)"]
    assert fixed["baseline"] == plain["baseline"]
    assert fixed["compressed"] != plain["compressed"]  # (the quality gain is measured on stories260K, bench/)

    # The files alone give the same figure: eval merges the adapter as PEFT would.
    p = mc("eval", out / "model.safetensors", "--data", d / "corpus" / "valid.txt", "--adapter", out / "eora", "--json")
    j = json.loads(p.stdout)
    assert j["adapter"]["layers"] == 14
    assert j["result"]["perplexity"] == pytest.approx(fixed["compressed"], rel=1e-9)
    p = mc("eval", out / "model.safetensors", "--data", d / "corpus" / "valid.txt", "--json")
    assert json.loads(p.stdout)["result"]["perplexity"] == pytest.approx(plain["compressed"], rel=1e-9)


@pytest.mark.parametrize("args,expect", [
    (["--method", "gptq", "--eora", "-1"], "--eora -1 must be >= 1"),
    (["--method", "smoothquant", "--eora", "4"], "--eora does not apply to --method smoothquant"),
    (["--method", "rtn", "--eora", "4"], "--eora"),  # no --calib: the adapter has nothing to fit
])
def test_eora_bad_options(mc, tiny_lm, tmp_path, args, expect):
    d, model = tiny_lm
    out = tmp_path / "bad"
    p = mc("quantize", model, *args, "-o", out, check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and expect in p.stderr, p.stderr
    assert not out.exists()


def test_eval_adapter_that_does_not_fit(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    out = tmp_path / "q"
    _quantize(mc, tiny_lm, out, "--eora", "2")
    # The adapter of another shape: its lora_A read as if it belonged to a wider layer.
    cfg = json.loads((out / "eora" / "adapter_config.json").read_text())
    bad = tmp_path / "bad_adapter"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    raw = (out / "eora" / "adapter_model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    layer = next(k for k in header if k.endswith("lora_A.weight")).split(".lora_A")[0]
    for part in ("lora_A", "lora_B"):
        header[f"base_model.model.no_such_layer.{part}.weight"] = header.pop(f"{layer}.{part}.weight")
    hb = json.dumps(header).encode()
    (bad / "adapter_model.safetensors").write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n:])
    p = mc("eval", out / "model.safetensors", "--data", d / "corpus" / "valid.txt", "--adapter", bad, check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert "no_such_layer" in p.stderr and "adapter_model.safetensors" in p.stderr, p.stderr
