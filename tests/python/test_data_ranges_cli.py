"""--calib-range / --eval-range: one labeled file (the MNIST test set) split into a calibration part and a
held-out part. The report names both ranges, the evaluation runs on the held-out examples (its accuracies are
multiples of 1/200), overlapping ranges of one file are warned about in plain words, and a bad range is one line
with exit 2 and nothing written."""
import json
import pathlib

import pytest

from conftest import shared


ARCH = pathlib.Path(__file__).resolve().parents[2] / "data" / "mnist_mlp.yaml"


def _quantize(mc, out, calib_range, eval_range, check=True):
    mnist = shared("mnist")
    return mc("quantize", shared("mnist/mnist_mlp.state_dict"), "--arch", ARCH, "--method", "gptq",
              "--bits", "4", "--group-size", "32", "--calib", mnist, "--calib-range", calib_range,
              "--calib-samples", "64", "--eval", mnist, "--eval-range", eval_range, "-o", out, "-q", check=check)


def test_split_file_is_held_out_and_named(mc, tmp_path):
    _quantize(mc, tmp_path / "a", "0:500", "500:700")
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["settings"]["calibration data"].split(" (sha256")[0].endswith("mnist [0:500]")
    assert rep["settings"]["evaluation data"].endswith("mnist [500:700]")
    assert not any("overlap" in w for w in rep.get("warnings", []))
    top1 = next(m for m in rep["metrics"] if m["name"].startswith("top-1"))
    # 200 examples: every accuracy is a multiple of 1/200.
    assert abs(top1["baseline"] * 200 - round(top1["baseline"] * 200)) < 1e-9


def test_overlapping_ranges_of_one_file_are_warned_about(mc, tmp_path):
    _quantize(mc, tmp_path / "b", "0:600", "500:700")
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert any("ranges overlap: the figures are not held out" in w for w in rep["warnings"]), rep.get("warnings")


@pytest.mark.parametrize("calib_range,expect", [("5:3", "--calib-range 5:3 is empty or outside"),
                                                 ("0:20000", "--calib-range 0:20000 is empty or outside"),
                                                 ("abc", "--calib-range 'abc' is not START:END")])
def test_bad_range_is_one_line(mc, tmp_path, calib_range, expect):
    p = _quantize(mc, tmp_path / "c", calib_range, "500:700", check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and expect in p.stderr, p.stderr
    assert not (tmp_path / "c").exists()
