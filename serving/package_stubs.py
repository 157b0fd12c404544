"""Generated protos imported without running their package's `__init__.py`.

tensorflow-serving-api's protos live under `tensorflow`, KServe's under `kserve`: importing them
the usual way runs TensorFlow's or KServe's whole package (seconds, and a runtime inside a
gevent load generator). The protos are plain files, so while the real package is not loaded
its folders are registered as empty namespace modules for the import, and dropped afterwards:
a later import of the real package loads it, reusing the proto modules already imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def empty_packages(*names: str) -> Iterator[None]:
    """`names` (a package, then sub-packages) as empty modules while the block imports."""
    spec = None if names[0] in sys.modules else importlib.util.find_spec(names[0])
    if spec is None or not spec.submodule_search_locations:
        yield  # loaded already (the real thing), or not installed: import as usual
        return
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in names:
        module = types.ModuleType(name)
        module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        sys.modules[name] = module
    try:
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)
