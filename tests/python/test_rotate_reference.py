"""Hadamard rotations (mcompress quantize/convert --rotate) checked from outside, as the QuaRot paper
(Ashkboos et al. 2024) defines them: stories260K rotated by `mcompress convert --rotate` is read back with
numpy and run through the float64 reference forward of test_model_reference.py (written from llama2.c's
model.py); it must give the original model's logits. The residual rotation Q is recovered from the
embeddings (E' = E Q) and must be orthogonal with entries ±1/sqrt(dim) (a Hadamard matrix with random
signs), the norms must be folded (all ones) and every linear reading the stream must be W diag(w) Q. The
online R4 on down_proj is rebuilt here from the construction hadamard.h documents: stories260K's hidden size
172 = 4 x 43 has no Sylvester x Paley factorisation, so it is the seeded random orthogonal fallback (QR of a
float64 N(0, 1) matrix drawn from a generator seeded with 0x5eed0000 + n, columns' signs fixed by R's
diagonal), which PyTorch 1.13 reproduces; the Paley constructions are checked on a synthetic size. Finally a rotated W4A8 model written by `quantize` evaluates under
`mcompress eval` to the report's own figure (the online Hadamard and the int8 inputs come back from the
file's metadata)."""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from conftest import read_safetensors, shared
from test_model_reference import float64_reference, llama_forward  # noqa: F401 (the autouse fixture)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
import hf_families  # noqa: E402

# The reference runs in float64 on weights stored in float32 (rounded once after the float64 rotation):
# ~1e-7 relative per weight; 1e-4 is the bound for "the same logits".
EQUIVALENT = 1e-4




def config_of(meta):
    c = {k: int(meta[k]) for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size")}
    return {"dim": c["dim"], "hidden": c["hidden_dim"], "layers": c["n_layers"], "heads": c["n_heads"],
            "kv_heads": c["n_kv_heads"], "vocab": c["vocab_size"]}


def sylvester(m):
    h = np.ones((1, 1))
    while h.shape[0] < m:
        h = np.block([[h, h], [h, -h]])
    return h


def paley1(q):
    """Paley I for a prime q ≡ 3 (mod 4): H = I + [[0, 1ᵀ], [-1, Q]], Q[i][j] = Legendre(j - i)."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = lambda a: 0 if a % q == 0 else (1 if a % q in squares else -1)
    Q = np.array([[chi(j - i) for j in range(q)] for i in range(q)], dtype=np.float64)
    S = np.zeros((q + 1, q + 1))
    S[0, 1:], S[1:, 0], S[1:, 1:] = 1, -1, Q
    return np.eye(q + 1) + S


def logits(W, cfg, tokens):
    return llama_forward(W, cfg, tokens).numpy()


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    model = shared("stories260K/stories260K.bin")
    return model, tmp_path_factory.mktemp("rotate")


def original_and_rotated(mc, stories, rotation):
    """stories260K's weights as written by convert, and rotated by convert --rotate ROTATION, with the config."""
    model, d = stories
    mc("convert", model, d / "orig.safetensors", "-q")
    mc("convert", model, d / f"{rotation}.safetensors", "--rotate", rotation, "-q")
    W0, meta0 = read_safetensors(d / "orig.safetensors")
    W1, meta1 = read_safetensors(d / f"{rotation}.safetensors")
    return W0, W1, meta1, config_of(meta0)


def test_rotated_stories260k_computes_the_same_logits(mc, stories):
    W0, W1, meta1, cfg = original_and_rotated(mc, stories, "hadamard")
    assert json.loads(meta1["mcompress.rotation"])["online_hadamard"] == []
    tokens = list(np.random.default_rng(0).integers(0, cfg["vocab"], 48))
    ref = logits(W0, cfg, tokens)
    assert rel(logits(W1, cfg, tokens), ref) < EQUIVALENT
    # Norms folded: every RMSNorm weight is 1 now; the final norm's weight went into an untied classifier.
    for k, v in W1.items():
        if k.endswith("norm.weight"):
            assert np.all(v == 1), k
    assert "output.weight" not in W0 and "output.weight" in W1
    # R1 from the embeddings: E1 = E0 Q with Q orthogonal, entries ±1/sqrt(dim) (signs times a Hadamard).
    E0, E1 = W0["tok_embeddings.weight"].astype(np.float64), W1["tok_embeddings.weight"].astype(np.float64)
    Q = np.linalg.lstsq(E0, E1, rcond=None)[0]
    n = cfg["dim"]
    assert np.abs(Q @ Q.T - np.eye(n)).max() < 1e-4
    assert np.abs(np.abs(Q) * math.sqrt(n) - 1).max() < 1e-3
    # Linears reading the stream: W diag(norm) Q; writing to it: Qᵀ W (checked on block 0).
    for name, norm in (("attention.wq", "attention_norm"), ("feed_forward.w1", "ffn_norm")):
        want = (W0[f"layers.0.{name}.weight"] * W0[f"layers.0.{norm}.weight"]) @ Q
        assert np.abs(W1[f"layers.0.{name}.weight"] - want).max() < 1e-4 * np.abs(want).max()
    want = Q.T @ W0["layers.0.feed_forward.w2.weight"]
    assert np.abs(W1["layers.0.feed_forward.w2.weight"] - want).max() < 1e-4 * np.abs(want).max()
    want = (W0["tok_embeddings.weight"] * W0["norm.weight"]) @ Q  # the tied classifier, final norm folded
    assert np.abs(W1["output.weight"] - want).max() < 1e-4 * np.abs(want).max()


def test_online_r4_is_the_documented_hadamard(mc, stories):
    W0, W2, meta2, cfg = original_and_rotated(mc, stories, "hadamard-online")
    online = json.loads(meta2["mcompress.rotation"])["online_hadamard"]
    assert online == [f"layers.{i}.feed_forward.w2" for i in range(cfg["layers"])]
    n = cfg["hidden"]
    assert n == 172  # 4 x 43: no Paley factor; the documented random orthogonal fallback
    g = torch.Generator().manual_seed(0x5EED0000 + n)
    Qr, R = torch.linalg.qr(torch.normal(0.0, 1.0, (n, n), generator=g, dtype=torch.float64))
    s = torch.sign(torch.diagonal(R))
    s[s == 0] = 1
    H = (Qr * s[None, :]).numpy()
    assert np.abs(H @ H.T - np.eye(n)).max() < 1e-12
    tokens = list(np.random.default_rng(1).integers(0, cfg["vocab"], 40))
    ref = logits(W0, cfg, tokens)
    # Without the online transform the stored weights (W H) compute something else...
    assert rel(logits(W2, cfg, tokens), ref) > 1e-2
    # ... and with x -> x H before down_proj, the original function: (x H) W_storedᵀ = x (W_stored Hᵀ)ᵀ, so the
    # reference reads W_stored Hᵀ.
    online_W = dict(W2)
    for name in online:
        online_W[name + ".weight"] = W2[name + ".weight"].astype(np.float64) @ H.T
    assert rel(logits(online_W, cfg, tokens), ref) < EQUIVALENT


def test_paley_construction_as_documented(mc, tmp_path):
    """Sizes 24 = 12 x 2 (Paley I, q 11) and 40 = 20 x 2 (Paley I, q 19): a synthetic llama2.c model rotated with
    --rotate hadamard-online keeps its logits under the reference, with down_proj's online H rebuilt here."""
    from test_model_reference import random_model, write_llama2c_legacy
    cfg = {"dim": 24, "hidden": 40, "layers": 2, "heads": 2, "kv_heads": 1, "vocab": 32, "seq": 64}
    W = random_model(cfg, 5, separate_classifier=True)
    write_llama2c_legacy(tmp_path / "m.bin", W, cfg)
    mc("convert", tmp_path / "m.bin", tmp_path / "m.safetensors", "-q")
    mc("convert", tmp_path / "m.bin", tmp_path / "r.safetensors", "--rotate", "hadamard-online", "-q")
    W0, _ = read_safetensors(tmp_path / "m.safetensors")
    W1, meta = read_safetensors(tmp_path / "r.safetensors")
    H = np.kron(paley1(19), sylvester(2)) / math.sqrt(40)
    assert np.abs(H @ H.T - np.eye(40)).max() < 1e-12
    assert np.all(np.abs(np.abs(H) * math.sqrt(40) - 1) < 1e-12)
    W1 = dict(W1)
    for name in json.loads(meta["mcompress.rotation"])["online_hadamard"]:
        W1[name + ".weight"] = W1[name + ".weight"].astype(np.float64) @ H.T
    tokens = list(np.random.default_rng(2).integers(0, cfg["vocab"], 30))
    assert rel(logits(W1, cfg, tokens), logits(W0, cfg, tokens)) < EQUIVALENT


def test_rotated_w4a8_file_evaluates_to_the_report(mc, stories):
    model, d = stories
    text = shared("tinystories/validation_100.txt")
    calib = shared("tinyshakespeare/input.txt")
    out = d / "w4a8"
    mc("quantize", model, "--method", "rtn", "--bits", "4", "--group-size", "32", "--rotate", "hadamard-online",
       "--act-bits", "8", "--calib", calib, "--calib-samples", "8", "--eval", text, "--truncate", "--max-docs", "40",
       "-o", out, "-q")
    rep = json.loads((out / "report.json").read_text())
    assert "R4 online" in rep["settings"]["rotation"]
    assert rep["settings"]["activations"].startswith("int8 per token")
    _, meta = read_safetensors(out / "model.safetensors")
    assert len(json.loads(meta["mcompress.rotation"])["online_hadamard"]) == 5
    assert len(json.loads(meta["mcompress.activations"])["layers"]) == 35
    got = {m["name"]: m for m in rep["metrics"]}
    j = json.loads(mc("eval", out, "--data", text, "--truncate", "--max-docs", "40",
                      "--tokenizer", shared("stories260K/tok512.bin"), "--json").stdout)
    assert got["bits per byte"]["compressed"] == pytest.approx(j["result"]["bits_per_byte"], rel=1e-9)
    # The offline rotation exports; the online one is refused with the reason.
    p = mc("export", out, "--format", "gguf:q8_0", "-o", d / "x.gguf", check=False)
    assert p.returncode == 2 and "hadamard-online" in p.stderr


def test_offline_rotation_exports_to_gguf(mc, stories):
    """--rotate hadamard is weights only: the GGUF file (llama.cpp's ops, no online transform) evaluates as the
    report says, up to the float16 of the layers whose codes GGUF cannot carry (down_proj: 172 columns, not a
    multiple of 32) and of the dense tensors (3e-5 bits per byte for the directory export measured by hand)."""
    model, d = stories
    text, tok = shared("tinystories/validation_100.txt"), shared("stories260K/tok512.bin")
    out = d / "w4-offline"
    mc("quantize", model, "--method", "rtn", "--bits", "4", "--group-size", "32", "--rotate", "hadamard",
       "--eval", text, "--truncate", "--max-docs", "40", "-o", out, "-q")
    rep = json.loads((out / "report.json").read_text())
    assert json.loads(read_safetensors(out / "model.safetensors")[1]["mcompress.rotation"])["online_hadamard"] == []
    mc("export", out / "model.safetensors", "--format", "gguf:auto", "-o", d / "w4-offline.gguf", "-q")
    j = json.loads(mc("eval", d / "w4-offline.gguf", "--data", text, "--truncate", "--max-docs", "40",
                      "--tokenizer", tok, "--json").stdout)
    got = {m["name"]: m for m in rep["metrics"]}["bits per byte"]["compressed"]
    assert j["result"]["bits_per_byte"] == pytest.approx(got, abs=5e-4)


@pytest.mark.parametrize("family", ["qwen2.5-0.5b", "qwen3-0.6b", "mistral-7b-v0.3", "phi-3-mini-4k", "gemma-2-2b"])
def test_families_rotate_to_the_same_scores(mc, tmp_path, family):
    """The real families' tiny checkpoints (Hugging Face names, bf16, real vocabularies; tests/fixtures): the
    rotated float model scores a text as the original does (float32 forwards: 1e-5 relative mean NLL; 1e-8 seen),
    and Gemma 2 is refused with its reason."""
    d = tmp_path / family
    hf_families.write_family(d, family)
    p = mc("convert", d, tmp_path / "r.safetensors", "--rotate", "hadamard-online", check=False)
    if family.startswith("gemma"):
        assert p.returncode == 2 and "sandwich norms" in p.stderr
        return
    assert p.returncode == 0, p.stderr
    text = shared("tinystories/validation_100.txt")
    nll = lambda m: json.loads(mc("eval", m, "--data", text, "--tokenizer", d / "tokenizer.json", "--truncate",
                                  "--max-docs", "10", "--json").stdout)["result"]["mean_nll"]
    assert nll(tmp_path / "r.safetensors") == pytest.approx(nll(d), rel=1e-5)
