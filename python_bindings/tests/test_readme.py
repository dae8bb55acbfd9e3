"""The README's Python example runs as written (from the repository root, as a user would)."""
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def test_readme_python_example_runs():
    text = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"<!-- python-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md has no python example"
    p = subprocess.run([sys.executable, "-c", m.group(1)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "output error: GPTQ" in p.stdout
