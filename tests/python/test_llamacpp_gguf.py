"""Our GGUF files run by the real llama.cpp: node-llama-cpp's prebuilt CPU build (npm; installed by
scripts/install_llamacpp.sh into MCOMPRESS_NPM_DIR, default ~/.cache/mcompress-npm) loads stories260K
exported as q4_0, q8_0, q4_k_m, auto and the low-bit types q2_k, q3_k, iq4_nl, iq4_xs, tokenizes a prompt with the tokenizer we wrote into the file,
and its greedy continuation equals ours (`mcompress generate --temperature 0` on the same file).
That checks the header, key/values, tensor names and layouts, the block bytes, the RoPE order and the
tokenizer metadata together. stories260K's rows (64, 172) are shorter than the 256-value super-blocks, so
its q2_k/q3_k files hold Q4_0 and its iq4_xs file IQ4_NL, as llama.cpp's own fallback gives (the test says which
types the file holds); the Q2_K/Q3_K/IQ4_XS bytes themselves are checked against ggml's decoder in
test_gguf_lowbit.py. Skipped when node or the package is missing (no npm registry)."""
import os
import shutil
import sys
import subprocess

import pytest

from conftest import mcompress_bin, shared

NPM_DIR = os.environ.get("MCOMPRESS_NPM_DIR", os.path.expanduser("~/.cache/mcompress-npm"))
PROMPT = "Once upon a time, there was a little girl"
TOKENS = 30

SCRIPT = """
import {getLlama} from "node-llama-cpp";
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: process.argv[2]});
const ctx = await model.createContext({contextSize: 256});
const seq = ctx.getSequence();
const out = [];
for await (const t of seq.evaluate(model.tokenize(process.argv[3]), {temperature: 0})) {
  out.push(t);
  if (out.length >= Number(process.argv[4])) break;
}
process.stdout.write(model.detokenize(out));
"""


@pytest.fixture(scope="module")
def llamacpp():
    if not shutil.which("node") or not os.path.exists(os.path.join(NPM_DIR, "node_modules", "node-llama-cpp")):
        pytest.skip(f"node-llama-cpp not installed in {NPM_DIR} (scripts/install_llamacpp.sh needs the npm registry)")
    script = os.path.join(NPM_DIR, "mcompress_greedy.mjs")  # beside node_modules, so the import resolves
    with open(script, "w") as f:
        f.write(SCRIPT)

    def run(gguf):
        p = subprocess.run(["node", script, str(gguf), PROMPT, str(TOKENS)], capture_output=True, text=True,
                           cwd=NPM_DIR, timeout=300)
        assert p.returncode == 0, p.stderr
        return p.stdout
    return run


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    model = shared("stories260K/stories260K.bin")
    text = shared("tinystories/validation_100.txt")
    tok = shared("stories260K/tok512.bin")
    d = tmp_path_factory.mktemp("llamacpp")
    out = {}
    for bits, fmts in ((4, ["q4_0", "q4_k_m", "auto", "q2_k", "q3_k", "iq4_nl", "iq4_xs"]), (8, ["q8_0"])):
        q = d / f"gptq{bits}"
        subprocess.run([mcompress_bin(), "quantize", "--method", "gptq", "--bits", str(bits), "--group-size", "32",
                        "--quantize-embeddings", model, "-o", q, "--calib", text, "--calib-samples", "32", "-q"],
                       check=True)
        for f in fmts:
            g = d / f"stories260K-{f}.gguf"
            subprocess.run([mcompress_bin(), "export", "--format", "gguf:" + f, q / "model.safetensors", "-o", g,
                            "--tokenizer", tok, "-q"], check=True, capture_output=True)
            out[f] = g
    return out, tok


# Words of the greedy continuation that must agree. llama.cpp computes differently from us (its
# quantized matmuls quantize the activations to 8 bits, F16 tensors multiply F16-rounded activations),
# so a near-tie can branch: with the int8 model, after "She loved to play" llama.cpp takes "with her
# toys" and we (like the float model) "outside in the park". Where the files hold our int4 codes,
# all 30 tokens agree.
AGREE_WORDS = {"q4_0": None, "q4_k_m": None, "auto": None, "q8_0": 6,  # None: the whole continuation
               "q2_k": None, "q3_k": None, "iq4_nl": None, "iq4_xs": None}
# What stories260K's linear weights become (rows of 64 and 172: llama.cpp's fallbacks; ffn_down's 172 is not a
# multiple of 32 either, so it is F16 in every file).
LOWBIT_HOLDS = {"q2_k": "Q4_0", "q3_k": "Q4_0", "iq4_nl": "IQ4_NL", "iq4_xs": "IQ4_NL"}


@pytest.mark.parametrize("fmt", ["q4_0", "q8_0", "q4_k_m", "auto", "q2_k", "q3_k", "iq4_nl", "iq4_xs"])
def test_llamacpp_runs_our_gguf_like_we_do(llamacpp, exports, mc, fmt):
    files, tok = exports
    if fmt in LOWBIT_HOLDS:
        table = mc("inspect", files[fmt]).stdout
        assert "blk.0.attn_q.weight" in table and LOWBIT_HOLDS[fmt] in table, table
    theirs = llamacpp(files[fmt]).split()
    ours = mc("generate", files[fmt], "--prompt", PROMPT, "--max-tokens", TOKENS, "--temperature", "0",
              "--tokenizer", tok, "-q").stdout.split()[len(PROMPT.split()):]
    assert len(theirs) >= 15, theirs  # a real continuation, not an empty or broken one
    n = AGREE_WORDS[fmt] or len(theirs)
    assert ours[:n] == theirs[:n], f"llama.cpp: {' '.join(theirs)!r}\nmcompress: {' '.join(ours)!r}"


@pytest.fixture(scope="module")
def padded_exports(tmp_path_factory):
    """stories260K widened to rows of 256 with zeros (tests/fixtures/pad_llama2c.py: the same function), so that
    every linear weight really is Q2_K / Q3_K / IQ4_XS: the float model exported directly (values fitted)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
    import pad_llama2c
    tok = shared("stories260K/tok512.bin")
    d = tmp_path_factory.mktemp("llamacpp_pad")
    pad_llama2c.pad(shared("stories260K/stories260K.bin"), d / "stories256.bin")
    out = {}
    for f in ("q2_k", "q3_k", "iq4_xs"):
        out[f] = d / f"stories256-{f}.gguf"
        subprocess.run([mcompress_bin(), "export", "--format", "gguf:" + f, d / "stories256.bin", "-o", out[f],
                        "--tokenizer", tok, "-q"], check=True, capture_output=True)
    return out, tok


# Fitted values at 2-4 bits: both runtimes compute the same file, but llama.cpp multiplies these types with
# 8-bit activations (Q8_K), so near-ties branch sooner than with our int4 codes. The 2-bit model (1.72-1.87 bits
# per byte against 0.81) is full of them: after "named Lily." llama.cpp took "," and we " Lily", so only the
# first word is required there; the values themselves are checked against ggml's decoder in test_gguf_lowbit.py.
PADDED_AGREE = {"q2_k": 1, "q3_k": 8, "iq4_xs": 8}


@pytest.mark.parametrize("fmt", ["q2_k", "q3_k", "iq4_xs"])
def test_llamacpp_runs_our_lowbit_super_blocks(llamacpp, padded_exports, mc, fmt):
    files, tok = padded_exports
    table = mc("inspect", files[fmt]).stdout
    for name in ("blk.0.attn_q.weight", "blk.4.ffn_down.weight", "blk.2.attn_output.weight"):
        line = next(ln for ln in table.splitlines() if name in ln)
        assert fmt.upper() in line, line
    theirs = llamacpp(files[fmt]).split()
    ours = mc("generate", files[fmt], "--prompt", PROMPT, "--max-tokens", TOKENS, "--temperature", "0",
              "--tokenizer", tok, "-q").stdout.split()[len(PROMPT.split()):]
    assert len(theirs) >= 10, theirs  # 30 tokens: fewer words where the 3-bit model spells short ones
    n = PADDED_AGREE[fmt]
    assert ours[:n] == theirs[:n], f"llama.cpp: {' '.join(theirs)!r}\nmcompress: {' '.join(ours)!r}"
