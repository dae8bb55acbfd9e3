"""`pip install ./python_bindings` works offline with only the Debian packages: into a fresh venv
(made with --system-site-packages, as the README says), no index, then the package imports from
another directory and runs. The build reuses ctest's build directory (MC_BUILD_DIR), so this checks
the packaging, not a second compilation."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def test_pip_install_offline_into_a_venv(tmp_path):
    build = os.environ.get("MC_BUILD_DIR")
    if not build or not os.path.exists(os.path.join(build, "build.ninja")):
        pytest.skip("MC_BUILD_DIR not set (run through ctest)")
    pkg = tmp_path / "python_bindings"  # a copy: pip's build files stay out of the checkout
    pkg.mkdir()
    shutil.copy(os.path.join(ROOT, "python_bindings", "setup.py"), pkg)
    shutil.copytree(os.path.join(ROOT, "python_bindings", "mcompress"), pkg / "mcompress")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    env = {**os.environ, "MCOMPRESS_PIP_BUILD_DIR": build, "MCOMPRESS_SOURCE_DIR": os.path.abspath(ROOT),
           "PYTHONPATH": ""}
    p = subprocess.run([venv / "bin" / "pip", "install", "--no-index", "--no-build-isolation", pkg], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    code = ("import mcompress, numpy as np; q = mcompress.rtn(np.ones((4, 32), np.float32), bits=4); "
            "print(mcompress.__file__, q.codes.shape)")
    p = subprocess.run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert str(venv) in p.stdout and "(4, 32)" in p.stdout
