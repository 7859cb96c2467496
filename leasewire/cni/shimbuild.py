"""The installed shim's text: its source as comments, plus the same source compiled.

A runtime execs the shim for every CNI call, and compiling its source took
about 2.5 ms of its 12 ms start on the development VM. The installed file therefore carries the code
object that the installing interpreter compiled, marshalled into a bytes
literal, and runs it when the running interpreter has the same bytecode magic
number. Any other interpreter runs the source, which the file keeps as comment
lines starting with ``#|``, so the file stays readable and complete.
"""

from __future__ import annotations

import importlib.util
import marshal

# Prefix of the comment lines that contain the shim's source.
SOURCE_PREFIX = "#| "
SOURCE_NAME = "leasewire/cni/shim.py"

_LOADER = """\
import marshal
import sys

MAGIC = {magic!r}
CODE = {code!r}

_loader = sys.modules.get("_frozen_importlib_external")
if getattr(_loader, "MAGIC_NUMBER", None) == MAGIC:
    _code = marshal.loads(CODE)
else:
    with open(__file__, encoding="utf-8") as _file:
        _source = "".join(
            _line[{skip}:] if _line != "#|\\n" else "\\n"
            for _line in _file
            if _line.startswith("#|")
        )
    _code = compile(_source, {name!r}, "exec")
del MAGIC, CODE, _loader
exec(_code)
"""


def compiled_shim_text(shebang: str, source: str) -> str:
    """Return the installed shim: ``shebang``, a header, ``source`` as comments and the loader."""
    code = compile(source, SOURCE_NAME, "exec", dont_inherit=True, optimize=0)
    header = (
        f"# leasewire CNI shim, written by 'leasewire install-cni' from {SOURCE_NAME}.\n"
        f"# The lines starting with '{SOURCE_PREFIX.strip()}' are that source. CODE at the end\n"
        "# is the same source compiled by the installing interpreter (a marshalled code\n"
        "# object), which starts faster than compiling the source on every exec. An\n"
        "# interpreter with another bytecode magic number compiles the source lines\n"
        "# instead. Run 'leasewire install-cni' again to regenerate this file.\n"
    )
    commented = "".join(
        SOURCE_PREFIX + line if line.strip() else "#|\n"
        for line in source.splitlines(keepends=True)
    )
    if not commented.endswith("\n"):
        commented += "\n"
    loader = _LOADER.format(
        magic=importlib.util.MAGIC_NUMBER,
        code=marshal.dumps(code),
        skip=len(SOURCE_PREFIX),
        name=SOURCE_NAME,
    )
    return shebang + header + commented + loader


def source_of(shim_text: str) -> str:
    """Return the source that an installed shim's ``#|`` lines contain."""
    return "".join(
        line[len(SOURCE_PREFIX) :] if line != "#|\n" else "\n"
        for line in shim_text.splitlines(keepends=True)
        if line.startswith("#|")
    )
