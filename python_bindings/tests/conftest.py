"""Fixtures of the binding tests: the package (PYTHONPATH=<build>/python, set by ctest), the CLI
binary for cross-checks, and the shared real data (skipped when absent)."""
import os
import subprocess

import pytest

SHARED = os.environ.get("MC_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))


def shared(rel):
    p = os.path.join(SHARED, rel)
    if not os.path.exists(p):
        pytest.skip(f"{rel} not found under {SHARED}")
    return p


@pytest.fixture
def cli():
    """cli(*args) runs the mcompress binary and returns the CompletedProcess (check=False)."""
    binary = os.environ.get("MCOMPRESS_BIN")
    if not binary or not os.path.exists(binary):
        pytest.skip("MCOMPRESS_BIN not set (run through ctest)")
    return lambda *args: subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
