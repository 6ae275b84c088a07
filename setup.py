"""Build hook for the optional C extension; all other metadata is in pyproject.toml.

``drkit.dumpers.redis._rdbscan`` is the native fast path of the Redis RDB rewrite (restore).  It is
optional: without a C compiler and the Python headers the build goes on without it, and drkit
uses the (slower, byte-identical) pure-Python code.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "drkit.dumpers.redis._rdbscan",
            sources=["drkit/dumpers/redis/_rdbscan.c"],
            optional=True,
        )
    ]
)
