"""Build the Cython fast path (and the bench's receiver); the rest is in pyproject.toml.

Set SFU_PUREPYTHON=1 to skip the extensions (the pure-Python forwarder is used, and the
load generator receives in Python).
"""

import os

from setuptools import setup

ext_modules = []
if not os.environ.get("SFU_PUREPYTHON"):
    from Cython.Build import cythonize

    # bench/_receiver.pyx: the load generator's receive path (bench/peer.py).
    ext_modules = cythonize(
        ["sfu/_fastpath.pyx", "bench/_receiver.pyx"],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=ext_modules)
