"""Packages and the Cython extensions; the rest is in pyproject.toml.

Set SFU_PUREPYTHON=1 to skip the extensions (the pure-Python forwarder is used, and the
load generator receives in Python).
"""

import os

from setuptools import Extension, find_namespace_packages, setup

# Every package under sfu/ is found, so a new subpackage cannot be left out of the wheel
# (sfu/web, the demo page, has no __init__.py: a namespace package of data files).
# The repository keeps the benchmarks in bench/ (the layout asked for); installed, they
# are the package `sfu_bench`, so nothing generic named `bench` lands in site-packages.
packages = [*find_namespace_packages(include=["sfu", "sfu.*"], exclude=["*.__pycache__"]),
            "sfu_bench"]
package_dir = {"sfu_bench": "bench"}

ext_modules = []
if not os.environ.get("SFU_PUREPYTHON"):
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension("sfu._fastpath", ["sfu/_fastpath.pyx"]),
            # The load generator's receive path (bench/peer.py).
            Extension("sfu_bench._receiver", ["bench/_receiver.pyx"]),
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )

setup(packages=packages, package_dir=package_dir, ext_modules=ext_modules)
