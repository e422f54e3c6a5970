"""The compiled span hot path (`otel_budget._speedups`), optional: without a C compiler the package
installs without it and runs its pure-Python hot path (the same behaviour, slower)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "otel_budget._speedups",
            sources=["src/otel_budget/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
