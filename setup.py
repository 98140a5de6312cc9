"""The one compiled part of the package, ``musicrec.index._kernel``; everything else is in pyproject.toml.

Optional: without a C compiler the install still succeeds, and the recommender scores with numpy
alone (it logs a warning when it loads; tests/test_kernel.py skips its kernel tests and says why).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("musicrec.index._kernel", ["musicrec/index/_kernel.c"],
                             extra_compile_args=["-O3", "-Wall", "-ffp-contract=off"], optional=True)])
