"""Today's model families end to end, on checkpoints with each published model's config.json keys,
tensor names, bf16 dtype and real vocabulary (tests/fixtures/hf_families.py, tiny widths): the model
loads and evaluates, GPTQ W4 g128 runs and its output keeps the input's dtype for what it does not
quantize, every quantize and prune method runs on one model of each attention variant, and bad
checkpoints (unknown architecture, wrong or missing tensors, a missing shard, an unsupported RoPE
scaling, a tokenizer larger than the embedding) stop with one line and exit 2, writing nothing.
The float64 forward references of each family live in test_model_reference.py (and the family tests
beside it); llama.cpp runs of the GGUF exports in test_llamacpp_*.py."""
import json
import math
import os
import sys

import pytest

from conftest import read_safetensors, shared

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
import hf_families  # noqa: E402

LLAMA_LIKE = ["llama-3.2-1b", "llama-3.1-8b", "qwen2.5-0.5b", "qwen3-0.6b", "mistral-7b-v0.3", "tinyllama-1.1b",
              "smollm2-135m"]


def family_dir(tmp_path, family, **kw):
    d = tmp_path / family
    cfg = hf_families.write_family(d, family, **kw)
    return d, cfg


def data():
    return shared("tinystories/validation_100.txt"), shared("wikitext-2/valid.txt")


def st_dtypes(path):
    """name -> safetensors dtype string, from the header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        h = json.loads(f.read(n))
    return {k: v["dtype"] for k, v in h.items() if k != "__metadata__"}


@pytest.mark.parametrize("family", LLAMA_LIKE)
def test_family_loads_quantizes_gptq_w4_g128_and_keeps_bf16(mc, tmp_path, family):
    evald, calib = data()
    d, cfg = family_dir(tmp_path, family)
    tok = [] if cfg["_tokenizer"] else ["--tokenizer", shared("stories260K/tok512.bin")]
    if not cfg["_tokenizer"] and cfg["vocab_size"] < 512:
        pytest.skip("no tokenizer for this family")
    out = tmp_path / "q"
    mc("quantize", d, "--method", "gptq", "--bits", "4", "--group-size", "128", "-o", out, "--calib", calib,
       "--calib-samples", "8", "--calib-seqlen", "64", "--eval", evald, "--max-docs", "4", "--window", "64", "-q",
       *tok)
    rep = json.loads((out / "report.json").read_text())
    assert rep["baseline_bits_per_weight"] == 16  # the input is bf16, not 32
    # Every linear layer of the blocks is 4-bit g128; the rest kept bf16 as the input had it.
    dt = st_dtypes(out / "model.safetensors")
    assert dt["model.embed_tokens.weight"] == "BF16"
    assert dt["model.norm.weight"] == "BF16"
    assert dt["model.layers.0.input_layernorm.weight"] == "BF16"
    assert not any(k == "model.layers.0.self_attn.q_proj.weight" and v in ("BF16", "F32") for k, v in dt.items())
    layers = {r["name"]: r for r in rep["layers"]}
    q = [r for r in layers.values() if r["scheme"] == "gptq int4 sym g128"]
    assert len(q) == 7 * cfg["num_hidden_layers"], [r["scheme"] for r in layers.values()]
    assert rep["size_after_bytes"] < rep["size_before_bytes"]
    # The output loads and evaluates (finite perplexity).
    # The output directory (tokenizer files copied in) loads and evaluates without --tokenizer.
    js = json.loads(mc("eval", out, "--data", evald, "--max-docs", "2", "--window", "64", "--json", *tok).stdout)
    assert math.isfinite(js["result"]["mean_nll"]) and js["result"]["mean_nll"] > 0


METHODS = [
    ("quantize", ["--method", "rtn", "--bits", "4", "--group-size", "32"]),
    ("quantize", ["--method", "imatrix", "--bits", "4", "--group-size", "32"]),
    ("quantize", ["--method", "gptq", "--bits", "3", "--group-size", "32", "--act-order"]),
    ("quantize", ["--method", "awq", "--bits", "4", "--group-size", "32"]),
    ("quantize", ["--method", "smoothquant", "--bits", "8"]),
    ("prune", ["--method", "magnitude", "--sparsity", "0.5"]),
    ("prune", ["--method", "wanda", "--sparsity", "0.5"]),
    ("prune", ["--method", "sparsegpt", "--sparsity", "0.5"]),
    ("prune", ["--method", "wanda", "--pattern", "2:4"]),
]


@pytest.mark.parametrize("family", ["llama-3.2-1b", "qwen2.5-0.5b", "qwen3-0.6b"])
def test_every_method_runs_on_each_attention_variant(mc, tmp_path, family):
    """Tied llama3-rope GQA, q/k/v biases, per-head q/k norms: each method runs, writes a model that
    reloads and evaluates."""
    evald, calib = data()
    d, cfg = family_dir(tmp_path, family)
    if not cfg["_tokenizer"]:
        pytest.skip("the family's tokenizer is not installed (scripts/install_tokenizers.sh)")
    for i, (cmd, args) in enumerate(METHODS):
        out = tmp_path / f"m{i}"
        calib_args = [] if args[1] in ("rtn", "magnitude") else ["--calib", calib, "--calib-samples", "4",
                                                                  "--calib-seqlen", "32"]
        p = mc(cmd, d, *args, "-o", out, *calib_args, "-q", check=False)
        assert p.returncode == 0, f"{cmd} {' '.join(args)}: {p.stdout}{p.stderr}"
        js = json.loads(mc("eval", out, "--data", evald, "--max-docs", "1", "--window", "32", "--json").stdout)
        assert math.isfinite(js["result"]["mean_nll"]), (args, js)


def one_line_exit_2(mc, tmp_path, model, extra=()):
    out = tmp_path / "never"
    evald, _ = data()
    p = mc("quantize", model, "--bits", "4", "-o", out, "--eval", evald, "-q", *extra, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    assert not out.exists()
    return lines[0]


def edit_config(d, **kw):
    c = json.loads((d / "config.json").read_text())
    c.update(kw)
    (d / "config.json").write_text(json.dumps(c))


def test_unknown_architecture_lists_the_supported(mc, tmp_path):
    d, _ = family_dir(tmp_path, "llama-3.2-1b")
    edit_config(d, architectures=["FalconForCausalLM"])
    line = one_line_exit_2(mc, tmp_path, d)
    assert "FalconForCausalLM" in line and "LlamaForCausalLM" in line and "Qwen3ForCausalLM" in line, line


def test_wrong_shape_names_the_tensor_and_the_directory(mc, tmp_path):
    d, _ = family_dir(tmp_path, "qwen2.5-0.5b")
    edit_config(d, intermediate_size=384)
    line = one_line_exit_2(mc, tmp_path, d)
    assert "model.layers.0.mlp.gate_proj.weight" in line and "[384, 128]" in line and str(d) in line, line


def test_missing_tensors_are_named(mc, tmp_path):
    d, _ = family_dir(tmp_path, "llama-3.2-1b")
    edit_config(d, num_hidden_layers=3)
    line = one_line_exit_2(mc, tmp_path, d)
    assert "model.layers.2.self_attn.q_proj.weight" in line and str(d) in line, line


def test_index_pointing_at_a_missing_shard(mc, tmp_path):
    d, _ = family_dir(tmp_path, "llama-3.2-1b", shard_bytes=8_000_000)
    shards = sorted(p.name for p in d.glob("model-*.safetensors"))
    assert len(shards) >= 2, shards
    (d / shards[-1]).unlink()
    line = one_line_exit_2(mc, tmp_path, d)
    assert "index.json" in line and shards[-1] in line, line


def test_unsupported_rope_scaling(mc, tmp_path):
    d, _ = family_dir(tmp_path, "llama-3.2-1b")
    edit_config(d, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    line = one_line_exit_2(mc, tmp_path, d)
    assert "yarn" in line and "config.json" in line and line.count("[llama]") == 1, line


def test_tokenizer_larger_than_the_embedding(mc, tmp_path):
    d, cfg = family_dir(tmp_path, "qwen3-0.6b", vocab_size=151000)
    if not cfg["_tokenizer"]:
        pytest.skip("the Qwen tokenizer is not installed (scripts/install_tokenizers.sh)")
    line = one_line_exit_2(mc, tmp_path, d)
    assert "151000" in line and "tokenizer" in line, line


def test_sharded_checkpoint_is_one_model(mc, tmp_path):
    """The same weights in one file and in shards with an index give the same logits (eval figures)."""
    evald, _ = data()
    one, cfg = family_dir(tmp_path, "qwen3-0.6b")
    if not cfg["_tokenizer"]:
        pytest.skip("the Qwen tokenizer is not installed")
    many = tmp_path / "sharded"
    hf_families.write_family(many, "qwen3-0.6b", shard_bytes=400_000)
    assert len(list(many.glob("model-*.safetensors"))) >= 3
    a = json.loads(mc("eval", one, "--data", evald, "--max-docs", "2", "--window", "32", "--json").stdout)
    b = json.loads(mc("eval", many, "--data", evald, "--max-docs", "2", "--window", "32", "--json").stdout)
    assert a["result"]["nll_sum"] == b["result"]["nll_sum"]
