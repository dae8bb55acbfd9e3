"""pip install ./python_bindings — builds the _mcompress extension with the project's CMake (Ninja,
Release, ccache when present) against the Debian packages, no network needed, and installs the
`mcompress` package. Run from a checkout: the C++ sources are the parent directory.

    /usr/bin/python3 -m pip install --no-build-isolation ./python_bindings
    # (Debian marks its Python externally managed: add --break-system-packages, or use a venv made with
    #  python3 -m venv --system-site-packages so numpy and torch stay visible)
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
# The C++ sources: the checkout this file lives in (MCOMPRESS_SOURCE_DIR overrides, for a copy of the
# package directory elsewhere).
ROOT = os.environ.get("MCOMPRESS_SOURCE_DIR", os.path.dirname(HERE))


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        # MCOMPRESS_PIP_BUILD_DIR: an existing build directory to reuse (scripts/build.sh's build/).
        build_dir = os.environ.get("MCOMPRESS_PIP_BUILD_DIR", os.path.join(ROOT, "build-pip"))
        if not os.path.exists(os.path.join(build_dir, "build.ninja")):
            subprocess.check_call(["cmake", "-S", ROOT, "-B", build_dir, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                                   "-DMCOMPRESS_BUILD_PYTHON=ON", "-DMCOMPRESS_BUILD_TESTS=OFF",
                                   "-DMCOMPRESS_BUILD_BENCH=OFF", f"-DPython_EXECUTABLE={sys.executable}"])
        subprocess.check_call(["ninja", "-C", build_dir, "_mcompress", "mcompress_python_package"])
        built = os.path.join(build_dir, "python", "mcompress")
        so = [f for f in os.listdir(built) if f.startswith("_mcompress") and f.endswith(".so")][0]
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(built, so), dest)


setup(
    name="mcompress",
    version="0.1.0",
    description="Post-training quantization, pruning and distillation of model checkpoints (C++ core)",
    packages=["mcompress"],
    package_data={"mcompress": ["*.pyi", "py.typed"]},
    ext_modules=[Extension("mcompress._mcompress", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=[],  # numpy (and torch for mcompress.torch) come from Debian
    zip_safe=False,
)
