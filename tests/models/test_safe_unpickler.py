"""The restricted unpickler is a module of its own, the security boundary: it depends on nothing else of cmd_ray.

Its behaviour (what a pickled file can and cannot do) is tested in tests/models/test_checkpoint.py.
"""

import ast
from pathlib import Path

import cmd_ray
from cmd_ray.models import safe_unpickler


def test_the_unpickler_imports_nothing_from_cmd_ray():
    tree = ast.parse(Path(safe_unpickler.__file__).read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m.split(".")[0] == "cmd_ray"]


def _torch_load_calls_without_weights_only(path: Path) -> list[int]:
    """Line numbers of ``torch.load(…)`` calls in ``path`` that do not pass ``weights_only=True``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"):
            continue
        if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            continue
        weights_only = [k for k in node.keywords if k.arg == "weights_only"]
        if not (weights_only and isinstance(weights_only[0].value, ast.Constant) and weights_only[0].value.value):
            lines.append(node.lineno)
    return lines


def test_every_pickled_file_goes_through_the_one_unpickler():
    package = Path(cmd_ray.__file__).parent
    unrestricted = {
        str(path.relative_to(package)): lines
        for path in package.rglob("*.py")
        if path.name != "safe_unpickler.py" and (lines := _torch_load_calls_without_weights_only(path))
    }
    assert unrestricted == {}  # any other torch.load is weights_only=True; full unpickling is safe_unpickler's
    assert safe_unpickler.SAFE_PICKLE.Unpickler is safe_unpickler.SafeUnpickler
