"""The one compiled piece: the auditd raw-key counter of `virt-aa denials`.

Optional: without a C compiler and the Python headers the install still
succeeds and the scanner uses its pure-Python path (same results, slower).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "virt_aa.denials._avcscan", ["src/virt_aa/denials/_avcscan.c"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
    optional=True)])
