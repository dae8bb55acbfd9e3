"""PyTorch zip checkpoints against torch itself (torch 1.13 for /usr/bin/python3): files written by
torch.save are read by the CLI and compared bit-exactly through an independent safetensors reader
(conftest.py), and files the CLI writes are loaded by torch.load(weights_only=True)."""
import os
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from conftest import read_safetensors, write_safetensors

torch = pytest.importorskip("torch")


def as_numpy(t):
    """Bit patterns for comparison: bf16 as uint16 (as conftest.read_safetensors returns it)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def same_bits(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def sample_state_dict():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g)
    sd = OrderedDict()
    sd["emb.weight"] = w
    sd["head.weight"] = w  # tied: one storage, two names
    sd["proj.weight_t"] = torch.randn(5, 3, generator=g).t()  # non-contiguous (stride (1, 3))
    sd["row"] = torch.arange(20, dtype=torch.float32).reshape(4, 5)[2]  # view at a storage offset
    sd["f64"] = torch.randn(3, generator=g, dtype=torch.float64)
    sd["f16"] = torch.randn(2, 3, generator=g).half()
    sd["bf16"] = torch.randn(2, 3, generator=g).bfloat16()
    sd["i64"] = torch.tensor([-(2 ** 40), 0, 2 ** 40 + 7])
    sd["i32"] = torch.tensor([-5, 6], dtype=torch.int32)
    sd["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["mask"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(2.5)
    sd["rank5"] = torch.randn(2, 1, 3, 1, 2, generator=g)
    return sd


@pytest.mark.parametrize("protocol", [2, 4])
def test_torch_save_read_by_cli(mc, inspect_json, tmp_path, protocol):
    sd = sample_state_dict()
    src, dst = tmp_path / "x.pt", tmp_path / "y.safetensors"
    torch.save({"model": sd, "step": 5}, src, pickle_protocol=protocol)
    assert not sd["proj.weight_t"].is_contiguous()

    info = inspect_json(src)
    assert info["format"] == "torch"
    by_name = {t["name"]: t for t in info["tensors"]}
    assert sorted(by_name) == sorted("model." + k for k in sd)
    assert by_name["model.proj.weight_t"]["shape"] == [3, 5]
    assert by_name["model.bf16"]["dtype"] == "BF16"

    mc("convert", src, dst)
    got, meta = read_safetensors(dst)
    assert sorted(got) == sorted("model." + k for k in sd)
    for k, t in sd.items():
        assert same_bits(got["model." + k], as_numpy(t)), k
    assert meta.get("step") == "5"


def test_state_dict_metadata_is_not_a_tensor(mc, tmp_path):
    # torch.save(model.state_dict()) pickles an OrderedDict with a _metadata attribute (BUILD).
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    src, dst = tmp_path / "m.pt", tmp_path / "m.safetensors"
    torch.save(model.state_dict(), src)
    mc("convert", src, dst)
    got, _ = read_safetensors(dst)
    assert sorted(got) == sorted(model.state_dict())
    for k, t in model.state_dict().items():
        assert same_bits(got[k], as_numpy(t)), k


def source_tensors():
    rng = np.random.default_rng(1)
    return {
        "a.f32": rng.standard_normal((7, 5)).astype(np.float32),
        "a.f64": rng.standard_normal(4),
        "a.f16": rng.standard_normal((3, 2)).astype(np.float16),
        "i64": np.array([-(2 ** 50), 3], dtype=np.int64),
        "i32": np.array([1, -2, 3], dtype=np.int32),
        "i16": np.array([-7, 7], dtype=np.int16),
        "i8": np.array([-128, 5], dtype=np.int8),
        "u8": np.array([255, 0, 1], dtype=np.uint8),
        "mask": np.array([[True, False], [False, True]]),
        "scalar": np.array(3.25, dtype=np.float32),
        "rank4": rng.standard_normal((2, 2, 1, 3)).astype(np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def test_cli_output_loaded_by_torch(mc, tmp_path):
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.pt"
    tensors = source_tensors()
    write_safetensors(src, tensors, {"note": "from numpy"})
    mc("convert", src, dst)

    sd = torch.load(dst, weights_only=True)
    assert sorted(sd) == sorted(tensors)
    for k, a in tensors.items():
        assert same_bits(as_numpy(sd[k]), a), k

    # The archive is laid out as torch.save lays it out: stored entries, data aligned to 64 bytes.
    with zipfile.ZipFile(dst) as z:
        names = z.namelist()
        assert any(n.endswith("/data.pkl") for n in names)
        assert any(n.endswith("/version") for n in names)
        raw = dst.read_bytes()
        for i in z.infolist():
            assert i.compress_type == zipfile.ZIP_STORED
            assert z.testzip() is None  # CRCs match
            if "/data/" in i.filename:
                name_len = int.from_bytes(raw[i.header_offset + 26:i.header_offset + 28], "little")
                extra_len = int.from_bytes(raw[i.header_offset + 28:i.header_offset + 30], "little")
                assert (i.header_offset + 30 + name_len + extra_len) % 64 == 0


@pytest.mark.parametrize("flag,to", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_dtype_conversion_matches_torch(mc, tmp_path, flag, to):
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.pt"
    tensors = source_tensors()
    write_safetensors(src, tensors)
    mc("convert", src, dst, "--dtype", flag)
    sd = torch.load(dst, weights_only=True)
    for k, a in tensors.items():
        ref = torch.from_numpy(a)
        if ref.is_floating_point():
            ref = ref.to(to)  # torch's own round-to-nearest-even is the oracle
        assert sd[k].dtype == ref.dtype, k
        assert same_bits(as_numpy(sd[k]), as_numpy(ref)), k


def test_round_trip_through_torch(mc, tmp_path):
    """torch.save -> CLI -> .pt -> torch.load: equal tensors, and tied weights stay one storage."""
    sd = sample_state_dict()
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(sd, a)
    mc("convert", a, b)
    back = torch.load(b, weights_only=True)
    assert sorted(back) == sorted(sd)
    for k, t in sd.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape, k
        assert same_bits(as_numpy(back[k]), as_numpy(t)), k


def write_pickle_zip(path, pickle_bytes):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/version", "3\n")


def test_malicious_pickle_is_refused_without_running(mc, tmp_path):
    marker = tmp_path / "pwned"
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    src = tmp_path / "evil.pt"
    write_pickle_zip(src, pickle.dumps(OrderedDict(w=Evil()), protocol=2))
    p = mc("inspect", src, check=False)
    assert p.returncode == 2, p.stderr
    assert "forbidden global" in p.stderr and "system" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_whole_module_pickle_is_refused(mc, tmp_path):
    src = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), src)  # pickles torch.nn.modules.linear.Linear: not a state dict
    p = mc("convert", src, tmp_path / "out.safetensors", check=False)
    assert p.returncode == 2, p.stderr
    assert "forbidden global 'torch.nn.modules.linear.Linear'" in p.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_deflated_archive_is_refused(mc, tmp_path):
    src, re = tmp_path / "a.pt", tmp_path / "re.pt"
    torch.save({"w": torch.ones(3)}, src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(re, "w", zipfile.ZIP_DEFLATED) as zout:
        for i in zin.infolist():
            zout.writestr(i.filename, zin.read(i.filename))
    p = mc("inspect", re, check=False)
    assert p.returncode == 2 and "compressed" in p.stderr, p.stderr


def test_parameters_and_int_keys(mc, tmp_path):
    # keep_vars / named_parameters pickle nn.Parameter via torch._utils._rebuild_parameter; optimizer
    # state uses int keys, flattened as decimal strings.
    model = torch.nn.Linear(3, 2)
    src, dst = tmp_path / "p.pt", tmp_path / "p.safetensors"
    torch.save({"params": dict(model.named_parameters()), "state": {0: {"exp_avg": torch.ones(2)}}}, src)
    mc("convert", src, dst)
    got, _ = read_safetensors(dst)
    assert sorted(got) == ["params.bias", "params.weight", "state.0.exp_avg"]
    assert same_bits(got["params.weight"], as_numpy(model.weight))
    assert same_bits(got["state.0.exp_avg"], np.ones(2, dtype=np.float32))


def test_legacy_non_zip_format_is_refused(mc, tmp_path):
    src = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, src, _use_new_zipfile_serialization=False)
    p = mc("inspect", src, check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
