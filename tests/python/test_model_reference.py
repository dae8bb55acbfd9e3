"""The llama runtime against an independent PyTorch reference written here from llama2.c model.py
(interleaved RoPE) and Hugging Face modeling_llama / modeling_qwen2 (rotate-half RoPE, q/k/v biases) /
modeling_qwen3 (per-head RMSNorm on q and k before RoPE, head_dim independent of hidden / heads):
tiny random models are written by this file (a llama2.c legacy .bin; a Hugging Face directory), the
CLI scores a token file (`mcompress eval --json`) and greedily generates (`mcompress generate --json`),
and both must agree with the reference. Run as a script, it prints the logits hard-coded in
tests/unit/test_model.cpp (the LCG model there)."""
import json
import math
import os
import struct
import subprocess

import numpy as np
import pytest
import torch

from conftest import catch2_binary, write_safetensors



@pytest.fixture(autouse=True)
def float64_reference():
    # The reference runs in float64; restore the default so other test files are unaffected.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ---- deterministic weights, the same stream as tests/unit/test_model.cpp (lcg_model) ----
class Lcg:
    def __init__(self, seed):
        self.s = seed & 0xFFFFFFFF

    def next(self):
        self.s = (self.s * 1664525 + 1013904223) & 0xFFFFFFFF
        return (self.s >> 8) / 16777216.0 - 0.5


def llama2c_names(cfg):
    names = [("tok_embeddings.weight", (cfg["vocab"], cfg["dim"]), "w")]
    hd = cfg.get("head_dim") or cfg["dim"] // cfg["heads"]
    for i in range(cfg["layers"]):
        p = f"layers.{i}."
        names += [(p + "attention_norm.weight", (cfg["dim"],), "n"),
                  (p + "attention.wq.weight", (cfg["heads"] * hd, cfg["dim"]), "w"),
                  (p + "attention.wk.weight", (cfg["kv_heads"] * hd, cfg["dim"]), "w"),
                  (p + "attention.wv.weight", (cfg["kv_heads"] * hd, cfg["dim"]), "w"),
                  (p + "attention.wo.weight", (cfg["dim"], cfg["heads"] * hd), "w"),
                  (p + "ffn_norm.weight", (cfg["dim"],), "n"),
                  (p + "feed_forward.w1.weight", (cfg["hidden"], cfg["dim"]), "w"),
                  (p + "feed_forward.w2.weight", (cfg["dim"], cfg["hidden"]), "w"),
                  (p + "feed_forward.w3.weight", (cfg["hidden"], cfg["dim"]), "w")]
        if cfg.get("qk_norm"):
            names += [(p + "attention.q_norm.weight", (hd,), "n"), (p + "attention.k_norm.weight", (hd,), "n")]
    names.append(("norm.weight", (cfg["dim"],), "n"))
    return names


def lcg_model(cfg, seed=1234):
    """Norm weights 1 + 0.4u, matrices u (u uniform in [-0.5, 0.5)), in the order of llama2c_names."""
    g = Lcg(seed)
    out = {}
    for name, shape, kind in llama2c_names(cfg):
        n = int(np.prod(shape))
        v = np.array([g.next() for _ in range(n)], dtype=np.float32)
        out[name] = (1 + 0.4 * v if kind == "n" else v).astype(np.float32).reshape(shape)
    return out


# ---- the reference forward ----
def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(hd, T, theta):
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2)[: hd // 2] / hd))
    f = torch.outer(torch.arange(T), freqs)
    return torch.cos(f), torch.sin(f)


def rope_interleaved(x, cos, sin):  # llama2.c apply_rotary_emb; x [B, T, H, hd]
    xr, xi = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack([xr * c - xi * s, xr * s + xi * c], -1).flatten(3)


def rope_half(x, cos, sin):  # HF apply_rotary_pos_emb with rotate_half
    c = torch.cat([cos, cos], -1)[None, :, None, :]
    s = torch.cat([sin, sin], -1)[None, :, None, :]
    x1, x2 = x.chunk(2, -1)
    return x * c + torch.cat([-x2, x1], -1) * s


def e4m3_round(y):
    """Nearest OCP E4M3 value (half to even, saturating at 448), from the format: 3 mantissa bits, exponent
    bias 7, smallest normal 2^-6, subnormal step 2^-9."""
    a = y.abs().clamp(max=448.0)
    e = torch.floor(torch.log2(a.clamp(min=2.0 ** -6)))
    step = torch.pow(2.0, e - 3)
    return torch.sign(y) * (torch.round(a / step) * step).clamp(max=448.0)


def kv_round(x, scale, fmt):
    """KV-cache grid per kv head: x [B, T, KV, hd], scale [KV]."""
    s = torch.tensor(scale, dtype=x.dtype).view(1, 1, -1, 1)
    y = x / s
    return (torch.round(y).clamp(-127, 127) if fmt == "int8" else e4m3_round(y)) * s


def llama_forward(W, cfg, tokens, layout="interleaved", names=None, eps=1e-5, theta=10000.0, kv=None, observe=None,
                  act=None):
    """names maps llama2.c roles to the checkpoint's keys (identity for llama2.c files). kv: (format, k scales,
    v scales[, H]), one list per layer: the cache's keys (after RoPE) and values rounded per kv head (after
    x -> x H per head when an orthogonal H [head_dim, head_dim] is given, then back with Hᵀ). observe(i, k, v):
    called with layer i's keys and values [B, T, KV, hd] before that. act(x): what every linear of the blocks
    reads instead of its input x (quantized activations); the classifier reads its input as is."""
    names = names or (lambda k: k)
    t = {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in W.items()}
    get = lambda k: t[names(k)]
    opt = lambda k: t.get(names(k))
    H, KV = cfg["heads"], cfg["kv_heads"]
    hd = cfg.get("head_dim") or cfg["dim"] // H
    x = get("tok_embeddings.weight")[torch.tensor(tokens)][None]
    B, T, _ = x.shape
    cos, sin = rope_tables(hd, T, theta)
    rot = rope_interleaved if layout == "interleaved" else rope_half
    A = act or (lambda h: h)
    lin = lambda h, w, b: A(h) @ w.T + (b if b is not None else 0)
    for i in range(cfg["layers"]):
        p = f"layers.{i}."
        h = rms_norm(x, get(p + "attention_norm.weight"), eps)
        q = lin(h, get(p + "attention.wq.weight"), opt(p + "attention.wq.bias")).view(B, T, H, hd)
        k = lin(h, get(p + "attention.wk.weight"), opt(p + "attention.wk.bias")).view(B, T, KV, hd)
        v = lin(h, get(p + "attention.wv.weight"), opt(p + "attention.wv.bias")).view(B, T, KV, hd)
        qn, kn = opt(p + "attention.q_norm.weight"), opt(p + "attention.k_norm.weight")
        if qn is not None:  # HF Qwen3Attention: q_norm / k_norm over each head's vector, then RoPE
            q, k = rms_norm(q, qn, eps), rms_norm(k, kn, eps)
        q, k = rot(q, cos, sin), rot(k, cos, sin)
        if observe:
            observe(i, k, v)
        if kv and len(kv) > 3 and kv[3] is not None:  # a rotated cache: rounded as x H, read back as (.) Hᵀ
            Hm = torch.tensor(kv[3], dtype=k.dtype)
            k, v = kv_round(k @ Hm, kv[1][i], kv[0]) @ Hm.T, kv_round(v @ Hm, kv[2][i], kv[0]) @ Hm.T
        elif kv:
            k, v = kv_round(k, kv[1][i], kv[0]), kv_round(v, kv[2][i], kv[0])
        k = k.repeat_interleave(H // KV, dim=2)  # llama2.c repeat_kv
        v = v.repeat_interleave(H // KV, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(B, T, H * hd)
        x = x + A(o) @ get(p + "attention.wo.weight").T
        h = A(rms_norm(x, get(p + "ffn_norm.weight"), eps))
        a = torch.nn.functional.silu(h @ get(p + "feed_forward.w1.weight").T) * (h @ get(p + "feed_forward.w3.weight").T)
        x = x + A(a) @ get(p + "feed_forward.w2.weight").T
    x = rms_norm(x, get("norm.weight"), eps)
    out = opt("output.weight")
    return x @ (out if out is not None else get("tok_embeddings.weight")).T


# ---- writers ----
def write_llama2c_legacy(path, W, cfg):
    shared = "output.weight" not in W
    hdr = struct.pack("<7i", cfg["dim"], cfg["hidden"], cfg["layers"], cfg["heads"], cfg["kv_heads"],
                      cfg["vocab"] if shared else -cfg["vocab"], cfg["seq"])
    L = range(cfg["layers"])
    order = (["tok_embeddings.weight"] + [f"layers.{i}.attention_norm.weight" for i in L]
             + [f"layers.{i}.attention.{w}.weight" for w in ("wq", "wk", "wv", "wo") for i in L]
             + [f"layers.{i}.ffn_norm.weight" for i in L]
             + [f"layers.{i}.feed_forward.{w}.weight" for w in ("w1", "w2", "w3") for i in L] + ["norm.weight"])
    hd = cfg["dim"] // cfg["heads"]
    cos, sin = rope_tables(hd, cfg["seq"], 10000.0)
    with open(path, "wb") as f:
        f.write(hdr)
        for k in order:
            f.write(np.ascontiguousarray(W[k], dtype=np.float32).tobytes())
        f.write(cos.float().numpy().tobytes() + sin.float().numpy().tobytes())
        if not shared:
            f.write(np.ascontiguousarray(W["output.weight"], dtype=np.float32).tobytes())


def hf_permute(w, n_heads):
    """convert_llama_weights_to_hf.py permute: interleaved pairs -> rotate-half halves."""
    d1, d2 = w.shape
    return w.reshape(n_heads, d1 // n_heads // 2, 2, d2).transpose(0, 2, 1, 3).reshape(d1, d2)


HF_ROLE = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
           "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
           "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
           "feed_forward.w3": "mlp.up_proj", "attention.q_norm": "self_attn.q_norm",
           "attention.k_norm": "self_attn.k_norm"}


def hf_name(k):
    if k == "tok_embeddings.weight":
        return "model.embed_tokens.weight"
    if k == "norm.weight":
        return "model.norm.weight"
    if k == "output.weight":
        return "lm_head.weight"
    _, i, rest = k.split(".", 2)
    role, suffix = rest.rsplit(".", 1)
    return f"model.layers.{i}.{HF_ROLE[role]}.{suffix}"


# ---- tests ----
CFG = dict(dim=32, hidden=48, layers=2, heads=4, kv_heads=2, vocab=40, seq=64)


def random_model(cfg, seed, separate_classifier=False):
    rng = np.random.default_rng(seed)
    W = {n: (1 + 0.2 * rng.standard_normal(s) if kind == "n" else rng.standard_normal(s) / math.sqrt(s[-1]))
         .astype(np.float32) for n, s, kind in llama2c_names(cfg)}
    W["tok_embeddings.weight"] = rng.standard_normal((cfg["vocab"], cfg["dim"])).astype(np.float32)
    if separate_classifier:
        W["output.weight"] = (rng.standard_normal((cfg["vocab"], cfg["dim"])) / math.sqrt(cfg["dim"])).astype(np.float32)
    return W


def mean_nll(logits, tokens, window):
    """The eval protocol on one document scored as given: non-overlapping windows."""
    total, n = 0.0, 0
    for s in range(0, len(tokens), window):
        w = tokens[s:s + window]
        if len(w) < 2:
            continue
        lp = torch.log_softmax(logits(w)[0], -1)
        total -= sum(lp[t, w[t + 1]].item() for t in range(len(w) - 1))
        n += len(w) - 1
    return total / n, n


def eval_json(mc, model, tokens_path, window):
    out = mc("eval", model, "--data", tokens_path, "--tokens-u16", "--window", window, "--json").stdout
    return json.loads(out)["result"]


def test_llama2c_forward_matches_reference(mc, tmp_path):
    W = random_model(CFG, 1, separate_classifier=True)
    model = tmp_path / "tiny.bin"
    write_llama2c_legacy(model, W, CFG)
    tokens = np.random.default_rng(2).integers(0, CFG["vocab"], 50).astype(np.uint16)
    (tmp_path / "t.u16").write_bytes(tokens.tobytes())
    want, n = mean_nll(lambda w: llama_forward(W, CFG, w), tokens.tolist(), 16)
    got = eval_json(mc, model, tmp_path / "t.u16", 16)
    assert got["predicted_tokens"] == n
    assert abs(got["mean_nll"] - want) < 1e-5  # float32 forward vs float64 reference


def test_hf_qwen2_layout_gqa_biases_match_reference(mc, tmp_path):
    cfg = dict(CFG)
    W = random_model(cfg, 3)
    rng = np.random.default_rng(4)
    hd = cfg["dim"] // cfg["heads"]
    for i in range(cfg["layers"]):
        for w, nh in (("wq", cfg["heads"]), ("wk", cfg["kv_heads"]), ("wv", cfg["kv_heads"])):
            W[f"layers.{i}.attention.{w}.bias"] = (0.3 * rng.standard_normal(nh * hd)).astype(np.float32)
    # The HF file holds rotate-half weights: q/k rows (and biases) permuted as convert_llama_weights_to_hf does.
    hf = {}
    for k, v in W.items():
        if ".wq." in k or ".wk." in k:
            nh = cfg["heads"] if ".wq." in k else cfg["kv_heads"]
            v = hf_permute(v if v.ndim == 2 else v[:, None], nh)
            v = v if W[k].ndim == 2 else v[:, 0]
        hf[hf_name(k)] = np.ascontiguousarray(v)
    d = tmp_path / "qwen"
    d.mkdir()
    write_safetensors(d / "model.safetensors", hf)
    (d / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": cfg["dim"], "intermediate_size": cfg["hidden"],
        "num_hidden_layers": cfg["layers"], "num_attention_heads": cfg["heads"],
        "num_key_value_heads": cfg["kv_heads"], "vocab_size": cfg["vocab"], "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu"}))
    tokens = np.random.default_rng(5).integers(0, cfg["vocab"], 40).astype(np.uint16)
    (tmp_path / "t.u16").write_bytes(tokens.tobytes())
    hf_names = lambda k: hf_name(k)
    ref_half = lambda w: llama_forward(hf, cfg, w, "half", hf_names, 1e-6, 1e6)
    ref_pairs = lambda w: llama_forward(W, cfg, w, "interleaved", None, 1e-6, 1e6)
    want, _ = mean_nll(ref_half, tokens.tolist(), 20)
    also, _ = mean_nll(ref_pairs, tokens.tolist(), 20)
    assert abs(want - also) < 1e-9  # the permutation maps one layout onto the other exactly
    got = eval_json(mc, d, tmp_path / "t.u16", 20)
    assert abs(got["mean_nll"] - want) < 1e-5


def test_greedy_generation_matches_reference(mc, tmp_path):
    W = random_model(CFG, 6)
    model = tmp_path / "tiny.bin"
    write_llama2c_legacy(model, W, CFG)
    # A llama2.c tokenizer: <unk>, <s>, </s>, then single letters (no " " token: no dummy prefix).
    vocab = [b"<unk>", b"<s>", b"</s>"] + [bytes([c]) for c in range(ord("a"), ord("a") + CFG["vocab"] - 3)]
    with open(tmp_path / "tokenizer.bin", "wb") as f:
        f.write(struct.pack("<i", 8))
        for i, v in enumerate(vocab):
            f.write(struct.pack("<fi", float(-i), len(v)) + v)
    out = json.loads(mc("generate", model, "--prompt", "abc", "--max-tokens", 12, "--temperature", 0,
                        "--json").stdout)
    ids = [1, 3, 4, 5]
    gen = []
    for _ in range(12):
        nxt = int(llama_forward(W, CFG, ids)[0, -1].argmax())
        if nxt in (1, 2):
            break
        ids.append(nxt)
        gen.append(nxt)
    assert out["ids"] == gen



# ---- Qwen3 ----
# Qwen3-0.6B's config.json keys with tiny widths: heads * head_dim (128) != hidden (64), GQA, no biases, tied.
QWEN3 = dict(dim=64, hidden=96, layers=2, heads=4, kv_heads=2, head_dim=32, vocab=300, qk_norm=True)
# float32 forward vs float64 reference: tied N(0,1) embedding rows of width 64 against a unit-RMS hidden state
# give logits up to ~60, so float32 rounding (relative ~1e-7 per op, summed over 64-wide dot products and two
# blocks) leaves ~1e-5: measured 2.35e-5 (max |logit| 58.5). 2e-4 allows 8x that across BLAS builds; without
# q_norm/k_norm the logits move by more than 0.1 (asserted below).
QWEN3_LOGIT_TOL = 2e-4


def bf16_round(a):
    """The bf16 value of each float32 (round to nearest even, as torch) as float32, and its bit pattern."""
    t = torch.tensor(np.asarray(a, dtype=np.float32), dtype=torch.float32).to(torch.bfloat16)
    return t.to(torch.float32).numpy(), t.view(torch.int16).numpy().view(np.uint16)


def write_bf16_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, bits in tensors.items():
        b = np.ascontiguousarray(bits, dtype=np.uint16).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(bits.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def write_qwen3_dir(d, cfg, seed):
    """A Qwen3ForCausalLM directory with bf16 weights; returns the weights (bf16 values) by HF name."""
    W = random_model(cfg, seed)
    d.mkdir()
    hf, bits = {}, {}
    for k, v in W.items():
        hf[hf_name(k)], bits[hf_name(k)] = bf16_round(v)
    write_bf16_safetensors(d / "model.safetensors", bits)
    (d / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": cfg["dim"],
        "intermediate_size": cfg["hidden"], "num_hidden_layers": cfg["layers"],
        "num_attention_heads": cfg["heads"], "num_key_value_heads": cfg["kv_heads"], "head_dim": cfg["head_dim"],
        "rms_norm_eps": 1e-6, "rope_theta": 1000000, "vocab_size": cfg["vocab"], "tie_word_embeddings": True,
        "max_position_embeddings": 40960, "attention_bias": False, "attention_dropout": 0.0, "hidden_act": "silu",
        "torch_dtype": "bfloat16", "use_sliding_window": False, "sliding_window": None, "bos_token_id": 151643,
        "eos_token_id": 151645}))
    return hf


def our_logits(model, tokens, tmp_path):
    """Our forward's logits [T, vocab] through the hidden Catch2 case [.logits]."""
    binary = catch2_binary()
    if not os.path.exists(binary):
        pytest.skip(f"test binary not built at {binary} (set MC_TESTS_BIN)")
    out = tmp_path / "logits.safetensors"
    env = {**os.environ, "MC_LOGITS_MODEL": str(model), "MC_LOGITS_TOKENS": ",".join(map(str, tokens)),
           "MC_LOGITS_OUT": str(out)}
    p = subprocess.run([binary, "[.logits]"], env=env, capture_output=True, text=True)
    assert p.returncode == 0 and out.exists(), p.stdout + p.stderr
    from conftest import read_safetensors
    return torch.tensor(read_safetensors(out)[0]["logits"].astype(np.float64))


def test_hf_qwen3_qk_norm_head_dim_match_reference(mc, tmp_path):
    cfg = QWEN3
    hf = write_qwen3_dir(tmp_path / "qwen3", cfg, 11)
    tokens = np.random.default_rng(12).integers(0, cfg["vocab"], 40).astype(np.uint16)
    ref = lambda w: llama_forward(hf, cfg, w, "half", hf_name, 1e-6, 1e6)
    want = ref(tokens.tolist())[0]
    got = our_logits(tmp_path / "qwen3", tokens.tolist(), tmp_path)
    diff = (got - want).abs().max().item()
    print(f"qwen3 max |logit diff| ours (float32) vs float64 reference: {diff:.3g} (max |logit| {want.abs().max():.3g})")
    assert diff < QWEN3_LOGIT_TOL
    # The reference without the q/k norms is far from ours: the check sees them.
    no_norm = {k: v for k, v in hf.items() if "q_norm" not in k and "k_norm" not in k}
    assert len(no_norm) == len(hf) - 2 * cfg["layers"]
    assert (llama_forward(no_norm, cfg, tokens.tolist(), "half", hf_name, 1e-6, 1e6)[0] - got).abs().max() > 0.1
    # The CLI's eval scores the same forward (tokenizer-free token file).
    (tmp_path / "t.u16").write_bytes(tokens.tobytes())
    want_nll, n = mean_nll(ref, tokens.tolist(), 20)
    res = eval_json(mc, tmp_path / "qwen3", tmp_path / "t.u16", 20)
    assert res["predicted_tokens"] == n
    assert abs(res["mean_nll"] - want_nll) < 1e-5  # float32 forward vs float64 reference, as above
    # An exporter that would drop the q/k norms refuses: exit 2, one line, nothing written. (GGUF writes them
    # as llama.cpp's qwen3: test_llamacpp_families.py.)
    for fmt in ("llama2c-q8",):
        out = tmp_path / ("out-" + fmt.replace(":", "-"))
        p = mc("export", "--format", fmt, tmp_path / "qwen3", "-o", out, check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "q/k norms" in p.stderr, p.stderr
        assert not out.exists()


# ---- padded vocabularies: an embedding with more rows than the tokenizer has tokens ----
def write_letter_tokenizer(path, n):
    """A llama2.c tokenizer of n tokens: <unk>, <s>, </s>, then single ASCII characters from 'A'."""
    vocab = [b"<unk>", b"<s>", b"</s>"] + [bytes([c]) for c in range(ord("A"), ord("A") + n - 3)]
    assert all(v.isascii() for v in vocab)
    with open(path, "wb") as f:
        f.write(struct.pack("<i", 8))
        for i, v in enumerate(vocab):
            f.write(struct.pack("<fi", float(-i), len(v)) + v)


def test_padded_vocabulary_evaluates_and_generates(mc, tmp_path):
    cfg = dict(CFG, vocab=60)  # 60 embedding rows, 40 tokens: rows 40..59 are padding (as Qwen's 151936 vs 151669)
    W = random_model(cfg, 9, separate_classifier=True)
    W["output.weight"][40:] *= 2  # padding ids win the argmax often: generation must survive them
    model = tmp_path / "tiny.bin"
    write_llama2c_legacy(model, W, cfg)
    write_letter_tokenizer(tmp_path / "tokenizer.bin", 40)
    (tmp_path / "text.txt").write_text("abcdeabcdeab\n")
    res = json.loads(mc("eval", model, "--data", tmp_path / "text.txt", "--window", 16, "--json").stdout)["result"]
    ids = [1] + [3 + ord(c) - ord("A") for c in "abcdeabcdeab"]  # BOS + one token per character
    want, n = mean_nll(lambda w: llama_forward(W, cfg, w), ids, 16)
    assert res["predicted_tokens"] == n
    assert abs(res["mean_nll"] - want) < 1e-5  # the softmax runs over all 60 rows, padding included
    out = json.loads(mc("generate", model, "--prompt", "abc", "--max-tokens", 12, "--temperature", 0,
                        "--json").stdout)
    ids = [1] + [3 + ord(c) - ord("A") for c in "abc"]
    gen = []
    for _ in range(12):
        nxt = int(llama_forward(W, cfg, ids)[0, -1].argmax())
        if nxt in (1, 2):
            break
        ids.append(nxt)
        gen.append(nxt)
    assert out["ids"] == gen
    assert any(i >= 40 for i in gen), gen  # an id the tokenizer cannot decode was produced...
    assert out["text"] == "abc" + "".join(chr(ord("A") + i - 3) for i in gen if 3 <= i < 40)  # ...and shows as nothing


def test_tokenizer_larger_than_embedding_exits_2(mc, tmp_path):
    cfg = dict(CFG, vocab=30)
    model = tmp_path / "tiny.bin"
    write_llama2c_legacy(model, random_model(cfg, 10), cfg)
    tok = tmp_path / "tokenizer.bin"
    write_letter_tokenizer(tok, 40)
    (tmp_path / "text.txt").write_text("abc\n")
    for args in (("eval", model, "--data", tmp_path / "text.txt"), ("generate", model, "--prompt", "abc")):
        p = mc(*args, check=False)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and str(tok) in lines[0] and "40" in lines[0] and "30" in lines[0], p.stderr

def main():
    torch.set_default_dtype(torch.float64)
    cfg = dict(dim=16, hidden=24, layers=2, heads=4, kv_heads=2, vocab=32, seq=16)
    W = lcg_model(cfg)
    tokens = [1, 5, 9, 3, 17, 30, 2, 11]
    logits = llama_forward(W, cfg, tokens)[0]
    for t, v in ((0, 0), (3, 7), (7, 31), (5, 12)):
        print(f"{{{t}, {v}, {logits[t, v].item():.7f}}},")


if __name__ == "__main__":
    main()
