"""mcompress inspect on a sharded Hugging Face directory (written here byte by byte: 2 shards, BF16 and
F32 tensors, index.json, a Llama-3.2-1B-like config.json at tiny widths) and on a packed quantize
output. Every expected value (file sizes, bytes per dtype, shapes, shards, statistics, bits per weight)
is computed here from what the test wrote or from the file's raw header, never from mcompress."""
import json
import os
import struct

import numpy as np
import pytest

from conftest import read_safetensors

# Llama-3.2-1B's config.json with the widths cut down (2048 -> 64, 16 layers -> 2, vocab 128256 -> 256).
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
    "vocab_size": 256, "tie_word_embeddings": True, "rope_theta": 500000.0, "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "torch_dtype": "bfloat16", "rms_norm_eps": 1e-5, "bos_token_id": 128000, "eos_token_id": 128001,
}


def to_bf16_bits(a):
    """float32 -> bf16 bit patterns (uint16), truncating: the exact values the file then holds."""
    return (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def bf16_values(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_st(path, tensors):
    """tensors: name -> (safetensors dtype, numpy array holding the raw elements)."""
    header, blobs, off = {}, [], 0
    for name, (dtype, a) in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def layer_tensors(i, rng):
    h, kv, inter = 64, 2 * 16, 128
    shapes = {"self_attn.q_proj.weight": (h, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
              "self_attn.o_proj.weight": (h, h), "mlp.gate_proj.weight": (inter, h), "mlp.up_proj.weight": (inter, h),
              "mlp.down_proj.weight": (h, inter)}
    t = {f"model.layers.{i}.{k}": ("BF16", to_bf16_bits(rng.standard_normal(s) * 0.02)) for k, s in shapes.items()}
    for norm in ("input_layernorm", "post_attention_layernorm"):
        t[f"model.layers.{i}.{norm}.weight"] = ("F32", (1 + 0.1 * rng.standard_normal(h)).astype(np.float32))
    return t


@pytest.fixture
def hf_dir(tmp_path):
    """Returns (directory, {tensor: (dtype, array, shard file)})."""
    rng = np.random.default_rng(0)
    d = tmp_path / "Llama-3.2-1B-tiny"
    d.mkdir()
    shards = {
        "model-00001-of-00002.safetensors": {"model.embed_tokens.weight": ("BF16", to_bf16_bits(rng.standard_normal((256, 64)))),
                                             **layer_tensors(0, rng)},
        "model-00002-of-00002.safetensors": {**layer_tensors(1, rng),
                                             "model.norm.weight": ("F32", np.ones(64, np.float32))},
    }
    expected, weight_map = {}, {}
    for file, tensors in shards.items():
        write_st(d / file, tensors)
        for name, (dtype, a) in tensors.items():
            expected[name] = (dtype, a, file)
            weight_map[name] = file
    total = sum(a.nbytes for _, a, _ in expected.values())
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps(CONFIG))
    return d, expected


def test_sharded_directory_inspects_as_one_model(mc, hf_dir):
    d, expected = hf_dir
    j = json.loads(mc("inspect", d, "--json").stdout)
    assert j["format"] == "hf-safetensors"
    files = sorted({f for _, _, f in expected.values()})
    assert [s["file"] for s in j["shards"]] == files
    for s in j["shards"]:
        assert s["file_bytes"] == os.path.getsize(d / s["file"])
        assert s["tensors"] == sum(1 for _, _, f in expected.values() if f == s["file"])
    assert j["file_bytes"] == sum(os.path.getsize(d / f) for f in files)
    assert j["total_bytes"] == sum(a.nbytes for _, a, _ in expected.values())
    assert j["total_parameters"] == sum(a.size for _, a, _ in expected.values())
    for dtype in ("BF16", "F32"):
        mine = [a for dt, a, _ in expected.values() if dt == dtype]
        assert j["dtypes"][dtype] == {"tensors": len(mine), "parameters": sum(a.size for a in mine),
                                      "bytes": sum(a.nbytes for a in mine)}
    assert set(j["dtypes"]) == {"BF16", "F32"}
    got = {t["name"]: t for t in j["tensors"]}
    assert set(got) == set(expected)
    for name, (dtype, a, file) in expected.items():
        t = got[name]
        assert (t["dtype"], t["shape"], t["bytes"], t["shard"]) == (dtype, list(a.shape), a.nbytes, file), name
        values = bf16_values(a) if dtype == "BF16" else a
        assert t["min"] == float(values.min()) and t["max"] == float(values.max()), name  # exact: one value each
        assert t["mean"] == pytest.approx(float(values.astype(np.float64).mean()), rel=1e-5, abs=1e-7), name
    c = j["config"]
    assert (c["architecture"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
            c["num_key_value_heads"], c["head_dim"], c["intermediate_size"], c["vocab_size"],
            c["tie_word_embeddings"], c["rope_theta"], c["rope_scaling"], c["torch_dtype"]) == (
        "LlamaForCausalLM", 64, 2, 4, 2, 16, 128, 256, True, 500000.0, "llama3", "bfloat16")


def test_sharded_directory_text_lists_config_shards_and_dtypes(mc, hf_dir):
    d, expected = hf_dir
    out = mc("inspect", d, "--no-stats").stdout
    total = sum(os.path.getsize(p) for p in d.glob("*.safetensors"))
    assert f"total  {total:,} bytes" in out
    for f in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert f"{f}  " in out and f"{os.path.getsize(d / f):,} bytes" in out
    bf16 = sum(a.nbytes for dt, a, _ in expected.values() if dt == "BF16")
    assert f"BF16  15 tensors  {bf16 // 2:,} parameters  {bf16:,} bytes" in out
    for line in ("architecture        LlamaForCausalLM (llama)", "heads / kv heads    4 / 2", "head_dim            16",
                 "rope_scaling        llama3", "rope_theta          500000", "tie embeddings      true",
                 "torch_dtype         bfloat16", "intermediate size   128"):
        assert line in out, line
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith("model.")}
    assert set(rows) == set(expected)
    for name, (dtype, a, file) in expected.items():
        assert rows[name][1] == dtype and rows[name][-1] == file and f"{a.nbytes:,}" in rows[name]
    assert "mean" not in out  # --no-stats


def one_line_error(p, *words):
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert p.stdout == ""


def test_missing_shard_exits_2(mc, hf_dir):
    d, _ = hf_dir
    os.remove(d / "model-00002-of-00002.safetensors")
    one_line_error(mc("inspect", d, check=False), "model.safetensors.index.json", "model-00002-of-00002.safetensors",
                   "does not exist")


def test_tensor_missing_from_its_shard_exits_2(mc, hf_dir):
    d, _ = hf_dir
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    one_line_error(mc("inspect", d, check=False), "model.safetensors.index.json", "'lm_head.weight'",
                   "model-00002-of-00002.safetensors", "does not hold it")


@pytest.mark.parametrize("text,words", [("{\"hidden_size\": 64,", ["not valid JSON"]),
                                        ("[1, 2]", ["expected a JSON object"]),
                                        (json.dumps({**CONFIG, "hidden_size": "64"}), ["hidden_size", "integer"])])
def test_malformed_config_exits_2(mc, hf_dir, text, words):
    d, _ = hf_dir
    (d / "config.json").write_text(text)
    one_line_error(mc("inspect", d, check=False), "config.json", *words)


def test_single_file_directory(mc, tmp_path):
    write_st(tmp_path / "model.safetensors", {"w": ("BF16", to_bf16_bits(np.arange(6, dtype=np.float32).reshape(2, 3)))})
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    j = json.loads(mc("inspect", tmp_path, "--json").stdout)
    assert [s["file"] for s in j["shards"]] == ["model.safetensors"]
    assert j["file_bytes"] == os.path.getsize(tmp_path / "model.safetensors")
    assert (j["tensors"][0]["min"], j["tensors"][0]["max"]) == (0.0, 5.0)


def test_quantize_output_shows_scheme_and_bits_per_weight(mc, tiny_lm, tmp_path):
    _, model = tiny_lm
    out_dir = tmp_path / "q4"
    mc("quantize", model, "--bits", "4", "--group-size", "16", "-o", out_dir, "-q")
    out = out_dir / "model.safetensors"
    raw, meta = read_safetensors(out)
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    assert desc
    j = json.loads(mc("inspect", out, "--json").stdout)
    assert [t["name"] for t in j["tensors"]] == list(raw)  # the raw table stays complete
    q = {e["name"]: e for e in j["quantized"]}
    assert set(q) == set(desc)
    total_bytes = total_weights = 0
    for key, dsc in desc.items():
        o, i = dsc["shape"]
        parts = [n for n in raw if n.startswith(key + ".")]
        nbytes = sum(raw[n].nbytes for n in parts)
        # int4 sym g16 as docs/packed-format.md lays it out: codes two per byte, one f16 scale per 16 columns.
        assert nbytes == o * -(-i * 4 // 8) + o * -(-i // 16) * 2
        assert q[key]["scheme"] == "int4 sym g16"
        assert sorted(q[key]["parts"]) == sorted(parts) == sorted([key + ".qweight", key + ".scales"])
        assert q[key]["bytes"] == nbytes
        assert q[key]["bits_per_weight"] == pytest.approx(8 * nbytes / (o * i), rel=1e-12)
        total_bytes += nbytes
        total_weights += o * i
    assert j["quantized_summary"]["bits_per_weight"] == pytest.approx(8 * total_bytes / total_weights, rel=1e-12)
    text = mc("inspect", out).stdout
    rows = {ln.split()[0]: ln for ln in text.splitlines() if ln.split() and ln.split()[0] in desc}
    assert set(rows) == set(desc)
    for key, ln in rows.items():
        o, i = desc[key]["shape"]
        nbytes = sum(raw[n].nbytes for n in raw if n.startswith(key + "."))
        assert "int4 sym g16" in ln and f"{8 * nbytes / (o * i):.4g}" in ln.split(), ln
    assert not any(ln.split()[0].endswith(".qweight") for ln in text.splitlines() if ln.split())  # grouped
    raw_text = mc("inspect", out, "--raw", "--no-stats").stdout
    assert all(any(ln.split()[0] == n for ln in raw_text.splitlines() if ln.split()) for n in raw)
    # The output directory itself (model.safetensors + reports, no config.json) inspects the same way.
    jd = json.loads(mc("inspect", out_dir, "--json", "--no-stats").stdout)
    assert jd["quantized"] == json.loads(mc("inspect", out, "--json", "--no-stats").stdout)["quantized"]


@pytest.mark.parametrize("args,scheme", [(["--pattern", "2:4", "--bits", "4", "--group-size", "16"], "2:4 sparse + int4 sym g16"),
                                         (["--sparsity", "0.5"], "bitmask sparse fp16")])
def test_prune_output_shows_sparse_scheme(mc, tiny_lm, tmp_path, args, scheme):
    _, model = tiny_lm
    mc("prune", "--method", "magnitude", *args, model, "-o", tmp_path / "p", "-q")
    raw, meta = read_safetensors(tmp_path / "p" / "model.safetensors")
    desc = json.loads(meta["mcompress.quantization"])["tensors"]
    q = {e["name"]: e for e in json.loads(mc("inspect", tmp_path / "p", "--json", "--no-stats").stdout)["quantized"]}
    assert set(q) == set(desc)
    for key, dsc in desc.items():
        o, i = dsc["shape"]
        if dsc["sparse"]["layout"] == "n:m":  # docs/packed-format.md: 2-bit positions + int4 codes of the kept half + f16 scales
            kr = i // 2
            expect = o * -(-kr * 2 // 8) + o * -(-kr * 4 // 8) + o * -(-i // 16) * 2
        else:  # bitmask: one bit per column + the kept values as f16
            expect = o * -(-i // 8) + 2 * int(np.unpackbits(raw[key + ".mask"]).sum())
        assert sum(raw[n].nbytes for n in raw if n.startswith(key + ".")) == expect
        assert (q[key]["scheme"], q[key]["bytes"]) == (scheme, expect), key
        assert q[key]["bits_per_weight"] == pytest.approx(8 * expect / (o * i), rel=1e-12)
