"""The llama runtime against an independent PyTorch reference written here from llama2.c model.py
(interleaved RoPE) and Hugging Face modeling_llama / modeling_qwen2 (rotate-half RoPE, q/k/v biases):
tiny random models are written by this file (a llama2.c legacy .bin; a Hugging Face directory), the
CLI scores a token file (`mcompress eval --json`) and greedily generates (`mcompress generate --json`),
and both must agree with the reference. Run as a script, it prints the logits hard-coded in
tests/unit/test_model.cpp (the LCG model there)."""
import json
import math
import struct

import numpy as np
import pytest
import torch

from conftest import write_safetensors



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
    hd = cfg["dim"] // cfg["heads"]
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


def llama_forward(W, cfg, tokens, layout="interleaved", names=None, eps=1e-5, theta=10000.0):
    """names maps llama2.c roles to the checkpoint's keys (identity for llama2.c files)."""
    names = names or (lambda k: k)
    t = {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in W.items()}
    get = lambda k: t[names(k)]
    opt = lambda k: t.get(names(k))
    H, KV = cfg["heads"], cfg["kv_heads"]
    hd = cfg["dim"] // H
    x = get("tok_embeddings.weight")[torch.tensor(tokens)][None]
    B, T, _ = x.shape
    cos, sin = rope_tables(hd, T, theta)
    rot = rope_interleaved if layout == "interleaved" else rope_half
    lin = lambda h, w, b: h @ w.T + (b if b is not None else 0)
    for i in range(cfg["layers"]):
        p = f"layers.{i}."
        h = rms_norm(x, get(p + "attention_norm.weight"), eps)
        q = lin(h, get(p + "attention.wq.weight"), opt(p + "attention.wq.bias")).view(B, T, H, hd)
        k = lin(h, get(p + "attention.wk.weight"), opt(p + "attention.wk.bias")).view(B, T, KV, hd)
        v = lin(h, get(p + "attention.wv.weight"), opt(p + "attention.wv.bias")).view(B, T, KV, hd)
        q, k = rot(q, cos, sin), rot(k, cos, sin)
        k = k.repeat_interleave(H // KV, dim=2)  # llama2.c repeat_kv
        v = v.repeat_interleave(H // KV, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(B, T, H * hd)
        x = x + o @ get(p + "attention.wo.weight").T
        h = rms_norm(x, get(p + "ffn_norm.weight"), eps)
        a = torch.nn.functional.silu(h @ get(p + "feed_forward.w1.weight").T) * (h @ get(p + "feed_forward.w3.weight").T)
        x = x + a @ get(p + "feed_forward.w2.weight").T
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
           "feed_forward.w3": "mlp.up_proj"}


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
