"""mcompress sweep on the local backend: a grid expands into jobs, runs with a worker pool, finished jobs are
skipped on the next run, and the combined report (json, md, html with the Pareto chart) lists every job."""
import json
import os

RECIPES = os.path.join(os.path.dirname(__file__), "..", "..", "recipes")


def test_local_sweep_runs_grid_and_skips_finished_jobs(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"""name: grid
models: [{{name: tiny, path: {model}}}]
recipes: [{os.path.join(RECIPES, "demo.yaml")}]
params: {{bits: [3, 4, 8], group-size: [16, per-channel]}}
data: {{eval: {d / "corpus" / "valid.txt"}}}
""")
    listing = mc("sweep", sweep, "-o", tmp_path / "out", "--list").stdout.split()
    assert len(listing) == 6 and "tiny__demo__bits-8__group-size-per-channel" in listing
    p = mc("sweep", sweep, "-o", tmp_path / "out", "--jobs", "2")
    assert "6 jobs (0 done earlier, 6 to run)" in p.stdout
    res = json.loads((tmp_path / "out" / "sweep.json").read_text())["results"]
    assert len(res) == 6 and all(r["exit_code"] in (0, 3) for r in res)
    bpw = {r["job"]: r["bits_per_weight"] for r in res}
    assert bpw["tiny__demo__bits-8__group-size-16"] > bpw["tiny__demo__bits-4__group-size-16"] > bpw["tiny__demo__bits-3__group-size-16"]
    assert bpw["tiny__demo__bits-4__group-size-per-channel"] < bpw["tiny__demo__bits-4__group-size-16"]
    html = (tmp_path / "out" / "sweep.html").read_text()
    assert "<svg" in html and "Pareto" in html and "http://www.w3.org/2000/svg" in html
    assert html.count("<circle") == 6
    p = mc("sweep", sweep, "-o", tmp_path / "out", "--jobs", "2")
    assert "6 jobs (6 done earlier, 0 to run)" in p.stdout


def test_bad_sweeps_exit_2(mc, tiny_lm, tmp_path):
    d, model = tiny_lm
    for text, msg in [("models: []\nrecipes: [x]\n", "'models' must be a non-empty list"),
                      (f"models: [{{path: {model}}}]\nrecipes: [/nonexistent.yaml]\n", "cannot open the recipe"),
                      (f"models: [{{path: {model}}}]\nrecipes: [{os.path.join(RECIPES, 'demo.yaml')}]\ncolour: 1\n",
                       "unknown key 'colour'")]:
        sweep = tmp_path / "bad.yaml"
        sweep.write_text(text)
        p = mc("sweep", sweep, "-o", tmp_path / "bad-out", check=False)
        assert p.returncode == 2 and msg in p.stderr, p.stderr
        assert not (tmp_path / "bad-out").exists()
