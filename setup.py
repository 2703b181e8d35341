"""Build the Cython fast path; everything else is in pyproject.toml.

Set SFU_PUREPYTHON=1 to skip the extension (the pure-Python forwarder is used).
"""

import os

from setuptools import setup

ext_modules = []
if not os.environ.get("SFU_PUREPYTHON"):
    from Cython.Build import cythonize

    ext_modules = cythonize(
        ["sfu/_fastpath.pyx"],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=ext_modules)
