"""Evaluation that streams the model block by block (issue 17): windows go through block k all together, then
block k+1; bf16/f16 weights stay as stored (mapped) and are widened per layer while it runs; --max-tokens bounds
the work; a plan line and progress say how long it will take; --compute bf16 trades exactness for speed.

Oracles: a float32 copy of the same bf16 weights (widening is exact, so the narrow-kept model must score
bit-identically), the scores of the same windows evaluated another way (a shorter token file, one window per
pass), and the float32 compute for bf16 compute's stated tolerance."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import mcompress_bin, read_safetensors, write_safetensors

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
import hf_families  # noqa: E402

WINDOW = 32


def _tokens(path, n, vocab, seed=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, n).astype(np.uint32)
    ids.tofile(path)
    return ids


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny Llama-3.2-1B-shaped model in bf16, and the same values widened to float32."""
    d = tmp_path_factory.mktemp("stream")
    bf = d / "bf16"
    cfg = hf_families.write_family(bf, "llama-3.2-1b", seed=5, tokenizer=False, residual_scale=4.0)
    f32 = d / "f32"
    f32.mkdir()
    shutil.copy(bf / "config.json", f32 / "config.json")
    t, meta = read_safetensors(bf / "model.safetensors")
    wide = {k: (v.astype(np.uint32) << 16).view(np.float32) for k, v in t.items()}  # every tensor is BF16
    write_safetensors(f32 / "model.safetensors", wide, meta)
    toks = d / "tokens.u32"
    _tokens(toks, 5 * WINDOW + 7, cfg["vocab_size"])
    return d, bf, f32, toks, cfg


def _eval(mc, model, toks, *extra):
    p = mc("eval", model, "--data", toks, "--tokens-u32", "--window", WINDOW, "--json", *extra)
    return json.loads(p.stdout)["result"]


def test_bf16_kept_narrow_scores_exactly_as_float32(mc, models):
    d, bf, f32, toks, cfg = models
    a, b = _eval(mc, bf, toks), _eval(mc, f32, toks)
    assert a["predicted_tokens"] == b["predicted_tokens"] == 5 * (WINDOW - 1) + 6
    assert a["nll_sum"] == b["nll_sum"], (a["nll_sum"], b["nll_sum"])


def test_max_tokens_stops_after_n_predicted_tokens(mc, models, tmp_path):
    d, bf, f32, toks, cfg = models
    n = 2 * (WINDOW - 1) + 10  # two whole windows and 10 tokens of the third (11 tokens long)
    r = _eval(mc, bf, toks, "--max-tokens", n)
    assert r["predicted_tokens"] == n and r["windows"] == 3
    assert "stopped after %d predicted tokens" % n in r["protocol"]
    # Oracle: the same 2 * WINDOW + 11 tokens as a file of their own, scored whole.
    ids = np.fromfile(toks, dtype=np.uint32)[:2 * WINDOW + 11]
    short = tmp_path / "short.u32"
    ids.tofile(short)
    s = _eval(mc, bf, short)
    assert s["predicted_tokens"] == n
    assert r["nll_sum"] == pytest.approx(s["nll_sum"], rel=1e-9, abs=0)


def test_one_window_per_pass_scores_as_one_pass(mc, models):
    d, bf, f32, toks, cfg = models
    whole = _eval(mc, bf, toks)
    split = _eval(mc, bf, toks, "--pass-mb", 1)  # 1 MB: a few windows per pass
    assert whole["passes"] == 1 and split["passes"] > 1 and split["windows"] == 6
    assert split["nll_sum"] == pytest.approx(whole["nll_sum"], rel=1e-9, abs=0)
    assert split["forward_gflops"] > 0 and split["matmul_gflops"] > 0


def test_plan_line_and_progress(mc, models):
    d, bf, f32, toks, cfg = models
    out = mc("eval", bf, "--data", toks, "--tokens-u32", "--window", WINDOW, "--pass-mb", 1).stdout
    plan = [l for l in out.splitlines() if l.startswith("eval: ")]
    m = re.search(r"\d+ tokens \(6 windows\) through 2 blocks in (\d+) passes: [\d.]+ GFLOP, about", plan[0] if plan else "")
    assert len(plan) == 1 and m and int(m.group(1)) > 1, out
    assert "at this machine's matmul speed" in plan[0]
    n = m.group(1)
    assert any(l.startswith(f"eval pass {n}/{n} block 2/2") for l in out.splitlines()), out
    assert "throughput  forward" in out and "x at::matmul on the same layer shapes" in out
    # --log-json: progress events from plan to done.
    lines = mc("eval", bf, "--data", toks, "--tokens-u32", "--window", WINDOW, "--log-json").stdout.splitlines()
    ev = [json.loads(l) for l in lines if l.startswith("{")]
    stages = [e["phase"] for e in ev if e.get("event") == "progress"]
    assert stages[0] == "plan" and stages[-1] == "done" and "block" in stages and "head" in stages


def test_bf16_compute_is_close_to_float32(mc, models):
    d, bf, f32, toks, cfg = models
    a, b = _eval(mc, bf, toks), _eval(mc, bf, toks, "--compute", "bf16")
    rel = abs(b["mean_nll"] - a["mean_nll"]) / a["mean_nll"]
    print(f"mean NLL f32 {a['mean_nll']:.6f}, bf16 compute {b['mean_nll']:.6f} (relative {rel:.2e})")
    assert rel < 1e-3
    assert b["nll_sum"] != a["nll_sum"]  # it did compute in bf16


@pytest.mark.parametrize("args,expect", [(["--max-tokens", "-1"], "--max-tokens"),
                                         (["--compute", "fp8"], "--compute must be f32 or bf16"),
                                         (["--pass-mb", "0"], "--pass-mb")])
def test_bad_options_exit_2(mc, models, args, expect):
    d, bf, f32, toks, cfg = models
    p = mc("eval", bf, "--data", toks, "--tokens-u32", *args, check=False)
    assert p.returncode == 2 and expect in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    """A 512-token model (so a top-k file can hold every logit) and its RTN W3 g32 quantization."""
    d = tmp_path_factory.mktemp("topk")
    base = d / "base"
    cfg = hf_families.write_family(base, "llama-3.2-1b", seed=9, tokenizer=False, residual_scale=4.0, vocab_size=512,
                                   bos_token_id=1, eos_token_id=2)
    q = d / "w3"
    subprocess.run([mcompress_bin(), "quantize", base, "--method", "rtn", "--bits", "3", "--group-size", "32", "-o", q,
                    "-q"], check=True, capture_output=True)
    toks = d / "tokens.u32"
    _tokens(toks, 3 * WINDOW + 5, 512, seed=4)
    return base, q, toks


def test_kl_against_saved_topk_equals_kl_against_the_model(mc, small_vocab, tmp_path):
    base, q, toks = small_vocab
    full = tmp_path / "full.safetensors"
    r0 = _eval(mc, base, toks, "--save-topk", full, "--topk", 512)
    ref = _eval(mc, q, toks, "--reference", base)
    saved = _eval(mc, q, toks, "--kl-base", full)
    print(f"KL vs the model {ref['mean_kl']:.6g}, vs its saved logits {saved['mean_kl']:.6g}")
    assert saved["mean_kl"] == pytest.approx(ref["mean_kl"], rel=1e-4)
    assert saved["top1_agreement"] == ref["top1_agreement"]
    assert "KL against the saved top-512 baseline" in saved["protocol"]
    # The base against itself: zero and full agreement.
    same = _eval(mc, base, toks, "--kl-base", full)
    assert abs(same["mean_kl"]) < 1e-6 and same["top1_agreement"] == 1.0
    # Top 8 only: a lower bound of the full KL (the other 504 tokens pooled in one bucket).
    k8 = tmp_path / "k8.safetensors"
    _eval(mc, base, toks, "--save-topk", k8, "--topk", 8)
    low = _eval(mc, q, toks, "--kl-base", k8)
    assert 0 < low["mean_kl"] <= ref["mean_kl"] * (1 + 1e-6)
    assert low["top1_agreement"] == ref["top1_agreement"]
    # Another protocol predicts other positions: one line, exit 2.
    p = mc("eval", q, "--data", toks, "--tokens-u32", "--window", WINDOW, "--max-tokens", 40, "--kl-base", full,
           check=False)
    assert p.returncode == 2 and "predicted positions" in p.stderr and len(p.stderr.strip().splitlines()) == 1
