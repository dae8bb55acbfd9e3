"""mcompress distill end to end on the project's own generated data and small models: students from
a config, from the teacher pruned, and recovery of compressed models (the packed layout, grids and
masks kept, read back with the independent safetensors reader of conftest.py); classifiers; bad
input exits 2 with one line, no output directory and no checkpoint overwritten."""
import json
import os
import re

import numpy as np
import pytest

from conftest import read_safetensors, shared, train_tiny_lm, write_safetensors

QUICK_NOSTEPS = ["--batch", "4", "--seq-len", "32", "--warmup", "2", "--eval-every", "3", "-q"]
QUICK = ["--steps", "6", *QUICK_NOSTEPS]


def report(out):
    return json.loads((out / "report.json").read_text())


def metric(rep, name, col):
    return [m for m in rep["metrics"] if m["name"] == name][0][col]


@pytest.fixture(scope="module")
def student_yaml(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "student.yaml"
    p.write_text("dim: 16\nn_layers: 1\nn_heads: 2\nn_kv_heads: 1\nhidden_dim: 40\n")
    return p


def test_config_student_with_teacher_data_and_report(mc, tiny_lm, student_yaml):
    d, teacher = tiny_lm
    out = d / "cfg-student"
    mc("distill", "--teacher", teacher, "--student-config", student_yaml, "--data", d / "corpus" / "train.txt",
       "--generate", "8", "--eval", d / "corpus" / "valid.txt", "--loss", "kl=1,ce=0.5,hidden=1,attention=0.1,T=2",
       "-o", out, *QUICK)
    rep = report(out)
    assert rep["method"] == "distill"
    assert "kl 1 (T 2) + ce 0.5 + hidden 1 + attention 0.1" == rep["settings"]["loss"]
    assert rep["settings"]["layer map (student:teacher)"] == "0:1"
    assert "8 sequences" in rep["settings"]["training data"]
    assert metric(rep, "bits per byte", "baseline") > 0 and metric(rep, "bits per byte", "compressed") > 0
    # The generated tokens are kept (uint32) and are sequences starting with BOS from the teacher's vocabulary.
    gen = np.fromfile(out / "generated.u32", dtype=np.uint32)
    assert gen.size > 8 and gen.max() < 768
    # The student file loads on its own and is the smaller model.
    tensors, meta = read_safetensors(out / "model.safetensors")
    assert tensors["tok_embeddings.weight"].shape[1] == 16
    assert json.loads(meta["mcompress.llama.config"])["n_layers"] == 1
    assert rep["size_after_bytes"] < rep["size_before_bytes"]
    j = json.loads(mc("eval", out / "model.safetensors", "--data", d / "corpus" / "valid.txt",
                      "--tokenizer", d / "corpus" / "tokenizer.bin", "--json").stdout)
    assert j["result"]["bits_per_byte"] == pytest.approx(metric(rep, "bits per byte", "compressed"), rel=1e-6)
    # Training state for resume; resuming the finished run changes nothing.
    assert (out / "train-state.safetensors").exists()
    before = (out / "model.safetensors").read_bytes()
    mc("distill", "--teacher", teacher, "--student-config", student_yaml, "--data", d / "corpus" / "train.txt",
       "--generate", "8", "--eval", d / "corpus" / "valid.txt", "--loss", "kl=1,ce=0.5,hidden=1,attention=0.1,T=2",
       "-o", out, "--resume", *QUICK)
    assert (out / "model.safetensors").read_bytes() == before


def test_student_pruned_from_the_teacher(mc, tiny_lm):
    d, teacher = tiny_lm
    out = d / "pruned-student"
    mc("distill", "--teacher", teacher, "--student-init", "prune:every=2,ffn=0.5", "--data", d / "corpus" / "train.txt",
       "--eval", d / "corpus" / "valid.txt", "-o", out, *QUICK)
    tensors, meta = read_safetensors(out / "model.safetensors")
    cfg = json.loads(meta["mcompress.llama.config"])
    assert cfg["n_layers"] == 1 and cfg["hidden_dim"] == 40
    assert "every 2nd block kept" in report(out)["settings"]["student"]


@pytest.mark.parametrize("kind", ["gptq3", "sparse24", "w8a8"])
def test_recovery_keeps_grids_and_masks(mc, tiny_lm, kind):
    d, teacher = tiny_lm
    comp = d / f"comp-{kind}"
    if kind == "gptq3":
        mc("quantize", teacher, "--method", "gptq", "--bits", "3", "--group-size", "16",
           "--calib", d / "corpus" / "train.txt", "--calib-samples", "8", "--calib-seqlen", "32", "-o", comp, "-q")
    elif kind == "w8a8":
        mc("quantize", teacher, "--method", "smoothquant", "--calib", d / "corpus" / "train.txt",
           "--calib-samples", "8", "--calib-seqlen", "32", "-o", comp, "-q")
    else:
        mc("prune", teacher, "--method", "sparsegpt", "--pattern", "2:4", "--bits", "4", "--group-size", "16",
           "--calib", d / "corpus" / "train.txt", "--calib-samples", "8", "--calib-seqlen", "32", "-o", comp, "-q")
    out = d / f"recovered-{kind}"
    mc("distill", "--teacher", teacher, "--student", comp / "model.safetensors", "--data", d / "corpus" / "train.txt",
       "--eval", d / "corpus" / "valid.txt", "--lr", "1e-3", "-o", out, *QUICK)
    t_in, m_in = read_safetensors(comp / "model.safetensors")
    t_out, m_out = read_safetensors(out / "model.safetensors")
    d_in = json.loads(m_in["mcompress.quantization"])["tensors"]
    d_out = json.loads(m_out["mcompress.quantization"])["tensors"]
    assert d_in == d_out  # same entries, bits, groups, layouts
    assert m_in.get("mcompress.activations") == m_out.get("mcompress.activations")  # W8A8 stays W8A8
    changed = 0
    for key in d_in:
        # Grids are frozen: scales (and zeros) byte for byte; N:M positions too.
        for part in (".scales", ".zeros", ".indices", ".mask"):
            if key + part in t_in:
                assert np.array_equal(t_in[key + part], t_out[key + part]), key + part
        changed += not np.array_equal(t_in[key + ".qweight"], t_out[key + ".qweight"])
    assert changed > 0  # training moved codes
    rep = report(out)
    assert rep["method"] == "recovery fine-tuning"
    assert "bits per byte (student before training)" in [m["name"] for m in rep["metrics"]]
    assert "gap to the teacher closed" in rep["settings"]


def test_classifier_students(mc, tmp_path):
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(0, 0.5, (32, 12)).astype(np.float32), rng.normal(0, 0.1, 32).astype(np.float32)
    w2, b2 = rng.normal(0, 0.5, (5, 32)).astype(np.float32), np.zeros(5, np.float32)
    write_safetensors(tmp_path / "teacher.safetensors", {"fc1.weight": w1, "fc1.bias": b1, "fc2.weight": w2, "fc2.bias": b2})
    arch = tmp_path / "mlp.yaml"
    arch.write_text("input: {shape: [12]}\nlayers:\n  - {type: linear, name: fc1, in: 12, out: 32}\n"
                    "  - {type: relu}\n  - {type: linear, name: fc2, in: 32, out: 5}\n")
    x = rng.normal(0, 1, (600, 12)).astype(np.float32)
    y = (np.maximum(x @ w1.T + b1, 0) @ w2.T + b2).argmax(1).astype(np.int64)
    write_safetensors(tmp_path / "data.safetensors", {"inputs": x, "labels": y})
    common = ["--teacher", tmp_path / "teacher.safetensors", "--arch", arch, "--data", tmp_path / "data.safetensors",
              "--data-range", "0:500", "--eval", tmp_path / "data.safetensors", "--eval-range", "500:600",
              "--steps", "150", "--batch", "32", "--lr", "1e-2", "--warmup", "10", "-q"]
    mc("distill", *common, "--student-init", "prune:hidden=8", "--generate", "500", "--loss", "kl=1,ce=0.5,T=2",
       "-o", tmp_path / "pruned")
    rep = report(tmp_path / "pruned")
    assert metric(rep, "top-1 accuracy", "baseline") == 1.0  # the labels are the teacher's
    assert metric(rep, "top-1 accuracy", "compressed") > metric(rep, "top-1 accuracy (student before training)", "compressed") - 1e-9
    assert metric(rep, "top-1 accuracy", "compressed") >= 0.8
    t, meta = read_safetensors(tmp_path / "pruned" / "model.safetensors")
    assert t["fc1.weight"].shape == (8, 12) and t["fc2.weight"].shape == (5, 8)
    cfg = tmp_path / "small.yaml"
    cfg.write_text(arch.read_text().replace("out: 32", "out: 16").replace("in: 32", "in: 16"))
    mc("distill", *common, "--student-config", cfg, "-o", tmp_path / "config")
    assert metric(report(tmp_path / "config"), "top-1 accuracy", "compressed") >= 0.6


def test_bad_input_exits_2_without_output(mc, tiny_lm, student_yaml, tmp_path):
    d, teacher = tiny_lm
    base = ["--teacher", teacher, "--data", d / "corpus" / "train.txt", *QUICK_NOSTEPS]
    cases = [
        (["--student-config", student_yaml, "--lr", "0"], "learning rate must be positive"),
        (["--student-config", student_yaml, "--lr", "-1e-3"], "learning rate must be positive"),
        (["--student-config", student_yaml, "--steps", "0"], "steps must be positive"),
        (["--student-config", student_yaml, "--loss", "kl=1,hidden=1", "--layer-map", "0:7"], "the teacher has no block 7"),
        (["--student-config", student_yaml, "--loss", "kl=1,hidden=1", "--layer-map", "3:0"], "the student has no block 3"),
        (["--student-config", student_yaml, "--loss", "kl=1,alpha=0.5"], "unknown term 'alpha'"),
        (["--student-init", "every=2"], "must start with prune:"),
        ([], "exactly one of --student-config"),
    ]
    for extra, msg in cases:
        out = tmp_path / "bad"
        p = mc("distill", *base, *extra, "-o", out, check=False)
        assert p.returncode == 2, (extra, p.stdout, p.stderr)
        assert msg in p.stderr, (extra, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not out.exists()


def test_vocabulary_mismatch_and_foreign_checkpoint(mc, tiny_lm, student_yaml, tmp_path_factory):
    d, teacher = tiny_lm
    # A student with another vocabulary: a model trained on a 300-token tokenizer.
    d2, other = train_tiny_lm(tmp_path_factory.mktemp("lm300"), vocab=300, stories=150)
    out = d / "vocab"
    p = mc("distill", "--teacher", teacher, "--student", other, "--data", d / "corpus" / "train.txt", "-o", out,
           *QUICK, check=False)
    assert p.returncode == 2 and re.search(r"vocabulary has \d+ tokens, the teacher's \d+", p.stderr), p.stderr
    assert not out.exists()
    # A resume from another configuration: refused, and neither the checkpoint nor the model changes.
    out = d / "resume"
    args = ["--teacher", teacher, "--student-config", student_yaml, "--data", d / "corpus" / "train.txt",
            "--checkpoint-every", "3", "-o", out, *QUICK]
    mc("distill", *args)
    state, model = (out / "train-state.safetensors").read_bytes(), (out / "model.safetensors").read_bytes()
    p = mc("distill", *args, "--resume", "--lr", "5e-3", check=False)
    assert p.returncode == 2 and "checkpoint of another configuration (lr is" in p.stderr, p.stderr
    p = mc("distill", *args, "--resume", "--loss", "ce=1", check=False)
    assert p.returncode == 2 and "(loss is kl 1 (T 2) there, ce 1 here)" in p.stderr, p.stderr
    p = mc("distill", *args, check=False)  # no --resume into a directory holding a checkpoint
    assert p.returncode == 2 and "pass --resume" in p.stderr, p.stderr
    assert (out / "train-state.safetensors").read_bytes() == state
    assert (out / "model.safetensors").read_bytes() == model


def test_mnist_student_from_the_real_teacher(mc, tmp_path):
    mnist = shared("mnist")
    teacher = shared("mnist/mnist_mlp.state_dict")
    arch = os.path.join(os.path.dirname(__file__), "..", "..", "data", "mnist_mlp.yaml")
    out = tmp_path / "mnist"
    mc("distill", "--teacher", teacher, "--arch", arch, "--student-init", "prune:hidden=100", "--data", mnist,
       "--data-range", "0:8000", "--generate", "8000", "--eval", mnist, "--eval-range", "8000:10000",
       "--loss", "kl=1,T=300", "--lr", "1e-3", "--steps", "400", "--batch", "128", "-o", out, "-q")
    rep = report(out)
    t, _ = read_safetensors(out / "model.safetensors")
    assert t["fc1.weight"].shape == (100, 784)
    # 400 steps already beat the pruned init by far (the closing note's figure uses 3000 steps).
    assert metric(rep, "top-1 accuracy", "compressed") > 0.95
    assert metric(rep, "top-1 accuracy (student before training)", "compressed") < 0.9


def test_interrupt_saves_state_and_resume_finishes(tiny_lm, student_yaml):
    import signal
    import subprocess

    from conftest import mcompress_bin
    d, teacher = tiny_lm
    out = d / "interrupted"
    args = [mcompress_bin(), "distill", "--teacher", teacher, "--student-config", student_yaml,
            "--data", d / "corpus" / "train.txt", "--steps", "100000", "--batch", "2", "--seq-len", "16",
            "--eval-every", "0", "-o", out]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:  # progress lines start once training runs (the handler is installed then)
        if line.startswith("step"):
            break
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 130, (rest, err)
    assert "continue with the same command and --resume" in rest
    assert (out / "train-state.safetensors").exists() and not (out / "model.safetensors").exists()
    # The same command with --resume picks it up: progress lines come every 50 steps, the first run stopped
    # at step 50 or later, so a resumed run's first line is step 100 or later (a fresh one's would be 50).
    p = subprocess.Popen(args + ["--resume"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("step"):
            assert int(line.split()[1].split("/")[0]) >= 100, line
            break
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
