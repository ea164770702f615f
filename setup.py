"""Build hook for the one compiled part: kfwguard.matching._native (C++ on RE2).

Everything else is in pyproject.toml. The extension is optional: without a
C++ compiler or RE2's headers (Debian: g++, libre2-dev) the build goes on
without it and text filters read blocks on the per-record path (RE2 from
Python), with the same results (tests/unit/test_matching_lines.py compares them).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kfwguard.matching._native",
            ["kfwguard/matching/_native.cpp"],
            language="c++",
            libraries=["re2"],
            extra_compile_args=["-std=c++17", "-O2"],
            optional=True,
        )
    ]
)
