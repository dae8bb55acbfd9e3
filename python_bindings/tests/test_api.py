"""The package's job API: checkpoints as numpy/torch round trips (and against the CLI both ways),
quantize/prune/run with CLI options as keyword arguments returning the report, progress callbacks,
and errors mapped to Python (InputError is a ValueError, FileError an OSError, both mcompress.Error)."""
import json
import os

import numpy as np
import pytest

import mcompress
from conftest import shared

RECIPES = os.path.join(os.path.dirname(__file__), "..", "..", "recipes")


def test_save_load_roundtrip_numpy_and_torch(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.standard_normal((3, 5)).astype(np.float32),
               "b": np.arange(6, dtype=np.int64).reshape(2, 3),
               "c": rng.standard_normal(4).astype(np.float16),
               "t": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),  # not contiguous
               "bf": torch.tensor([1.5, -2.25], dtype=torch.bfloat16)}
    for ext in ("safetensors", "pt", "h5"):
        path = tmp_path / f"m.{ext}"
        mcompress.save(path, tensors, metadata={"who": "test"})
        got, meta = mcompress.load(path)
        assert set(got) == set(tensors)
        np.testing.assert_array_equal(got["a.weight"], tensors["a.weight"])
        np.testing.assert_array_equal(got["b"], tensors["b"])
        np.testing.assert_array_equal(got["c"], tensors["c"])
        np.testing.assert_array_equal(got["t"], tensors["t"].numpy())
        np.testing.assert_array_equal(got["bf"], np.array([1.5, -2.25], np.float32))
        assert got["c"].dtype == np.float16
        if ext == "safetensors":
            assert meta["who"] == "test"
    info = mcompress.inspect(tmp_path / "m.safetensors")
    assert info["format"] == "safetensors"
    assert {t["name"]: t["shape"] for t in info["tensors"]}["a.weight"] == [3, 5]


def test_python_checkpoint_reads_in_cli_and_cli_output_in_python(tmp_path, cli):
    w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    mcompress.save(tmp_path / "py.safetensors", {"layer.weight": w})
    p = cli("inspect", tmp_path / "py.safetensors", "--json")
    assert p.returncode == 0, p.stderr
    js = json.loads(p.stdout)
    assert [t["name"] for t in js["tensors"]] == ["layer.weight"]
    p = cli("convert", tmp_path / "py.safetensors", tmp_path / "cli.pt", "--dtype", "f16")
    assert p.returncode == 0, p.stderr
    got, _ = mcompress.load(tmp_path / "cli.pt")
    np.testing.assert_array_equal(got["layer.weight"], w.astype(np.float16))


def test_quantize_returns_report_and_progress_events(tmp_path):
    model = shared("stories260K/stories260K.bin")
    text = shared("tinystories/validation_100.txt")
    calib = shared("tinyshakespeare/input.txt")  # never the evaluation text
    events = []
    rep = mcompress.quantize(model, tmp_path / "q", method="gptq", bits=4, group_size=32, calib=calib,
                             calib_samples=32, eval=text, max_docs=20, truncate=True, threads=2,
                             progress=events.append)
    assert isinstance(rep, dict) and isinstance(rep, mcompress.Report)
    on_disk = json.loads((tmp_path / "q" / "report.json").read_text())
    assert rep == on_disk
    assert len(rep.layers) == 35 and all("rel_output_error" in l for l in rep.layers)
    m = rep.metric()
    assert m is not None and m["compressed"] > m["baseline"] > 0  # bits per byte: worse after int4
    kinds = {e["event"] for e in events}
    assert {"start", "progress", "done"} <= kinds
    layers = [e for e in events if e["event"] == "progress"]
    assert layers and all(isinstance(e, dict) for e in layers)
    # The Python result equals the CLI's: same options, same bytes.
    tensors, meta = mcompress.load(tmp_path / "q" / "model.safetensors", dequantize=False)
    assert "mcompress.quantization" in meta and any(k.endswith(".qweight") for k in tensors)


def test_quantize_same_bytes_as_cli(tmp_path, cli):
    model = shared("stories260K/stories260K.bin")
    text = shared("tinystories/validation_100.txt")
    mcompress.quantize(model, tmp_path / "py", method="awq", bits=4, group_size=32, calib=text,
                       calib_samples=16, progress=False)
    p = cli("quantize", "--method", "awq", "--bits", "4", "--group-size", "32", "--calib", text,
            "--calib-samples", "16", model, "-o", tmp_path / "cli", "-q")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "py" / "model.safetensors").read_bytes() == (tmp_path / "cli" / "model.safetensors").read_bytes()


def test_run_recipe_and_gate_error(tmp_path):
    model = shared("stories260K/stories260K.bin")
    text = shared("tinystories/validation_100.txt")
    recipe = tmp_path / "strict.yaml"
    recipe.write_text("name: strict\nstages:\n  - quantize:\n      method: rtn\n      bits: 3\n"
                      "gate:\n  metric: bits per byte\n  max-relative-drop: 0.001\n")
    with pytest.raises(mcompress.GateError) as e:
        mcompress.run(recipe, model, tmp_path / "out", eval=text, max_docs=10, truncate=True, progress=False)
    assert e.value.report is not None and e.value.report.settings["accuracy gate"].startswith("FAILED")
    assert "FAILED" in str(e.value)


def test_evaluate_returns_the_published_figure():
    model = shared("stories260K/stories260K.bin")
    text = shared("tinystories/validation_100.txt")
    r = mcompress.evaluate(model, text, truncate=True)
    assert abs(r["result"]["bits_per_byte"] - 0.8132) < 5e-5  # the published stories260K figure


def test_errors_map_to_python_types(tmp_path):
    with pytest.raises(mcompress.FileError) as e:
        mcompress.load(tmp_path / "missing.safetensors")
    assert isinstance(e.value, OSError) and isinstance(e.value, mcompress.Error)
    assert "missing.safetensors" in str(e.value)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    with pytest.raises(mcompress.InputError) as e:
        mcompress.load(bad)
    assert isinstance(e.value, ValueError)
    mcompress.save(tmp_path / "m.safetensors", {"w": np.ones((4, 4), np.float32)})
    with pytest.raises(ValueError, match="bits 11 outside 2..8"):
        mcompress.quantize(tmp_path / "m.safetensors", tmp_path / "o", bits=11, progress=False)
    with pytest.raises(mcompress.InputError, match="unrecognised|unknown|bogus"):
        mcompress.quantize(tmp_path / "m.safetensors", tmp_path / "o2", bogus_option=1, progress=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_progress_callback_exception_propagates(tmp_path):
    model = shared("stories260K/stories260K.bin")
    text = shared("tinystories/validation_100.txt")

    class Stop(Exception):
        pass

    def cb(e):
        if e["event"] == "progress":
            raise Stop("enough")

    with pytest.raises(Stop):
        mcompress.quantize(model, tmp_path / "q", method="gptq", calib=text, calib_samples=8, progress=cb)


def test_concurrent_jobs_each_get_their_own_events(tmp_path):
    """Each call carries its own event sink (no process global): two jobs running at once in two threads
    each see only their own events."""
    import threading
    model = shared("stories260K/stories260K.bin")
    calib = shared("tinyshakespeare/input.txt")
    events = {"a": [], "b": []}
    errors = []

    def job(name, method):
        try:
            mcompress.quantize(model, tmp_path / name, method=method, bits=4, group_size=32, calib=calib,
                               calib_samples=16, progress=events[name].append)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=job, args=("a", "gptq")), threading.Thread(target=job, args=("b", "awq"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for name, method in (("a", "gptq"), ("b", "awq")):
        ev = events[name]
        starts = [e for e in ev if e["event"] == "start"]
        assert len(starts) == 1 and str(tmp_path / name) in starts[0]["args"]
        prog = [e for e in ev if e["event"] == "progress"]
        assert prog and all(e["method"] == method for e in prog)
        assert sum(e["event"] == "done" for e in ev) == 1


def test_quantize_with_eora_adapter(tmp_path):
    """eora=RANK from Python: the adapter beside the model, the report's with-adapter row, and evaluate(adapter=)
    reproducing it from the files; on the real stories260K at int3 the adapter wins back most of the loss."""
    model = shared("stories260K/stories260K.bin")
    text = shared("tinystories/validation_100.txt")
    calib = shared("tinyshakespeare/input.txt")  # never the evaluation text
    rep = mcompress.quantize(model, tmp_path / "q", method="gptq", bits=3, group_size=32, calib=calib,
                             calib_samples=64, calib_seqlen=128, eval=text, window=128, truncate=True, eora=8,
                             progress=False)
    assert rep.settings["EoRA"].startswith("rank 8 correction")
    assert (tmp_path / "q" / "eora" / "adapter_config.json").exists()
    m = {x["name"]: x for x in rep.metrics}
    plain, fixed = m["bits per byte"], m["bits per byte (with the EoRA rank-8 adapter)"]
    assert plain["baseline"] < fixed["compressed"] < plain["compressed"]
    r = mcompress.evaluate(tmp_path / "q" / "model.safetensors", text, window=128, truncate=True,
                           adapter=tmp_path / "q" / "eora")
    assert r["result"]["bits_per_byte"] == pytest.approx(fixed["compressed"], rel=1e-9)


def test_imatrix_and_export_from_python(tmp_path, cli):
    """imatrix() writes llama-imatrix's GGUF file, the same bytes as the CLI; export() writes a GGUF file weighted
    by it that evaluate() reads; bad input raises InputError and leaves nothing behind."""
    model = shared("stories260K/stories260K.bin")
    tok = shared("stories260K/tok512.bin")
    calib = shared("tinyshakespeare/input.txt")
    text = shared("tinystories/validation_100.txt")
    mcompress.imatrix(model, tmp_path / "im.gguf", calib=calib, calib_samples=8, calib_seqlen=64, tokenizer=tok,
                      progress=False)
    p = cli("imatrix", model, "--calib", calib, "--calib-samples", "8", "--calib-seqlen", "64", "--tokenizer", tok,
            "-o", tmp_path / "cli.gguf", "-q")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "im.gguf").read_bytes() == (tmp_path / "cli.gguf").read_bytes()
    _, meta = mcompress.load(tmp_path / "im.gguf")
    assert meta.get("general.type") == "imatrix"
    mcompress.export(model, tmp_path / "m.gguf", format="gguf:iq4_nl", imatrix=tmp_path / "im.gguf", tokenizer=tok,
                     progress=False)
    r = mcompress.evaluate(tmp_path / "m.gguf", text, tokenizer=tok, window=128, truncate=True, max_docs=20)
    assert 0.8 < r["result"]["bits_per_byte"] < 1.0
    with pytest.raises(mcompress.InputError):
        mcompress.export(model, tmp_path / "bad.gguf", format="gguf:q9_k", progress=False)
    assert not (tmp_path / "bad.gguf").exists()
