"""HDF5 files against h5py (3.7 for /usr/bin/python3): Keras-style files written by h5py are read by
the CLI and compared bit-exactly through the independent safetensors reader in conftest.py, and the
files the CLI writes (our layout and the Keras layout) are read back with h5py."""
import os

import numpy as np
import pytest

from conftest import ST_DTYPES, read_safetensors, write_safetensors

h5py = pytest.importorskip("h5py")


ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def same_bits(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def f16_specials():
    bits = np.array([0x0000, 0x8000, 0x0001, 0x03FF, 0x3C00, 0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0x7D01], np.uint16)
    return bits.view(np.float16)


def as_loaded(a):
    """What the reader produces: little-endian, unsigned 16/32-bit ints widened to signed 32/64."""
    a = np.asarray(a)
    if a.dtype == np.uint16:
        return a.astype(np.int32)
    if a.dtype == np.uint32:
        return a.astype(np.int64)
    return a.astype(a.dtype.newbyteorder("<"))


def write_keras_file(path):
    """A Keras 2 save_weights layout (layer_names / weight_names) plus odd datasets Keras would not
    write: big-endian data, unsigned ints, bools, a scalar, deep groups and a string (skipped).
    Returns {tensor name: the array the CLI must produce} in the order the reader must list them."""
    rng = np.random.default_rng(0)
    layers = {
        "dense": {"dense/kernel:0": rng.standard_normal((4, 3)).astype(np.float32),
                  "dense/bias:0": rng.standard_normal(3).astype(np.float16)},
        "conv": {"conv/kernel:0": rng.standard_normal((3, 3, 2, 2)).astype(">f4")},
        "emb": {"emb/table:0": rng.integers(-1000, 1000, (5, 2)).astype(np.int32)},
    }
    extra = {
        "misc/mask": np.array([[True, False], [False, True]]),
        "misc/step": np.array(42, dtype=np.int64),
        "misc/deep/nested/f64": rng.standard_normal((2, 2)),
        "misc/be_i16": np.array([-2, 300], dtype=">i2"),
        "misc/i8": np.array([-128, 127], dtype=np.int8),
        "misc/u8": np.array([0, 255], dtype=np.uint8),
        "misc/u16": np.array([0, 65535], dtype=np.uint16),
        "misc/u32": np.array([0, 2 ** 32 - 1], dtype=np.uint32),
        "misc/specials": f16_specials(),
    }
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.11.0"
        f.attrs["note"] = "written by h5py"  # a variable-length UTF-8 string
        f.attrs["epochs"] = np.int32(3)
        for layer, weights in layers.items():
            g = f.create_group(layer)
            g.attrs["weight_names"] = np.array([w.encode() for w in weights])
            for w, a in weights.items():
                g.create_dataset(w, data=a)
        for name, a in extra.items():
            f.create_dataset(name, data=a)
        f["misc/label"] = "not a tensor"
        # bfloat16 as some tools store it: a 16-bit float type with an 8-bit exponent
        bf16 = h5py.h5t.IEEE_F32LE.copy()
        bf16.set_fields(15, 7, 8, 0, 7)
        bf16.set_size(2)
        bf16.set_ebias(127)
        bf16_bits = np.array([0x3F80, 0xC000, 0x7FC1, 0x0001], np.uint16)
        d = h5py.h5d.create(f.id, b"misc/bf16", bf16, h5py.h5s.create_simple((4,)))
        d.write(h5py.h5s.ALL, h5py.h5s.ALL, bf16_bits, mtype=bf16)
    expected = {}
    for layer, weights in layers.items():
        for w, a in weights.items():
            expected[f"{layer}/{w}"] = as_loaded(a)
    loaded_extra = {name: as_loaded(a) for name, a in extra.items()}
    loaded_extra["misc/bf16"] = bf16_bits  # read_safetensors gives BF16 as uint16 bit patterns
    for name in sorted(loaded_extra):  # datasets outside layer_names follow, by name
        expected[name] = loaded_extra[name]
    return expected


def test_h5py_keras_file_to_safetensors(tmp_path, mc, inspect_json):
    src, out = tmp_path / "k.h5", tmp_path / "k.safetensors"
    expected = write_keras_file(src)
    mc("convert", src, out)
    got, meta = read_safetensors(out)
    assert set(got) == set(expected)
    for name, a in expected.items():
        assert same_bits(got[name], a), name
    assert [t["name"] for t in inspect_json(str(src))["tensors"]] == list(expected)
    assert meta["backend"] == "tensorflow"
    assert meta["keras_version"] == "2.11.0"
    assert meta["note"] == "written by h5py"
    assert meta["epochs"] == "3"
    assert meta["layer_names"] == '["dense", "conv", "emb"]'
    assert meta["hdf5.skipped"] == "misc/label"
    assert meta["hdf5.widened"] == "misc/u16:U16->I32,misc/u32:U32->I64"


def sample_tensors():
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    f32[0, :3] = [np.inf, -0.0, np.nan]
    return {
        "fc1.weight": f32,
        "fc1.bias": rng.standard_normal(3).astype(np.float16),
        "specials.f16": f16_specials(),
        "f64": rng.standard_normal((2, 2)),
        "i64": np.array([-(2 ** 40), 0, 2 ** 40 + 7], dtype=np.int64),
        "i32": np.array([-5, 6], dtype=np.int32),
        "i16": np.array([-300, 300], dtype=np.int16),
        "i8": np.array([-128, 127], dtype=np.int8),
        "u8": np.array([0, 255], dtype=np.uint8),
        "mask": np.array([True, False, True]),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def test_safetensors_to_hdf5_read_by_h5py(tmp_path, mc, inspect_json):
    src, out = tmp_path / "a.safetensors", tmp_path / "b.h5"
    tensors = sample_tensors()
    write_safetensors(src, tensors, {"author": "mcompress test"})
    mc("convert", src, out)
    with h5py.File(out, "r") as f:
        assert f.attrs["mcompress.format"] == b"mcompress-hdf5"
        assert int(f.attrs["mcompress.version"]) == 1
        assert f["metadata"].attrs["author"] == b"mcompress test"
        # h5py lists a group in creation order when it is tracked, as we do: the input's order
        assert list(f["tensors"]) == [t["name"] for t in inspect_json(str(src))["tensors"]]
        for name, a in tensors.items():
            d = f["tensors"][name]
            assert same_bits(d[()], a), name  # float16 comes back as float16, bool as bool
            assert d.attrs["dtype"] == ST_NAMES[a.dtype.type].encode(), name


def test_bf16_round_trips_through_hdf5(tmp_path, mc):
    src = tmp_path / "a.safetensors"
    write_safetensors(src, {"w": np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)})
    mc("convert", src, tmp_path / "direct.safetensors", "--dtype", "bf16")
    mc("convert", src, tmp_path / "b.h5", "--dtype", "bf16")
    with h5py.File(tmp_path / "b.h5", "r") as f:
        assert f["tensors/w"].dtype == np.uint16 and f["tensors/w"].attrs["dtype"] == b"BF16"
    mc("convert", tmp_path / "b.h5", tmp_path / "back.safetensors")
    direct, _ = read_safetensors(tmp_path / "direct.safetensors")
    back, _ = read_safetensors(tmp_path / "back.safetensors")
    assert same_bits(back["w"], direct["w"])


def keras_layer(name):
    """The documented rule: "a.b.c" is leaf "c" of layer "a.b"; a name without '.' is both."""
    layer, _, leaf = name.rpartition(".")
    return (layer, leaf) if layer else (name, name)


def test_keras_hdf5_output_loads_like_keras(tmp_path, mc, inspect_json):
    src, out = tmp_path / "a.safetensors", tmp_path / "k.h5"
    tensors = sample_tensors()
    write_safetensors(src, tensors)
    mc("convert", src, out, "--format", "keras-hdf5")
    order = [t["name"] for t in inspect_json(str(src))["tensors"]]  # layers follow the input's order
    with h5py.File(out, "r") as f:
        assert f.attrs["backend"] == b"tensorflow"
        layer_names = [n.decode() for n in f.attrs["layer_names"]]
        assert layer_names == list(dict.fromkeys(keras_layer(n)[0] for n in order))
        loaded = {}
        for layer in layer_names:  # what Keras load_weights does with the two attributes
            g = f[layer]
            for w in g.attrs["weight_names"]:
                loaded[w.decode()] = g[w.decode()][()]
    assert len(loaded) == len(tensors)
    for name, a in tensors.items():
        layer, leaf = keras_layer(name)
        assert same_bits(loaded[f"{layer}/{leaf}"], a), name


def test_damaged_hdf5_is_a_clear_error(tmp_path, mc):
    good = tmp_path / "good.h5"
    write_keras_file(good)
    raw = good.read_bytes()
    for cut in (len(raw) - 1, len(raw) // 2, 100):
        bad = tmp_path / f"cut{cut}.h5"
        bad.write_bytes(raw[:cut])
        p = mc("convert", bad, tmp_path / "out.safetensors", check=False)
        assert p.returncode == 2, p.stderr
        assert "[hdf5]" in p.stderr and str(bad) in p.stderr
        assert not os.path.exists(tmp_path / "out.safetensors")


def test_uint64_too_large_for_i64_is_refused(tmp_path, mc):
    src = tmp_path / "u64.h5"
    with h5py.File(src, "w") as f:
        f["ok"] = np.array([0, 2 ** 63 - 1], dtype=np.uint64)
        f["big"] = np.array([2 ** 63], dtype=np.uint64)
    p = mc("convert", src, tmp_path / "out.safetensors", check=False)
    assert p.returncode == 2 and "'big'" in p.stderr and "uint64" in p.stderr
    assert not os.path.exists(tmp_path / "out.safetensors")
