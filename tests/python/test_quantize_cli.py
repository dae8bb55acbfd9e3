"""mcompress train + quantize end to end on the project's own generated data: the packed file holds
what the report says (bits per weight counted from the file with the independent safetensors reader
in conftest.py), the quantized model evaluates as the report says, and bad options exit 2 with one
line and no output."""
import json
import os
import re
import subprocess

import numpy as np
import pytest

from conftest import mcompress_bin, read_safetensors


def test_quantize_writes_packed_file_and_report(mc, tiny_lm):
    d, model = tiny_lm
    out = d / "w4"
    # RTN needs no calibration; --calib only measures each layer's output error (never on the eval text).
    mc("quantize", model, "--bits", "4", "--group-size", "32", "--calib", d / "corpus" / "train.txt",
       "--eval", d / "corpus" / "valid.txt", "-o", out, "-q")
    rep = json.loads((out / "report.json").read_text())
    assert (out / "report.md").exists()
    tensors, meta = read_safetensors(out / "model.safetensors")
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    # Every matmul weight of both blocks is packed; hidden 80 is not a multiple of 32: w2 ends in a group of 16.
    assert len(desc) == 2 * 7
    for layer in rep["layers"]:
        key = layer["name"] + ".weight"
        assert key in desc and desc[key]["bits"] == 4
        out_f, in_f = desc[key]["shape"]
        assert tensors[key + ".qweight"].shape == (out_f, (in_f * 4 + 7) // 8)
        groups = -(-in_f // 32)
        assert tensors[key + ".scales"].shape == (out_f, groups) and tensors[key + ".scales"].dtype == np.float16
        stored = tensors[key + ".qweight"].nbytes + tensors[key + ".scales"].nbytes
        assert layer["bits_per_weight"] == pytest.approx(8 * stored / (out_f * in_f))
        assert 0 <= layer["rel_output_error"] < 1
    # The reloaded file evaluates as the report says, and against the baseline as --reference.
    j = json.loads(mc("eval", out / "model.safetensors", "--data", d / "corpus" / "valid.txt",
                      "--tokenizer", d / "corpus" / "tokenizer.bin", "--reference", model, "--json").stdout)
    got = {m["name"]: m for m in rep["metrics"]}
    assert got["perplexity"]["compressed"] == pytest.approx(j["result"]["perplexity"], rel=1e-9)
    assert got["KL(baseline || compressed) per token"]["compressed"] == pytest.approx(j["result"]["mean_kl"], rel=1e-6)
    assert rep["size_after_bytes"] == os.path.getsize(out / "model.safetensors")
    assert rep["retention"] == pytest.approx(got["perplexity"]["baseline"] / got["perplexity"]["compressed"])


@pytest.mark.parametrize("args,expect", [
    (["--bits", "9"], "bits 9 outside 2..8"),
    (["--bits", "1"], "outside 2..8"),
    (["--group-size", "0"], "--group-size 0 must be >= 1"),
    (["--sym", "--asym"], "exclude each other"),
    (["--method", "magic"], "not available"),
])
def test_bad_quantize_options(mc, tiny_lm, args, expect):
    d, model = tiny_lm
    out = d / "bad"
    p = mc("quantize", model, "-o", out, *args, check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and expect in p.stderr, p.stderr
    assert not out.exists()


def test_tokenizer_smaller_than_vocabulary_evaluates(mc, tiny_lm):
    # 512 tokens for a 768-row embedding: a padded vocabulary (as Qwen's), not an error. The reverse (a tokenizer
    # larger than the embedding) exits 2: tests/python/test_model_reference.py.
    d, model = tiny_lm
    tok = os.path.join(os.environ.get("MC_SHARED_DATA", ""), "stories260K", "tok512.bin")
    if not os.path.exists(tok):
        pytest.skip("tok512.bin not available")
    p = mc("eval", model, "--data", d / "corpus" / "valid.txt", "--tokenizer", tok, "--max-docs", 5, check=False)
    assert p.returncode == 0, p.stderr


def test_empty_eval_text(mc, tiny_lm):
    d, model = tiny_lm
    empty = d / "empty.txt"
    empty.write_text("\n<|endoftext|>\n")
    p = mc("eval", model, "--data", empty, check=False)
    assert p.returncode == 2 and "no documents" in p.stderr


def test_generate_is_deterministic_for_a_seed(tiny_lm):
    # Raw bytes: an undertrained model may emit byte tokens that are not valid UTF-8 on their own.
    _, model = tiny_lm
    run = lambda seed: subprocess.run([mcompress_bin(), "generate", model, "--prompt", "Once upon", "--max-tokens",
                                       "20", "--seed", seed], capture_output=True, check=True).stdout
    a, b = run("7"), run("7")
    assert a == b and a.startswith(b"Once upon")


CNN_YAML = """input: {shape: [1, 8, 8], scale: 1.0}
layers:
  - {type: conv2d, name: c1, in: 1, out: 4, kernel: 3, stride: 1, padding: 1}
  - {type: relu}
  - {type: maxpool, kernel: 2, stride: 2}
  - {type: flatten}
  - {type: linear, name: fc, in: 64, out: 3}
"""


def test_conv_kernels_quantize_and_reload(mc, tmp_path):
    from conftest import write_safetensors
    rng = np.random.default_rng(0)
    (tmp_path / "cnn.yaml").write_text(CNN_YAML)
    conv = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    write_safetensors(tmp_path / "cnn.safetensors", {
        "c1.weight": conv, "c1.bias": np.zeros(4, np.float32),
        "fc.weight": (rng.standard_normal((3, 64)) * 0.1).astype(np.float32), "fc.bias": np.zeros(3, np.float32)})
    write_safetensors(tmp_path / "data.safetensors", {
        "inputs": rng.standard_normal((40, 1, 8, 8)).astype(np.float32), "labels": rng.integers(0, 3, 40)})
    out = tmp_path / "q"
    mc("quantize", tmp_path / "cnn.safetensors", "--arch", tmp_path / "cnn.yaml", "--bits", "8", "--per-channel",
       "--quantize-conv", "--eval", tmp_path / "data.safetensors", "-o", out, "-q")
    tensors, meta = read_safetensors(out / "model.safetensors")
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    assert desc["c1.weight"]["shape"] == [4, 9] and desc["c1.weight"]["weight_shape"] == [4, 1, 3, 3]
    # Independent decode of the int8 symmetric per-channel kernel: (code - 128) * scale.
    codes = tensors["c1.weight.qweight"].astype(np.float32)
    scales = tensors["c1.weight.scales"].astype(np.float32)
    decoded = ((codes - 128) * scales).reshape(4, 1, 3, 3)
    assert np.abs(decoded - conv).max() <= scales.max() / 2 + 1e-7
    rep = json.loads((out / "report.json").read_text())
    assert any("not smaller" in w for w in rep["warnings"])  # tiny model: metadata outweighs the savings
    j = json.loads(mc("eval", out / "model.safetensors", "--data", tmp_path / "data.safetensors", "--json").stdout)
    top1 = {m["name"]: m for m in rep["metrics"]}["top-1 accuracy"]["compressed"]
    assert j["result"]["top1"] == pytest.approx(top1)


def test_gptq_quantize_is_block_sequential_and_reloads(mc, tiny_lm):
    d, model = tiny_lm
    out = d / "gptq"
    mc("quantize", model, "--method", "gptq", "--bits", "4", "--group-size", "32", "--calib", d / "corpus" / "train.txt",
       "--calib-samples", "16", "--calib-seqlen", "32", "--eval", d / "corpus" / "valid.txt", "-o", out, "-q")
    rep = json.loads((out / "report.json").read_text())
    assert rep["method"] == "gptq" and len(rep["layers"]) == 2 * 7
    assert all(l["scheme"] == "gptq int4 sym g32" and 0 <= l["rel_output_error"] < 1 for l in rep["layers"])
    j = json.loads(mc("eval", out / "model.safetensors", "--data", d / "corpus" / "valid.txt",
                      "--tokenizer", d / "corpus" / "tokenizer.bin", "--json").stdout)
    got = {m["name"]: m for m in rep["metrics"]}
    assert got["perplexity"]["compressed"] == pytest.approx(j["result"]["perplexity"], rel=1e-9)
    # Same seed, same calibration sample, same bytes.
    out2 = d / "gptq2"
    mc("quantize", model, "--method", "gptq", "--bits", "4", "--group-size", "32", "--calib", d / "corpus" / "train.txt",
       "--calib-samples", "16", "--calib-seqlen", "32", "-o", out2, "-q")
    assert (out / "model.safetensors").read_bytes() == (out2 / "model.safetensors").read_bytes()


def test_gptq_bad_calibration(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time.")
    p = mc("quantize", model, "--method", "gptq", "--calib", short, "--calib-seqlen", "128", "-o", tmp_path / "o",
           check=False)
    assert p.returncode == 2 and "shorter than one sequence" in p.stderr
    p = mc("quantize", model, "--method", "gptq", "-o", tmp_path / "o", check=False)
    assert p.returncode == 2 and "needs calibration data" in p.stderr
    assert not (tmp_path / "o").exists()


def _quantize_and_check_reload(mc, d, model, out, *args):
    """Runs quantize with --eval, then checks the file's metadata and that `mcompress eval` of the
    written file gives the perplexity the report states."""
    p = mc("quantize", model, *args, "--calib", d / "corpus" / "train.txt", "--calib-samples", "16",
           "--calib-seqlen", "32", "--eval", d / "corpus" / "valid.txt", "-o", out)
    rep = json.loads((out / "report.json").read_text())
    j = json.loads(mc("eval", out / "model.safetensors", "--data", d / "corpus" / "valid.txt",
                      "--tokenizer", d / "corpus" / "tokenizer.bin", "--json").stdout)
    got = {m["name"]: m for m in rep["metrics"]}
    assert got["perplexity"]["compressed"] == pytest.approx(j["result"]["perplexity"], rel=1e-9)
    return p, rep


@pytest.mark.parametrize("method", ["imatrix", "awq"])
def test_calibrated_weight_methods(mc, tiny_lm, method):
    d, model = tiny_lm
    p, rep = _quantize_and_check_reload(mc, d, model, d / method, "--method", method, "--bits", "3",
                                        "--group-size", "16")
    assert rep["method"] == method and len(rep["layers"]) == 2 * 7
    assert all(l["scheme"] == f"{method} int3 sym g16" for l in rep["layers"])
    # Not a terminal: one plain progress line per layer.
    assert f"{method} quantize layer 1/14 layers.0.attention.wq" in p.stdout
    assert f"{method} quantize layer 14/14 layers.1.feed_forward.w2" in p.stdout
    # and a line per block forward pass, once it is done, with its tokens and time
    for block in (1, 2):
        for what in ("statistics", "output"):
            assert re.search(rf"^{method} block {block}/2 {what} pass: \d+ tokens in [\d.]+ s$", p.stdout, re.M), p.stdout
    if method == "awq":
        assert any("awq alpha" in l["note"] for l in rep["layers"])


def test_smoothquant_w8a8_file_and_int8_kernel(mc, tiny_lm):
    d, model = tiny_lm
    out = d / "w8a8"
    _, rep = _quantize_and_check_reload(mc, d, model, out, "--method", "smoothquant")
    tensors, meta = read_safetensors(out / "model.safetensors")
    acts = json.loads(meta["mcompress.activations"])["layers"]
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    assert len(acts) == 14 and all(a["bits"] == 8 and a["granularity"] == "per-token" for a in acts.values())
    assert all(desc[k + ".weight"]["bits"] == 8 and desc[k + ".weight"]["group_size"] == 0 for k in acts)
    got = {m["name"]: m for m in rep["metrics"]}
    sim = got["perplexity (int8 matmuls simulated in float)"]["compressed"]
    assert sim == pytest.approx(got["perplexity"]["compressed"], rel=1e-3)
    assert got["perplexity"]["compressed"] == pytest.approx(got["perplexity"]["baseline"], rel=0.05)


def test_targets_ignore_and_mixed_precision(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    p = mc("quantize", model, "--targets", "*.mlp.*", "-o", tmp_path / "none", check=False)
    assert p.returncode == 2 and "pattern '*.mlp.*' matches no quantizable layer" in p.stderr
    assert not (tmp_path / "none").exists()
    mc("quantize", model, "--targets", "*.feed_forward.*", "--ignore", "*.w2", "-o", tmp_path / "ffn", "-q")
    _, meta = read_safetensors(tmp_path / "ffn" / "model.safetensors")
    assert sorted(json.loads(meta["mcompress.quantization"])["tensors"]) == [
        f"layers.{b}.feed_forward.{w}.weight" for b in (0, 1) for w in ("w1", "w3")]
    out = tmp_path / "mixed"
    _, rep = _quantize_and_check_reload(mc, d, model, out, "--method", "gptq", "--bits", "4", "--group-size", "16",
                                        "--target-bpw", "3.5", "--bits-candidates", "2,3,4,8")
    _, meta = read_safetensors(out / "model.safetensors")
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    n = sum(v["shape"][0] * v["shape"][1] for v in desc.values())
    mean_bits = sum(v["bits"] * v["shape"][0] * v["shape"][1] for v in desc.values()) / n
    assert 3.0 < mean_bits <= 3.5
    assert "mixed precision" in rep["settings"]
    for l in rep["layers"]:
        assert l["scheme"] == "gptq int%d sym g16" % desc[l["name"] + ".weight"]["bits"]


def test_gptq_act_order_dynamic_groups_store_g_idx(mc, tiny_lm):
    d, model = tiny_lm
    out = d / "actorder"
    _, rep = _quantize_and_check_reload(mc, d, model, out, "--method", "gptq", "--act-order", "--bits", "4",
                                        "--group-size", "16", "--true-sequential")
    tensors, meta = read_safetensors(out / "model.safetensors")
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    with_gidx = [k for k, v in desc.items() if v.get("g_idx")]
    assert with_gidx, "act-order with dynamic groups permutes columns across groups"
    for k in with_gidx:
        g = tensors[k + ".g_idx"]
        assert g.dtype == np.int32 and g.shape == (desc[k]["shape"][1],)
        # Every group holds group_size columns (the last one the rest), in some order.
        counts = np.bincount(g)
        assert (counts[:-1] == 16).all()
    assert rep["settings"]["order"] == "true-sequential"


# Stored bits per weight against the dense layout of the same values: fp16 with a bitmask or 2-bit
# indices 8 + 1 of 16; int4 g16 (4 + 1 bits dense): 2:4 = 2 + 1 (indices) + 1 (scales), 4:8 = 2 + 1.5 + 1.
@pytest.mark.parametrize("method,args,max_ratio", [
    ("sparsegpt", ["--sparsity", "0.5"], 0.6),
    ("wanda", ["--pattern", "2:4"], 0.6),
    ("magnitude", ["--pattern", "4:8", "--bits", "4", "--group-size", "16"], 0.91),
    ("sparsegpt", ["--pattern", "2:4", "--bits", "4", "--group-size", "16"], 0.81),
])
def test_prune_writes_sparse_file_that_reloads(mc, tiny_lm, method, args, max_ratio):
    d, model = tiny_lm
    out = d / ("prune-" + method + "-" + "-".join(a.replace(":", "of") for a in args))
    mc("prune", model, "--method", method, *args, "--calib", d / "corpus" / "train.txt", "--calib-samples", "16",
       "--calib-seqlen", "32", "--eval", d / "corpus" / "valid.txt", "-o", out, "-q")
    rep = json.loads((out / "report.json").read_text())
    tensors, meta = read_safetensors(out / "model.safetensors")
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    assert len(rep["layers"]) == 14
    for layer in rep["layers"]:
        key = layer["name"] + ".weight"
        assert desc[key]["sparse"]["layout"] == ("n:m" if "--pattern" in args else "bitmask")
    # The file decodes (mcompress eval reloads it) to what the report evaluated.
    j = json.loads(mc("eval", out / "model.safetensors", "--data", d / "corpus" / "valid.txt",
                      "--tokenizer", d / "corpus" / "tokenizer.bin", "--json").stdout)
    got = {m["name"]: m for m in rep["metrics"]}
    assert got["perplexity"]["compressed"] == pytest.approx(j["result"]["perplexity"], rel=1e-9)
    # Half the weights cost about half (plus the mask or indices).
    mean_bits = sum(l["bits_per_weight"] * l["params"] for l in rep["layers"]) / sum(l["params"] for l in rep["layers"])
    dense_bits = 4.0 + 16.0 / 16 if "--bits" in args else 16.0
    assert mean_bits <= max_ratio * dense_bits, mean_bits


@pytest.mark.parametrize("args,expect", [
    (["--sparsity", "1.0"], "outside [0, 1)"),
    (["--pattern", "2:3"], "to be a multiple of 3"),
    (["--pattern", "4:4"], "needs 1 <= N < M"),
    (["--pattern", "x"], "is not N:M"),
    (["--method", "wanda"], "needs calibration data"),
])
def test_bad_prune_options(mc, tiny_lm, args, expect):
    d, model = tiny_lm
    out = d / "badprune"
    p = mc("prune", model, "-o", out, *args, check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and expect in p.stderr, p.stderr
    assert not out.exists()


def test_structured_prune_changes_shapes_and_reloads(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    out = tmp_path / "structured"
    mc("prune", model, "--structured", "ffn=0.25,blocks=1", "--calib", d / "corpus" / "train.txt",
       "--calib-samples", "8", "--calib-seqlen", "32", "--eval", d / "corpus" / "valid.txt", "-o", out, "-q")
    rep = json.loads((out / "report.json").read_text())
    tensors, meta = read_safetensors(out / "model.safetensors")
    cfg = json.loads(meta["mcompress.llama.config"])
    # hidden 80 -> 25% fewer channels (rounded down to a multiple of 8: 56), one of two blocks removed.
    assert cfg["n_layers"] == 1 and cfg["hidden_dim"] < 80
    assert tensors["layers.0.feed_forward.w1.weight"].shape == (cfg["hidden_dim"], 32)
    assert not any(k.startswith("layers.1.") for k in tensors)
    assert "forward speedup" in rep["settings"]
    j = json.loads(mc("eval", out / "model.safetensors", "--data", d / "corpus" / "valid.txt",
                      "--tokenizer", d / "corpus" / "tokenizer.bin", "--json").stdout)
    got = {m["name"]: m for m in rep["metrics"]}
    assert got["perplexity"]["compressed"] == pytest.approx(j["result"]["perplexity"], rel=1e-9)
    p = mc("prune", model, "--structured", "heads=1.0", "-o", tmp_path / "bad", check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "bad").exists()


def test_prune_then_gptq_keeps_the_pattern(mc, tiny_lm, tmp_path):
    """The two-pass flow: 2:4 pruning, then GPTQ with --keep-sparsity on the pruned file."""
    d, model = tiny_lm
    calib = ["--calib", d / "corpus" / "train.txt", "--calib-samples", "16", "--calib-seqlen", "32"]
    mc("prune", model, "--method", "wanda", "--pattern", "2:4", *calib, "-o", tmp_path / "p", "-q")
    out = tmp_path / "pq"
    mc("quantize", tmp_path / "p" / "model.safetensors", "--method", "gptq", "--keep-sparsity", "--bits", "4",
       "--group-size", "16", *calib, "--tokenizer", d / "corpus" / "tokenizer.bin", "-o", out, "-q")
    tensors, meta = read_safetensors(out / "model.safetensors")
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    # Stored sparse, in the cheaper of 2:4 and a bitmask (a survivor that rounds to 0 makes the bitmask
    # smaller), never more than half the weights kept.
    assert len(desc) == 14 and all(v["bits"] == 4 and "sparse" in v for v in desc.values())
    assert any(v["sparse"]["layout"] == "n:m" for v in desc.values())
    for v in desc.values():
        assert v["sparse"]["kept"] <= v["shape"][0] * v["shape"][1] // 2
        if v["sparse"]["layout"] == "n:m":
            assert (v["sparse"]["n"], v["sparse"]["m"]) == (2, 4)
    rep = json.loads((out / "report.json").read_text())
    assert all("zeros kept" in l["note"] for l in rep["layers"])
