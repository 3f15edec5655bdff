"""The optional compiled parse walk (syncsvc/parse/_walk.pyx); everything else is in pyproject.toml.

It builds against lxml's public C API (the headers ship in lxml's wheel) with the machine's C
compiler. Where it cannot be built (no compiler), the install goes on without it and the parse
uses the pure-Python walk, which gives the same rows (syncsvc/parse/segments.py).
"""

import lxml
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "syncsvc.parse._walk",
            ["syncsvc/parse/_walk.pyx"],
            include_dirs=lxml.get_include(),
            optional=True,
        )
    ]
)
