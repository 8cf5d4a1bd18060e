"""Declare the Cython extensions of rankly._fast; all metadata lives in pyproject.toml."""

import sys

from setuptools import Extension, find_packages, setup

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - build-time guard
    sys.exit("rankly needs Cython>=3 to build its kernels: "
             "pip install 'Cython>=3' numpy, then retry.")
import numpy as np

PACKAGE_DIR = {
    "rankly.engine": "engine",
    "rankly.plugins": "plugins",
    "rankly._fast": "_fast",
}

# Generic -O3, no -march: wheels must run on x86-64 without AVX2. _fast/_simd.h compiles its one
# SIMD-critical loop a second time for AVX2 and picks it at import time.
_COMPILE_ARGS = ["-O3", "-fopenmp"]
_LINK_ARGS = ["-fopenmp"]


def _ext(name: str) -> Extension:
    return Extension(
        f"rankly._fast.{name}",
        [f"_fast/{name}.pyx"],
        depends=["_fast/_select.pxi", "_fast/_simd.h"],  # shared kernel code: rebuild on change
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=_COMPILE_ARGS,
        extra_link_args=_LINK_ARGS,
    )


def _packages() -> list[str]:
    """List rankly.engine, rankly.plugins, rankly._fast and their subpackages."""
    found = []
    for dotted, folder in PACKAGE_DIR.items():
        found.append(dotted)
        found += [f"{dotted}.{sub}" for sub in find_packages(folder)]
    return found


setup(
    package_dir=PACKAGE_DIR,
    packages=_packages(),
    ext_modules=cythonize(
        [_ext("topk"), _ext("diversity"), _ext("gather"), _ext("slate")],
        compiler_directives={"language_level": "3", "embedsignature": True},
    ),
)
