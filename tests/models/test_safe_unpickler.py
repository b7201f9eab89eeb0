"""The restricted unpickler is a module of its own, the security boundary: it depends on nothing else of cmd_ray.

What a pickled file can and cannot do: a payload that runs code under an ordinary unpickler runs nothing here (it
becomes an inert record), calling such a record is refused, and a tensor reaching outside its storage is refused.
"""

from __future__ import annotations

import ast
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from checkpoint_fakes import PAYLOADS, ExecPayload, SystemPayload, assert_same_state, write_malicious

import cmd_ray
from cmd_ray.models import safe_unpickler
from cmd_ray.models.pytracking_checkpoint import load_pytracking_checkpoint
from cmd_ray.models.safe_unpickler import SAFE_PICKLE, CheckpointError, PickledObject


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


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_malicious_payload_is_live_when_loaded_unsafely(tmp_path, state_a, payload):
    """Control: the payloads below really run code under an ordinary unpickler."""
    path = tmp_path / "evil.pt"
    torch.save({"payload": payload(tmp_path / "pwned")}, path)
    torch.load(path, weights_only=False)
    assert (tmp_path / "pwned").exists()


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("where", ["top", "settings", "constructor"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_malicious_checkpoint_runs_nothing(tmp_path, state_a, payload, where, legacy_format):
    path = write_malicious(tmp_path, payload, state_a, where, legacy_format)
    with pytest.raises(pickle.UnpicklingError):  # sanity: the weights-only loader refuses it as well
        torch.load(path, weights_only=True)

    ckpt = load_pytracking_checkpoint(path)

    assert not (tmp_path / "pwned").exists()
    assert_same_state(ckpt.state_dict, state_a)
    assert ckpt.constructor is not None and ckpt.constructor["fun_name"] == "dimpnet50"
    if where == "settings":
        assert ckpt.settings["hook"]["__class__"] in ("posix.system", "builtins.exec", "subprocess.call")
    if where == "constructor":
        assert "__args__" in ckpt.constructor["kwds"]["backbone_hook"]  # recorded, not called
    assert not (tmp_path / "pwned").exists()


def raw_pickles(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}".encode()
    return {
        "global_reduce_p0": b"cos\nsystem\n(S'" + cmd + b"'\ntR.",
        "inst_p0": b"(S'" + cmd + b"'\nios\nsystem\n.",
        "obj_p1": b"(cos\nsystem\nS'" + cmd + b"'\no.",
        "stack_global_p4": pickle.dumps(SystemPayload(marker), protocol=4),
        "eval_p2": pickle.dumps(ExecPayload(marker), protocol=2),
    }


@pytest.mark.parametrize("kind", list(raw_pickles(Path("x"))))
def test_every_unknown_callable_becomes_an_inert_record(tmp_path, kind):
    obj = SAFE_PICKLE.loads(raw_pickles(tmp_path / "pwned")[kind])
    assert isinstance(obj, PickledObject)
    assert obj.args and str(tmp_path / "pwned") in str(obj.args)
    assert not (tmp_path / "pwned").exists()


def test_calling_a_record_instance_is_refused(tmp_path):
    """``getattr(os, 'system')`` yields an inert record; REDUCE with it as the callable is refused."""
    data = b"cbuiltins\ngetattr\n(cos\nsystem\nS'__call__'\ntR(S'touch " + str(tmp_path / "p").encode() + b"'\ntR."
    with pytest.raises(pickle.UnpicklingError, match="refusing to call"):
        SAFE_PICKLE.loads(data)
    assert not (tmp_path / "p").exists()


class OutOfBounds:
    def __reduce__(self):
        storage = torch.zeros(2).untyped_storage()  # 8 bytes
        return (torch._utils._rebuild_tensor_v2, (storage, 0, (4096,), (1,), False, OrderedDict()))


def test_tensor_outside_its_storage_is_refused(tmp_path):
    path = tmp_path / "oob.pt"
    torch.save({"net": {"w": OutOfBounds()}}, path)
    with pytest.raises(CheckpointError, match="bytes of a 8-byte storage"):
        load_pytracking_checkpoint(path)
