"""Export streams the model (issue 17: models larger than memory): bf16/f16 weights stay mapped and are widened a
block of rows at a time just before they are encoded, a packed checkpoint's entries are read one at a time, and
each tensor's pages are handed back once written, so peak memory does not grow with the model; an output the
disk cannot hold is refused before anything is written.

Oracles: the same weights stored as float32 (widening bf16 is exact, so both exports must be the same bytes),
the input values themselves (F16 tensors are numpy's float16 rounding of them, Q8_0 tensors numpy's encoding of
them written here from ggml's quantize_row_q8_0_ref, with llama.cpp's q/k row permutation from
convert_hf_to_gguf.py), and the peak RSS of a small and a large model of the same widths."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import mcompress_bin, read_safetensors, shared, write_safetensors
from test_gguf_export import read_gguf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
import hf_families  # noqa: E402

# Llama-3.2-1B's layout (tied, llama3 rope scaling, grouped kv heads) with stories260K's 512-token vocabulary, and
# an MLP wide enough that ffn_gate/ffn_up/ffn_down span two blocks of the export's 4 Mi-value row blocks (rows of
# 256: 16,384 rows per block), so the block boundaries are inside the checked tensors.
WIDTHS = dict(vocab_size=512, hidden_size=256, intermediate_size=20480, num_attention_heads=4, num_key_value_heads=2,
              head_dim=64, bos_token_id=1, eos_token_id=2)


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def read_hf(d):
    """All tensors of a Hugging Face directory (sharded or not) as float32."""
    files = sorted(p for p in os.listdir(d) if p.endswith(".safetensors"))
    out = {}
    for f in files:
        t, _ = read_safetensors(os.path.join(d, f))
        out.update({k: bf16_to_f32(v) if v.dtype == np.uint16 else v.astype(np.float32) for k, v in t.items()})
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The model in bf16 over three shards, the same values in one float32 file, and the tokenizer."""
    if not os.path.exists(mcompress_bin()):
        pytest.skip("mcompress not built")
    tok = shared("stories260K/tok512.bin")
    d = tmp_path_factory.mktemp("stream-export")
    bf = d / "bf16"
    cfg = hf_families.write_family(bf, "llama-3.2-1b", seed=11, tokenizer=False, shard_bytes=8_000_000, **WIDTHS)
    assert len([p for p in os.listdir(bf) if p.endswith(".safetensors")]) >= 3
    f32 = d / "f32"
    f32.mkdir()
    shutil.copy(bf / "config.json", f32 / "config.json")
    write_safetensors(f32 / "model.safetensors", read_hf(bf), {"format": "pt"})
    return d, bf, f32, tok, cfg


def export(model, out, fmt, tok, check=True):
    p = subprocess.run([mcompress_bin(), "export", "--format", fmt, model, "-o", out, "--tokenizer", tok, "--name", "m",
                        "-q"], capture_output=True, text=True)
    assert not check or p.returncode == 0, p.stderr
    return p


@pytest.mark.parametrize("typ", ["f16", "q8_0", "q4_k_m", "auto"])
def test_bf16_export_is_the_float32_export_byte_for_byte(models, typ):
    d, bf, f32, tok, cfg = models
    a, b = d / f"bf16-{typ}.gguf", d / f"f32-{typ}.gguf"
    export(bf, a, f"gguf:{typ}", tok)
    export(f32, b, f"gguf:{typ}", tok)
    assert a.read_bytes() == b.read_bytes()


def llama_cpp_rows(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: Hugging Face's rotate-half q/k rows to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_inputs(cfg, hf):
    """GGUF tensor name -> the input values it must hold (llama.cpp's names and row order)."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_block = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
                 "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    out = {}
    for k, v in hf.items():
        if k in names:
            out[names[k]] = v
            continue
        _, _, i, *mod = k.split(".")
        g = per_block[".".join(mod[:-1])]
        if g == "attn_q":
            v = llama_cpp_rows(v, cfg["num_attention_heads"])
        elif g == "attn_k":
            v = llama_cpp_rows(v, cfg["num_key_value_heads"])
        out[f"blk.{i}.{g}.weight"] = v
    return out


def q8_0_ref(x):
    """ggml quantize_row_q8_0_ref: d = max|x| / 127 per 32 values, q = roundf(x / d) (half away from zero), d as f16."""
    b = x.reshape(-1, 32).astype(np.float32)
    d = (np.abs(b).max(axis=1) / np.float32(127)).astype(np.float32)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0).astype(np.float32)
    v = (b * inv[:, None]).astype(np.float32)
    t = np.trunc(v)
    q = np.where(np.abs(v - t) == np.float32(0.5), t + np.sign(v), np.rint(v)).astype(np.int8)  # roundf
    return np.concatenate([d.astype(np.float16).view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1).tobytes()


@pytest.mark.parametrize("typ", ["f16", "q8_0"])
def test_streamed_tensors_hold_the_input_values(models, typ):
    """Every tensor of the bf16 model's export, decoded independently, is the input: F16 numpy's float16 of each
    value, Q8_0 numpy's encoding of them (norms F32 exactly), in llama.cpp's order, across the shards and the
    export's row blocks."""
    d, bf, f32, tok, cfg = models
    out = d / f"check-{typ}.gguf"
    export(bf, out, f"gguf:{typ}", tok)
    kv, tensors, _ = read_gguf(out)
    want = gguf_inputs(cfg, read_hf(bf))
    assert set(tensors) == set(want) | {"rope_freqs.weight"}
    for name, x in want.items():
        t = tensors[name]
        assert t["shape"] == list(x.shape), name
        if x.ndim == 1:
            assert t["type"] == "F32" and np.frombuffer(t["bytes"], np.float32).tobytes() == x.tobytes(), name
        elif typ == "f16":
            assert t["type"] == "F16" and t["bytes"] == x.astype(np.float16).tobytes(), name
        else:
            assert t["type"] == "Q8_0" and t["bytes"] == q8_0_ref(x), name


# ---- memory --------------------------------------------------------------------------------------------------

def peak_rss_mib(args):
    """Peak resident set of one mcompress run, from /usr/bin/time -v (see test_model_free.peak_rss_mib)."""
    if not os.path.exists("/usr/bin/time"):
        pytest.skip("/usr/bin/time not installed")
    p = subprocess.run(["/usr/bin/time", "-v", mcompress_bin(), *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    kib = [line for line in p.stderr.splitlines() if "Maximum resident set size" in line]
    return int(kib[0].split(":")[1]) / 1024.0


@pytest.mark.parametrize("fmt", ["gguf:q8_0", "hf-gptq"])
def test_peak_memory_does_not_grow_with_the_model(tmp_path, fmt):
    """2 and 14 blocks of the same widths (each block 13.6 M parameters: 27 MiB of bf16, 52 MiB as float32), the
    large one over several shards (GGUF from the bf16 directory) or quantized to int4 g32 (hf-gptq from our packed
    file): the export's peak RSS grows by far less than one block, where a whole-model load grows by all 12 extra
    blocks widened to float32 (624 MiB) and their mapped pages."""
    if not os.path.exists(mcompress_bin()):
        pytest.skip("mcompress not built")
    tok = shared("stories260K/tok512.bin")
    widths = dict(WIDTHS, hidden_size=512, intermediate_size=8192, num_attention_heads=8, num_key_value_heads=8)
    peaks = {}
    for layers in (2, 14):
        src = tmp_path / f"l{layers}"
        hf_families.write_family(src, "llama-3.2-1b", seed=3, tokenizer=False, shard_bytes=100_000_000,
                                 num_hidden_layers=layers, **widths)
        if fmt == "hf-gptq":
            subprocess.run([mcompress_bin(), "quantize", src, "--method", "rtn", "--bits", "4", "--group-size", "32",
                            "-o", tmp_path / f"q{layers}", "-q"], check=True, capture_output=True)
            src = tmp_path / f"q{layers}" / "model.safetensors"
        peaks[layers] = peak_rss_mib(["export", "--format", fmt, src, "-o", tmp_path / f"out{layers}",
                                      "--tokenizer", tok, "-q"])
    block_f32_mib = (4 * 512 * 512 + 3 * 512 * 8192) * 4 / 2**20
    growth = peaks[14] - peaks[2]
    print(f"{fmt} peak RSS: 2 blocks {peaks[2]:.0f} MiB, 14 blocks {peaks[14]:.0f} MiB (growth {growth:.0f} MiB; "
          f"one block as float32 {block_f32_mib:.0f} MiB)")
    # Measured: growth ~0 (every tensor here is at most one 4 Mi-value block: 16 MiB of float32 and its 4.25 MiB
    # of Q8_0 or 2 MiB of int4 codes). Half a block is the bound: holding the model (12 x 52 MiB) or even one
    # block's tensors breaks it.
    assert growth < block_f32_mib / 2, peaks


# ---- free space ----------------------------------------------------------------------------------------------

def in_small_tmpfs(tmp_path, size, args):
    """Runs mcompress with a 'small' tmpfs of `size` mounted at tmp_path/small (a private mount namespace);
    returns (the run, what the directory held afterwards). Skips where user namespaces or tmpfs mounts are off."""
    small = tmp_path / "small"
    small.mkdir()
    script = ('mount -t tmpfs -o size=%s none "$0" || exit 97; "$@"; rc=$?; echo "LISTING:$(ls -A "$0" | tr "\\n" " ")"; '
              'exit $rc' % size)
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script, small, mcompress_bin(), *map(str, args)],
                       capture_output=True, text=True)
    if p.returncode == 97 or "unshare" in p.stderr:
        pytest.skip("cannot mount a tmpfs in a user namespace here: " + p.stderr.strip())
    listing = [line for line in p.stdout.splitlines() if line.startswith("LISTING:")][0][8:].split()
    return p, small, listing


def test_an_output_the_disk_cannot_hold_is_refused_before_writing(models, tmp_path):
    d, bf, f32, tok, cfg = models
    fits = d / "fits.gguf"
    export(bf, fits, "gguf:q8_0", tok)
    size = os.path.getsize(fits)
    p, small, listing = in_small_tmpfs(tmp_path, "256k", ["export", "--format", "gguf:q8_0", bf, "-o",
                                                          tmp_path / "small" / "m.gguf", "--tokenizer", tok, "-q"])
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert str(small / "m.gguf") in err[0] and f"({size} bytes)" in err[0] and "available on" in err[0], err[0]
    assert listing == [], listing  # nothing written, no temp file left


def test_a_hugging_face_export_the_disk_cannot_hold_is_refused(models, tmp_path):
    d, bf, f32, tok, cfg = models
    q = d / "w4"
    if not q.exists():
        subprocess.run([mcompress_bin(), "quantize", bf, "--method", "rtn", "--bits", "4", "--group-size", "32",
                        "-o", q, "-q"], check=True, capture_output=True)
    p, small, listing = in_small_tmpfs(tmp_path, "256k", ["export", "--format", "hf-gptq", q / "model.safetensors",
                                                          "-o", tmp_path / "small" / "hf", "-q"])
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert str(small / "hf") in err[0] and "bytes) of disk space" in err[0] and "available on" in err[0], err[0]
    assert listing == [], listing
