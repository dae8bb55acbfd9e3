"""The CLI end to end: bad input gives exit status 2, exactly one line on stderr naming the file and
the problem, and no output file; the real MNIST checkpoint round-trips through every format."""
import json
import os
import struct

import numpy as np
import pytest

from conftest import read_safetensors, shared, write_safetensors


def st_bytes(header, data=b""):
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


BAD_SAFETENSORS = {
    "truncated": (b"\x05\x00", "truncated"),
    "header beyond file": (struct.pack("<Q", 10_000) + b"{}", "exceeds the file"),
    "offsets out of range": (st_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
                             "beyond the data section"),
    "overlapping": (st_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "overlaps"),
    "shape x dtype": (st_bytes({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "needs 12 bytes"),
    "unknown dtype": (st_bytes({"w": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}, b"\0"), "unknown dtype"),
    "duplicate names": (struct.pack("<Q", 105) + (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                                  b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}  ') + b"\0\0",
                        "duplicate tensor name"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_bad_safetensors_one_line_exit_2_no_output(mc, tmp_path, case):
    content, expect = BAD_SAFETENSORS[case]
    src = tmp_path / "bad.safetensors"
    src.write_bytes(content)
    for args in (["inspect", src], ["convert", src, tmp_path / "out.pt"]):
        p = mc(*args, check=False)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, p.stderr
        assert str(src) in lines[0] and expect in lines[0], lines[0]
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors"]


def test_wrong_magic(mc, tmp_path):
    # With a telling extension the format's own reader explains what is wrong ...
    src = tmp_path / "x.pt"
    src.write_bytes(b"NOTAFORMAT" * 10)
    p = mc("inspect", src, check=False)
    assert p.returncode == 2 and "not a zip archive" in p.stderr and str(src) in p.stderr
    # ... and without one the registry lists what it looked for.
    src = tmp_path / "x.weights"
    src.write_bytes(b"NOTAFORMAT" * 10)
    p = mc("inspect", src, check=False)
    assert p.returncode == 2 and "unknown format" in p.stderr and str(src) in p.stderr


def test_unwritable_output_directory(mc, tmp_path):
    src = tmp_path / "a.safetensors"
    write_safetensors(src, {"w": np.ones((2, 2), np.float32)})
    locked = tmp_path / "locked"
    locked.mkdir()
    for out in (tmp_path / "missing" / "b.safetensors", locked / "b.pt"):
        if out.parent == locked:
            os.chmod(locked, 0o500)
            if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
                out = src / "b.pt"
        p = mc("convert", src, out, check=False)
        assert p.returncode == 2, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
        assert "cannot create output" in p.stderr
    os.chmod(locked, 0o700)
    assert os.listdir(locked) == []


def test_usage_errors_exit_2(mc, tmp_path):
    assert mc("inspect", check=False).returncode == 2
    assert mc("convert", "a", check=False).returncode == 2
    assert mc("nosuchcommand", check=False).returncode == 2
    assert mc("inspect", "x", "--threads", "-3", check=False).returncode == 2
    src = tmp_path / "a.safetensors"
    write_safetensors(src, {"w": np.ones(2, np.float32)})
    p = mc("convert", src, tmp_path / "b.safetensors", "--dtype", "int4", check=False)
    assert p.returncode == 2 and "--dtype" in p.stderr
    assert not (tmp_path / "b.safetensors").exists()


def test_help_and_version(mc):
    assert "mcompress" in mc("--version").stdout
    for cmd in ("inspect", "convert"):
        out = mc(cmd, "--help").stdout
        assert "--threads" in out and "usage: mcompress " + cmd in out


def test_convert_dtype_f16_matches_numpy(mc, tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 13)).astype(np.float32) * 100
    ids = np.arange(5, dtype=np.int64)
    write_safetensors(tmp_path / "a.safetensors", {"w": w, "ids": ids}, {"who": "test"})
    mc("convert", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--dtype", "f16")
    got, meta = read_safetensors(tmp_path / "b.safetensors")
    assert got["w"].dtype == np.float16
    np.testing.assert_array_equal(got["w"], w.astype(np.float16))  # numpy rounds to nearest even too
    np.testing.assert_array_equal(got["ids"], ids)
    assert meta["who"] == "test"


def test_inspect_json_statistics_match_numpy(inspect_json, tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((50, 40)).astype(np.float32)
    w[0, 0] = np.nan
    w[1, 1] = np.inf
    write_safetensors(tmp_path / "a.safetensors", {"w": w})
    j = inspect_json(tmp_path / "a.safetensors")
    t = j["tensors"][0]
    finite = w[np.isfinite(w)].astype(np.float64)
    assert t["nan"] == 1 and t["inf"] == 1
    assert t["min"] == pytest.approx(finite.min()) and t["max"] == pytest.approx(finite.max())
    assert t["mean"] == pytest.approx(finite.mean(), rel=1e-9)
    assert t["std"] == pytest.approx(finite.std(), rel=1e-9)
    assert j["total_parameters"] == 2000 and j["total_bytes"] == 8000


def test_mnist_inspect_lists_four_tensors(inspect_json):
    j = inspect_json(shared("mnist/mnist_mlp.state_dict"))
    assert j["format"] == "torch"
    shapes = {t["name"]: t["shape"] for t in j["tensors"]}
    assert shapes == {"fc1.weight": [500, 784], "fc1.bias": [500], "fc2.weight": [10, 500], "fc2.bias": [10]}
    assert j["total_parameters"] == 500 * 784 + 500 + 10 * 500 + 10


def test_mnist_round_trip_all_formats_bit_exact(mc, tmp_path):
    torch = pytest.importorskip("torch")
    src = shared("mnist/mnist_mlp.state_dict")
    ref = torch.load(src, map_location="cpu")
    mc("convert", src, tmp_path / "a.safetensors")
    mc("convert", tmp_path / "a.safetensors", tmp_path / "b.h5")
    mc("convert", tmp_path / "b.h5", tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    assert list(back.keys()) == list(ref.keys())
    for k in ref:
        assert back[k].dtype == ref[k].dtype
        assert torch.equal(back[k], ref[k]), k
