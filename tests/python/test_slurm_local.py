"""scripts/slurm_local.sh brings up a real single-node Slurm cluster (own munged, slurmctld, slurmd)
under a temporary directory; a 4-task job array runs on it and every task's output and exit status
is checked. This is the harness for running mcompress batch sweeps as Slurm job arrays. Skips when
Slurm/munge are not installed (Debian: slurm-wlm munge) or when not running as root."""
import os
import re
import shutil
import subprocess
import time

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "slurm_local.sh")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}


def _skip_reason():
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "scontrol", "munged") if shutil.which(b) is None]
    if missing:
        return f"Slurm not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd launches jobs)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory, request):
    """(cluster directory, environment with SLURM_CONF) for a cluster that is stopped at the end,
    whether the start, the test or nothing failed."""
    d = tmp_path_factory.mktemp("slurm")

    def stop():
        subprocess.run(["bash", SCRIPT, "stop", str(d)], capture_output=True, text=True, timeout=60)
    request.addfinalizer(stop)  # before start: a half-started cluster is cleaned up too

    p = subprocess.run(["bash", SCRIPT, "start", str(d)], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        pytest.fail(f"slurm_local.sh start exited {p.returncode}:\n{p.stderr}")
    m = re.search(r"^export SLURM_CONF=(\S+)$", p.stdout, re.M)
    assert m, p.stdout
    env = dict(os.environ, SLURM_CONF=m.group(1))
    return d, env


def array_tasks(env, job_id):
    """{task id: (state, exit code)} from `scontrol show job` (sacct needs accounting, off here);
    pending tasks are still one record with a range like 2-3, which shows up as a non-integer key."""
    p = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True, check=True)
    out = {}
    for line in p.stdout.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        out[f.get("ArrayTaskId", "?")] = (f.get("JobState"), f.get("ExitCode"))
    return out


def test_job_array_runs_every_task(slurm):
    d, env = slurm
    t0 = time.monotonic()
    task = "/bin/sh -c 'echo $SLURM_ARRAY_TASK_ID > " + str(d) + "/task-$SLURM_ARRAY_TASK_ID.txt'"
    p = subprocess.run(["sbatch", "--parsable", "--array=0-3", "--job-name=mc-array", "--time=5",
                        "--output", str(d / "out-%a.txt"), "--wrap", task],
                       env=env, cwd=d, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip().split(";")[0]

    # Poll (sbatch --wait backs off to 10 s between checks; this is quicker).
    deadline = time.monotonic() + 45
    while True:
        tasks = array_tasks(env, job_id)
        if sorted(tasks) == ["0", "1", "2", "3"] and all(s in TERMINAL for s, _ in tasks.values()):
            break
        if time.monotonic() > deadline:
            log = (d / "log" / "slurmctld.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"array {job_id} not finished after 45 s: {tasks}\nslurmctld.log tail:\n{log}")
        time.sleep(0.2)

    assert tasks == {str(i): ("COMPLETED", "0:0") for i in range(4)}
    for i in range(4):
        assert (d / f"task-{i}.txt").read_text() == f"{i}\n"
        assert (d / f"out-{i}.txt").exists()
    assert time.monotonic() - t0 < 45


def test_sweep_on_slurm_matches_the_local_backend(slurm, tmp_path):
    """`mcompress sweep --backend slurm` runs a 4-job grid as one job array; every output is byte for byte
    what the local worker pool writes, and the combined reports list all four."""
    import json

    from conftest import mcompress_bin, train_tiny_lm
    _, env = slurm
    d, model = train_tiny_lm(tmp_path / "lm")
    recipes = os.path.join(os.path.dirname(__file__), "..", "..", "recipes")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"""name: four
models: [{{name: tiny, path: {model}}}]
recipes: [{os.path.join(recipes, "demo.yaml")}]
params: {{method: [rtn, gptq], bits: [3, 4]}}
data: {{calib: {d / "corpus" / "train.txt"}, eval: {d / "corpus" / "valid.txt"}}}
threads: 1
""")
    local = subprocess.run([mcompress_bin(), "sweep", sweep, "-o", tmp_path / "local", "--jobs", "2", "-q"],
                           capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr
    on_slurm = subprocess.run([mcompress_bin(), "sweep", sweep, "-o", tmp_path / "slurm", "--backend", "slurm",
                               "--time", "00:10:00"], env=env, capture_output=True, text=True, timeout=600)
    assert on_slurm.returncode == 0, on_slurm.stdout + on_slurm.stderr
    assert "submitted Slurm job array" in on_slurm.stdout
    assert "#SBATCH --array=0-3" in (tmp_path / "slurm" / "sweep.sbatch").read_text()
    results = json.loads((tmp_path / "slurm" / "sweep.json").read_text())["results"]
    assert len(results) == 4 and all(r["exit_code"] in (0, 3) for r in results)
    for r in results:
        a = (tmp_path / "local" / "jobs" / r["job"] / "out" / "model.safetensors").read_bytes()
        b = (tmp_path / "slurm" / "jobs" / r["job"] / "out" / "model.safetensors").read_bytes()
        assert a == b, r["job"]
    assert "<svg" in (tmp_path / "slurm" / "sweep.html").read_text()
