"""Declare the Cython extensions of rankly._fast; all metadata lives in pyproject.toml."""

import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

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


class BuildExtAndBytecode(build_ext):
    """Build the kernels; in an editable install (``pip install -e``, kernels built in place)
    also compile the packages' bytecode next to their sources.

    A regular install gets its bytecode from pip. An editable one gets none until Python
    writes it at the first import, which it never does where PYTHONDONTWRITEBYTECODE is set
    (common in containers): every `rankly` command then compiles each module it imports
    again, a share of a short command's time (`rankly train` on a small dataset). Python
    checks a module's bytecode against its source, so an edited module is compiled again."""

    def run(self) -> None:
        super().run()
        if self.inplace or getattr(self, "editable_mode", False):
            import compileall

            for folder in PACKAGE_DIR.values():
                compileall.compile_dir(folder, quiet=1)


setup(
    cmdclass={"build_ext": BuildExtAndBytecode},
    package_dir=PACKAGE_DIR,
    packages=_packages(),
    ext_modules=cythonize(
        [_ext("topk"), _ext("diversity"), _ext("gather"), _ext("slate")],
        compiler_directives={"language_level": "3", "embedsignature": True},
    ),
)
