"""The library pipeline as the CLI runs it (issue 15): recipe options checked before any stage runs,
calibration never taken from the evaluation data unless asked (and then said), the plan printed by
--dry-run equal to what the run does layer by layer, W8A8 reports that say which runtime ran, and the
input's stored bits as the baseline of bits per weight."""
import hashlib
import json
import os

import numpy as np
import pytest

from conftest import read_safetensors, shared

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _report(out):
    return json.loads((out / "report.json").read_text())


def test_recipe_typo_in_a_later_stage_fails_before_any_stage_runs(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("""name: typo
stages:
  - prune: {method: magnitude, sparsity: 0.5}
  - quantize: {method: rtn, bitz: 4}
""")
    out = tmp_path / "out"
    p = mc("run", recipe, "--model", model, "-o", out, check=False)
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    assert str(recipe) in lines[0] and "stage 2 (quantize)" in lines[0] and "'bitz'" in lines[0], lines[0]
    assert "did you mean 'bits'" in lines[0]
    assert not out.exists()  # stage 1 never ran


def test_recipe_bad_value_is_exit_2_naming_stage_and_option(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("stages:\n  - quantize: {method: rtn}\n  - prune: {method: wanda, sparsity: lots}\n")
    p = mc("run", recipe, "--model", model, "-o", tmp_path / "o", check=False)
    assert p.returncode == 2, p.stderr
    assert "stage 2 (prune)" in p.stderr and "'sparsity' must be a number" in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()


def test_cli_bad_number_is_exit_2(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    p = mc("quantize", model, "--bits", "four", "-o", tmp_path / "o", check=False)
    assert p.returncode == 2 and "'bits' must be an integer" in p.stderr, p.stderr


def test_calibrated_method_without_calib_is_refused(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    valid = d / "corpus" / "valid.txt"
    p = mc("quantize", model, "--method", "gptq", "--eval", valid, "-o", tmp_path / "o", check=False)
    assert p.returncode == 2, p.stderr
    assert "--calib DATA" in p.stderr and "--calib-from-eval" in p.stderr
    assert not (tmp_path / "o").exists()
    p = mc("prune", model, "--method", "wanda", "--eval", valid, "-o", tmp_path / "p", check=False)
    assert p.returncode == 2 and "--calib-from-eval" in p.stderr, p.stderr


def test_calib_from_eval_is_said_in_report_and_summary(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    valid = d / "corpus" / "valid.txt"
    out = tmp_path / "q"
    p = mc("quantize", model, "--method", "gptq", "--bits", "4", "--group-size", "16", "--eval", valid,
           "--calib-from-eval", "--calib-samples", "8", "--calib-seqlen", "32", "-o", out)
    rep = _report(out)
    assert "NOT held out" in rep["settings"]["calibration data"]
    assert any("not held out" in w for w in rep["warnings"])
    assert "not held out" in p.stdout
    md = (out / "report.md").read_text()
    assert "NOT held out" in md


def test_report_records_calibration_source_and_hash(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    train, valid = d / "corpus" / "train.txt", d / "corpus" / "valid.txt"
    out = tmp_path / "q"
    mc("quantize", model, "--method", "awq", "--bits", "4", "--group-size", "16", "--calib", train, "--eval", valid,
       "--calib-samples", "8", "--calib-seqlen", "32", "--seed", "3", "-o", out, "-q")
    rep = _report(out)
    digest = hashlib.sha256(train.read_bytes()).hexdigest()
    assert rep["settings"]["calibration data"] == f"{train} (sha256 {digest[:16]})"
    assert rep["settings"]["calibration"] == "8 x 32 tokens (seed 3)"
    assert not any("held out" in w for w in rep["warnings"])


@pytest.mark.parametrize("args", [
    ["quantize", "--method", "gptq", "--bits", "3", "--group-size", "16", "--override", "layers.0.*:bits=8,per-channel",
     "--ignore", "*.w2"],
    ["quantize", "--method", "rtn", "--bits", "4", "--quantize-embeddings", "--targets", "layers.1.*"],
    ["prune", "--method", "sparsegpt", "--pattern", "2:4", "--bits", "4", "--group-size", "16"],
    ["prune", "--method", "wanda", "--sparsity", "0.5", "--ignore", "*.wq"],
])
def test_llama_plan_is_what_runs(mc, tiny_lm, tmp_path, args):
    d, model = tiny_lm
    common = ["--calib", d / "corpus" / "train.txt", "--calib-samples", "8", "--calib-seqlen", "32"]
    plan = mc(args[0], model, *args[1:], *common, "--dry-run", "--log-json").stdout
    planned = [json.loads(l) for l in plan.splitlines() if '"plan"' in l][0]["layers"]
    out = tmp_path / "o"
    mc(args[0], model, *args[1:], *common, "-o", out, "-q")
    rep = _report(out)
    assert [p["layer"] for p in planned] == [p["name"] for p in rep["plan"]] == [l["name"] for l in rep["layers"]]
    for p, l in zip(rep["plan"], rep["layers"]):
        if args[0] == "quantize":
            assert l["scheme"].split()[0] in p["what"], (p, l)  # int3 / int8 / int4
        # the stored bits the plan estimated, within the size of the per-layer metadata
        assert abs(p["bits_after"] - l["bits_per_weight"]) < 0.6, (p, l)


def test_classifier_plan_is_what_runs(mc, tmp_path):
    model = shared("mnist/mnist_mlp.state_dict")
    arch = os.path.join(ROOT, "data", "mnist_mlp.yaml")
    args = [model, "--arch", arch, "--method", "gptq", "--bits", "4", "--calib", shared("mnist"), "--calib-samples", "64"]
    planned = [json.loads(l) for l in mc("quantize", *args, "--dry-run", "--log-json").stdout.splitlines()
               if '"plan"' in l][0]["layers"]
    assert [p["layer"] for p in planned] == ["fc1"]  # fc2 is the classifier: left dense unless asked
    out = tmp_path / "o"
    mc("quantize", *args, "-o", out, "-q")
    assert [l["name"] for l in _report(out)["layers"]] == ["fc1"]
    planned = [json.loads(l) for l in mc("quantize", *args, "--quantize-classifier", "--dry-run", "--log-json")
               .stdout.splitlines() if '"plan"' in l][0]["layers"]
    assert [p["layer"] for p in planned] == ["fc1", "fc2"]


def test_run_dry_run_plans_with_the_stage_selection(mc, tmp_path):
    model = shared("mnist/mnist_mlp.state_dict")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - quantize: {method: rtn, bits: 8, per-channel: true}\n")
    p = mc("run", recipe, "--model", model, "--arch", os.path.join(ROOT, "data", "mnist_mlp.yaml"), "--dry-run")
    rows = [l.split() for l in p.stdout.splitlines() if l.strip().startswith(("fc1", "fc2"))]
    assert [r[0] for r in rows] == ["fc1"], p.stdout


def test_w8a8_report_says_which_runtime_ran(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    common = ["--calib", d / "corpus" / "train.txt", "--eval", d / "corpus" / "valid.txt", "--calib-samples", "8",
              "--calib-seqlen", "32", "-q"]
    mc("quantize", model, "--method", "smoothquant", *common, "-o", tmp_path / "k")
    rep = _report(tmp_path / "k")
    assert all(l["runtime"].startswith("int8 kernel") for l in rep["layers"] if l["name"] != "output")
    assert any("simulated in float" in m["name"] for m in rep["metrics"])
    # groups of 32: no per-channel int8 weights, so every matmul is simulated and the report says so
    mc("quantize", model, "--method", "smoothquant", "--group-size", "32", *common, "-o", tmp_path / "s")
    rep = _report(tmp_path / "s")
    assert all(l["runtime"].startswith("simulated in float") for l in rep["layers"] if "runtime" in l)
    assert not any("simulated in float" in m["name"] for m in rep["metrics"])
    assert any("no layer runs the int8 kernel" in w for w in rep["warnings"])


def test_baseline_bits_come_from_the_input_dtypes(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    mc("quantize", model, "--bits", "4", "-o", tmp_path / "f32", "-q")
    assert _report(tmp_path / "f32")["baseline_bits_per_weight"] == 32
    # an mcompress safetensors model (dense, nothing pruned) converted to bf16 keeps its architecture
    mc("prune", model, "--method", "magnitude", "--sparsity", "0", "--storage", "dense", "-o", tmp_path / "dense", "-q")
    bf16 = tmp_path / "model-bf16.safetensors"
    mc("convert", tmp_path / "dense" / "model.safetensors", bf16, "--dtype", "bf16")
    p = mc("quantize", bf16, "--bits", "4", "--tokenizer", d / "corpus" / "tokenizer.bin", "-o", tmp_path / "bf16")
    assert _report(tmp_path / "bf16")["baseline_bits_per_weight"] == 16
    line = [l for l in p.stdout.splitlines() if l.startswith("bits per quantized weight")][0]
    assert line.split()[4] == "16.000", line
    # what is not quantized keeps the input's dtype, bit for bit (bf16 -> float32 -> bf16 is exact)
    src, _ = read_safetensors(bf16)
    out, _ = read_safetensors(tmp_path / "bf16" / "model.safetensors")
    dense = [k for k in out if not k.rsplit(".", 1)[-1] in ("qweight", "scales", "zeros", "g_idx")]
    assert dense and all(out[k].dtype == np.uint16 for k in dense), dense  # BF16 read as uint16 patterns
    for k in dense:
        np.testing.assert_array_equal(out[k], src[k])
