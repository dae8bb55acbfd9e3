"""Every quantization and pruning method on a Gemma 3 model (tests/fixtures/hf_families.py gemma-3-1b tiny:
the real config keys, q/k norms, sandwich norms, vocabulary 262144; widths multiples of 128, so GPTQ W4 g128
applies), the output reloaded and evaluated, and the Hugging Face exports (hf-gptq, compressed-tensors) keeping
Gemma's config.json and reloading as the same model. Calibration and evaluation data are token files (.u32) of
ids drawn from a Zipf law over the vocabulary, so the test does not depend on reading Gemma 3's tokenizer.json."""
import json
import math
import os
import sys

import numpy as np
import pytest

from conftest import read_safetensors

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
import hf_families  # noqa: E402

CALIB = ["--calib-samples", "8", "--calib-seqlen", "32"]
METHODS = {
    "rtn-w4-g32": ("quantize", "--method", "rtn", "--bits", "4", "--group-size", "32"),
    "imatrix-w4": ("quantize", "--method", "imatrix", "--bits", "4", "--group-size", "32", *CALIB),
    "gptq-w4-g128": ("quantize", "--method", "gptq", "--bits", "4", "--group-size", "128", *CALIB),
    "awq-w4-g32": ("quantize", "--method", "awq", "--bits", "4", "--group-size", "32", *CALIB),
    "smoothquant-w8a8": ("quantize", "--method", "smoothquant", "--bits", "8", "--per-channel", *CALIB),
    "wanda-50": ("prune", "--method", "wanda", "--sparsity", "0.5", *CALIB),
    "sparsegpt-50": ("prune", "--method", "sparsegpt", "--sparsity", "0.5", *CALIB),
    "magnitude-50": ("prune", "--method", "magnitude", "--sparsity", "0.5", *CALIB),
    "sparsegpt-2of4": ("prune", "--method", "sparsegpt", "--pattern", "2:4", *CALIB),
}
# What a method may cost on this random model (mean NLL 33.09 nats on the eval tokens: random logits of std ~4
# over 262144 ids): 4-8 bit quantization moved it by at most 0.08 (GPTQ g128), 50% and 2:4
# pruning by at most 0.31 (SparseGPT 2:4), measured. Loose bounds: the test is that everything runs and the
# reloaded file evaluates to the same kind of model, not a quality figure.
MAX_NLL_CHANGE = {"quantize": 0.3, "prune": 2.0}


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    d = tmp_path_factory.mktemp("gemma-methods")
    hf_families.write_family(d / "hf", "gemma-3-1b", seed=3, tokenizer=False)
    rng = np.random.default_rng(4)
    ids = lambda n: np.minimum(rng.zipf(1.3, n), 262143).astype(np.uint32)
    (d / "calib.u32").write_bytes(ids(4096).tobytes())
    (d / "eval.u32").write_bytes(ids(256).tobytes())
    return d, d / "calib.u32"


def eval_nll(mc, model, data):
    return json.loads(mc("eval", model, "--data", data, "--window", "64", "--json").stdout)["result"]["mean_nll"]


@pytest.mark.parametrize("name", list(METHODS))
def test_method_runs_on_gemma3_and_reloads(mc, gemma, name):
    d, calib = gemma
    kind, *args = METHODS[name]
    out = d / name
    mc(kind, d / "hf", *args, "--calib", calib, "-o", out, "-q")
    base = eval_nll(mc, d / "hf", d / "eval.u32")
    got = eval_nll(mc, out / "model.safetensors", d / "eval.u32")
    print(f"{name}: mean NLL {base:.4f} -> {got:.4f}")
    assert math.isfinite(got) and abs(got - base) < MAX_NLL_CHANGE[kind]


@pytest.mark.parametrize("fmt", ["hf-gptq", "compressed-tensors"])
def test_hf_exports_keep_gemma_config(mc, gemma, fmt):
    d, calib = gemma
    q = d / "gptq-export"
    if not q.exists():
        # g32: hf-gptq needs whole groups in every row, and k/v_proj of this tiny model have 32 outputs
        mc("quantize", d / "hf", "--method", "gptq", "--bits", "4", "--group-size", "32", *CALIB, "--calib", calib,
           "-o", q, "-q")
    out = d / f"export-{fmt}"
    mc("export", "--format", fmt, q / "model.safetensors", "-o", out, "-q")
    cfg = json.loads((out / "config.json").read_text())
    src = json.loads((d / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3ForCausalLM"] and cfg["model_type"] == "gemma3_text"
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
              "query_pre_attn_scalar", "hidden_activation", "rms_norm_eps", "rope_theta", "rope_local_base_freq",
              "sliding_window", "sliding_window_pattern", "vocab_size", "tie_word_embeddings",
              "final_logit_softcapping", "attn_logit_softcapping"):
        assert cfg[k] == src[k], k
    assert cfg["layer_types"] == ["sliding_attention" if (i + 1) % src["sliding_window_pattern"] else "full_attention"
                                  for i in range(src["num_hidden_layers"])]
    tensors, _ = read_safetensors(out / "model.safetensors")
    for n in ("model.layers.1.pre_feedforward_layernorm.weight", "model.layers.1.post_feedforward_layernorm.weight",
              "model.layers.1.post_attention_layernorm.weight", "model.layers.0.self_attn.q_norm.weight",
              "model.layers.0.self_attn.k_norm.weight"):
        assert n in tensors, n
    if fmt == "hf-gptq":  # our loader reads the GPTQ layout back: the same model up to float16 rounding
        a = eval_nll(mc, q / "model.safetensors", d / "eval.u32")
        b = eval_nll(mc, out, d / "eval.u32")
        assert abs(a - b) < 1e-3  # float16 scales and norms vs float32: measured ~1e-4
