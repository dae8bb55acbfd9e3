"""Resume at block granularity: a quantize, prune or recipe run killed with SIGKILL in the middle of a
block-sequential pass and started again with the same command writes the same model bytes as an
uninterrupted run, reports that it resumed, and leaves no journal behind. The kill is real: the test
waits until the journal holds a given block file, then sends SIGKILL (stories260K, skipped when absent)."""
import os
import signal
import subprocess
import time

import pytest

from conftest import mcompress_bin, shared

RECIPES = os.path.join(os.path.dirname(__file__), "..", "..", "recipes")


def run_killed(args, marker, timeout=120):
    """Starts mcompress ARGS, SIGKILLs it as soon as `marker` exists; returns True when it was killed
    (False: the run finished before the marker was seen)."""
    p = subprocess.Popen([mcompress_bin(), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while p.poll() is None and not os.path.exists(marker):
        if time.time() - t0 > timeout:
            p.kill()
            raise AssertionError("no journal block appeared: " + str(marker))
        time.sleep(0.005)
    if p.poll() is not None:
        return False
    p.send_signal(signal.SIGKILL)
    p.wait()
    return True


CASES = {
    "gptq-mixed-scan": (["quantize", "--method", "gptq", "--bits", "4", "--target-bpw", "3.5"], "scan-block-1"),
    "gptq-mixed-quant": (["quantize", "--method", "gptq", "--bits", "4", "--target-bpw", "3.5"], "quantize-block-2"),
    "awq": (["quantize", "--method", "awq", "--bits", "4", "--group-size", "32"], "quantize-block-1"),
    "smoothquant": (["quantize", "--method", "smoothquant"], "quantize-block-2"),
    # The Hadamard pre-pass runs again on resume (deterministic) before the journaled blocks are restored.
    "gptq-rotate-w4a4": (["quantize", "--method", "gptq", "--bits", "4", "--group-size", "32", "--rotate",
                          "hadamard-online", "--act-bits", "4"], "quantize-block-2"),
    "sparsegpt-owl-int4": (["prune", "--method", "sparsegpt", "--sparsity", "0.5", "--distribution", "owl",
                            "--bits", "4"], "prune-block-1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_run_resumes_to_the_same_bytes(mc, tmp_path, case):
    model = shared("stories260K/stories260K.bin")
    text = shared("tinystories/validation_100.txt")
    args, block = CASES[case]
    common = [model, "--calib", text, "--calib-samples", "64", "-q"]
    mc(*args, *common, "-o", tmp_path / "full")
    out = tmp_path / "part"
    # The marker block leaves at least two more blocks to do: the kill lands in the middle of the pass.
    assert run_killed([*args, *common, "-o", out], out / ".resume" / f"{block}.safetensors")
    assert (out / ".resume").is_dir() and not (out / "model.safetensors").exists()
    again = mc(*args, *[a for a in common if a != "-q"], "-o", out)
    assert "resuming an interrupted run" in again.stdout
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "full" / "model.safetensors").read_bytes()
    assert not (out / ".resume").exists()
    assert not [f for f in os.listdir(out) if ".tmp-" in f]


def test_killed_recipe_resumes_inside_its_stage(mc, tmp_path):
    model = shared("stories260K/stories260K.bin")
    text = shared("tinystories/validation_100.txt")
    recipe = os.path.join(RECIPES, "sparse-2of4-w4.yaml")
    common = ["run", recipe, "--model", model, "--calib", text]
    mc(*common, "-o", tmp_path / "full", "-q")
    out = tmp_path / "part"
    assert run_killed([*common, "-o", out, "-q"], out / "stages" / "2-quantize" / ".resume" / "quantize-block-1.safetensors")
    again = mc(*common, "-o", out)
    assert "done by an earlier run: reused" in again.stdout  # stage 1
    assert "resuming an interrupted run" in again.stdout       # inside stage 2
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "full" / "model.safetensors").read_bytes()
