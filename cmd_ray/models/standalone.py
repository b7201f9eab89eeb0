"""A standalone copy of the network code, for a logged model to carry (MLflow's ``code_paths``).

A registered tracker must load where cmd-ray is not installed. Rather than a second, hand-kept definition of the
network, :func:`write_standalone_package` copies the source of :data:`ENTRY_MODULE` and every ``cmd_ray`` module it
imports (transitively: ``cmd_ray.models.{dimpnet, backbone, classifier, iounet, pooling, prroi}`` and
``cmd_ray.vocabulary`` today) into a package of another name, :data:`STANDALONE_PACKAGE`, at the moment the model
is logged. The copy is the code the weights were trained with, byte for byte except for one thing: each
``from cmd_ray… import`` statement names ``cmd_ray_net…`` instead. Nothing else is rewritten (docstrings still
name their ``cmd_ray`` origin), and the result is checked: it parses, and no statement in it imports ``cmd_ray``.

Only the standard library is used here; the copied modules import ``torch``, ``torchvision`` and the standard
library.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

SOURCE_PACKAGE = "cmd_ray"
STANDALONE_PACKAGE = "cmd_ray_net"
"""The name the copied network code is imported under; never ``cmd_ray``, so it cannot shadow an installed cmd-ray."""
ENTRY_MODULE = "cmd_ray.models.dimpnet"
"""The module whose :func:`~cmd_ray.models.dimpnet.build_network` rebuilds a network from its spec."""

_FROM_SOURCE = re.compile(rf"^from\s+{SOURCE_PACKAGE}(?=[\s.])")


def source_root() -> Path:
    """The folder of the ``cmd_ray`` package this process imports."""
    return Path(__file__).resolve().parents[1]


def module_file(module: str, root: Path | None = None) -> Path:
    """``cmd_ray.a.b`` ─▶ ``ROOT/a/b.py`` (or ``ROOT/a/b/__init__.py`` for a package).

    Raises:
        ValueError: not a ``cmd_ray`` module, or no such file.
    """
    root = source_root() if root is None else root
    head, _, rest = module.partition(".")
    if head != SOURCE_PACKAGE:
        raise ValueError(f"{module} is not a {SOURCE_PACKAGE} module")
    if not rest:
        candidates = [root / "__init__.py"]
    else:
        base = root.joinpath(*rest.split("."))
        candidates = [base.with_suffix(".py"), base / "__init__.py"]
    for path in candidates:
        if path.is_file():
            return path
    raise ValueError(f"{module}: no source file under {root}")


def _is_module(module: str, root: Path) -> bool:
    try:
        module_file(module, root)
    except ValueError:
        return False
    return True


def _runtime_import_nodes(tree: ast.Module) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` that can run: those under ``if TYPE_CHECKING:`` are left out."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                todo.extend(child.orelse)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            todo.append(child)


def cmd_ray_imports(module: str, root: Path | None = None) -> set[str]:
    """The ``cmd_ray`` modules that importing ``module`` (and calling its functions) may import, one level deep.

    ``from cmd_ray.x import name`` gives ``cmd_ray.x``, and ``cmd_ray.x.name`` too when that is a module;
    imports under ``if TYPE_CHECKING:`` never run and are not counted. Relative imports are refused.

    Raises:
        ValueError: a relative import (the copy renames only absolute ``cmd_ray`` imports).
    """
    root = source_root() if root is None else root
    path = module_file(module, root)
    found: set[str] = set()
    for node in _runtime_import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise ValueError(f"{path}:{node.lineno}: a relative import; the copy renames absolute imports only")
            name = node.module or ""
            if name.partition(".")[0] == SOURCE_PACKAGE:
                found.add(name)
                found |= {f"{name}.{alias.name}" for alias in node.names if _is_module(f"{name}.{alias.name}", root)}
        else:
            found |= {alias.name for alias in node.names if alias.name.partition(".")[0] == SOURCE_PACKAGE}
    return found


def module_closure(entry: str = ENTRY_MODULE, root: Path | None = None) -> list[str]:
    """``entry``, every ``cmd_ray`` module it imports transitively, and the packages that hold them, sorted."""
    root = source_root() if root is None else root
    seen: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # the enclosing packages' __init__
        todo.extend(cmd_ray_imports(module, root))
    return sorted(seen)


def renamed_source(text: str, filename: str = "<source>", package: str = STANDALONE_PACKAGE) -> str:
    """``text`` with every ``from cmd_ray… import`` statement importing from ``package…`` instead.

    Raises:
        ValueError: an ``import cmd_ray…`` statement (its uses could not be renamed by the import line alone), or
            a rewritten text that still imports ``cmd_ray`` or does not parse.
    """
    lines = text.splitlines(keepends=True)
    for node in ast.walk(ast.parse(text, filename)):
        if isinstance(node, ast.Import) and any(a.name.partition(".")[0] == SOURCE_PACKAGE for a in node.names):
            raise ValueError(f"{filename}:{node.lineno}: 'import {SOURCE_PACKAGE}…' cannot be renamed; use 'from'")
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == SOURCE_PACKAGE:
            line = lines[node.lineno - 1]
            head, tail = line[: node.col_offset], line[node.col_offset :]
            renamed = _FROM_SOURCE.sub(f"from {package}", tail, count=1)
            if renamed == tail:
                raise ValueError(f"{filename}:{node.lineno}: cannot rename the import {tail.strip()!r}")
            lines[node.lineno - 1] = head + renamed
    result = "".join(lines)
    left = sorted(imported_packages(result, filename) & {SOURCE_PACKAGE})
    if left:
        raise ValueError(f"{filename}: still imports {left[0]} after renaming")
    return result


def imported_packages(text: str, filename: str = "<source>") -> set[str]:
    """The top-level package names that any import statement of ``text`` names (``TYPE_CHECKING`` ones too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(text, filename)):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def write_standalone_package(dest_dir: str | Path, version: str = "") -> Path:
    """Write :data:`STANDALONE_PACKAGE` into ``dest_dir``: the renamed copies of :func:`module_closure`.

    The top-level ``__init__.py`` is new (a docstring naming the origin and ``version``); every other file is the
    ``cmd_ray`` source with its imports renamed (:func:`renamed_source`), at the same relative path.

    Returns:
        ``dest_dir/cmd_ray_net``, the folder to give MLflow as a code path.

    Raises:
        ValueError: as :func:`renamed_source` and :func:`cmd_ray_imports` do.
        FileExistsError: ``dest_dir/cmd_ray_net`` exists.
    """
    root = source_root()
    package_dir = Path(dest_dir) / STANDALONE_PACKAGE
    package_dir.mkdir(parents=True)
    copied = [module for module in module_closure(ENTRY_MODULE, root) if module != SOURCE_PACKAGE]
    for module in copied:
        source = module_file(module, root)
        target = package_dir / source.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(renamed_source(source.read_text(), str(source)))
    origin = f"cmd-ray {version}".strip()
    doc = [
        f"The network code of {origin}, copied when this model was logged from",
        "",
        *(f"- ``{module}``" for module in copied),
        "",
        f"Each ``from cmd_ray… import`` is renamed to ``from {STANDALONE_PACKAGE}… import``; nothing else is changed,",
        "so docstrings still name the ``cmd_ray`` modules the code came from, and an import under",
        "``if TYPE_CHECKING:`` (type hints only, never run) may name a module that was not copied.",
        "It needs torch and torchvision.",
    ]
    (package_dir / "__init__.py").write_text('"""' + "\n".join(doc) + '\n"""\n')
    return package_dir
