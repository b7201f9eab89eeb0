"""The restricted unpickler is a module of its own, the security boundary: it depends on nothing else of cmd_ray.

Its behaviour (what a pickled file can and cannot do) is tested in tests/models/test_checkpoint.py.
"""

import ast
from pathlib import Path

from cmd_ray.models import checkpoint, safe_unpickler


def test_the_unpickler_imports_nothing_from_cmd_ray():
    tree = ast.parse(Path(safe_unpickler.__file__).read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m.split(".")[0] == "cmd_ray"]


def test_every_pickled_file_goes_through_the_one_unpickler():
    assert checkpoint.SAFE_PICKLE is safe_unpickler.SAFE_PICKLE
    assert safe_unpickler.SAFE_PICKLE.Unpickler is safe_unpickler.SafeUnpickler
