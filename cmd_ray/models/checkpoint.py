"""Safe checkpoint files: cmd-ray's training state and weights, and pytracking's, read without running pickled code.

A cmd-ray training checkpoint is one ``torch.save`` file holding only tensors, numbers,
strings and plain containers, so ``torch.load(weights_only=True)`` reads it:
``{"model", "optimizer", "scheduler", "epoch", "config", "rng"}``. Weights files written here
(:func:`cmd_ray.distill.merge.merge_branches`) are plain state dicts, also ``weights_only`` loadable.

pytracking (``ltr``) checkpoints are ``torch.save({"epoch", "actor_type", "net_type", "net",
"net_info", "constructor", "optimizer", "stats", "settings"})`` where ``constructor`` is an
``ltr.admin.model_constructor.NetConstructor`` and ``settings`` an ``ltr.admin.settings.Settings``
(``dlframework.*`` in old files). ``weights_only`` refuses those classes, and plain unpickling would
import and run whatever the file names. :func:`load_pytracking_checkpoint` instead reads them with
a restricted unpickler (:data:`SAFE_PICKLE`, handed to ``torch.load`` as ``pickle_module``, for the
zip format and the legacy non-zip format alike):

- only tensor rebuilding is real: checked re-implementations of ``torch._utils._rebuild_tensor``,
  ``_rebuild_tensor_v2``/``_v3``, ``_rebuild_parameter``(``_with_state``) and
  ``torch._tensor._rebuild_from_type_v2`` (storage bounds verified, pickled hooks and
  attributes dropped), storage types, ``torch.Size``, ``torch.device``, torch dtypes and
  layouts, ``collections.OrderedDict``, ``builtins.set/frozenset/slice/complex/bytearray`` and
  ``_codecs.encode`` for latin-1 ``bytes``;
- EVERY other global (``ltr.*`` classes, ``os.system``, ``builtins.eval``, ``subprocess.*``,
  numpy, …) becomes an inert :class:`PickledObject` subclass: "calling" it in a REDUCE/NEWOBJ/INST
  only records the arguments, BUILD only records the state; nothing named by the file is
  imported or invoked;
- REDUCE/NEWOBJ/BUILD/APPEND/SETITEM on anything else raise ``UnpicklingError``.

The inert records of the constructor, settings and stats are turned into plain dicts
(``{"__class__": "module.Name", **attributes}``) for :class:`PytrackingCheckpoint`.
"""

from __future__ import annotations

import _compat_pickle
import ast
import collections
import io
import logging
import math
import pickle
import random
import re
import types
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

TRAINING_STATE_FILE = "training_state.pt"
FC_PREFIX = "feature_extractor.fc."
DATAPARALLEL_PREFIX = "module."

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file is missing, mangled or of the wrong kind; the message names it."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain values (weights-only loadable)."""
    np_state = np.random.get_state()
    return {
        "python": repr(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(ast.literal_eval(state["python"]))
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])


def save_training_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/training_state.pt``; returns the file path."""
    path = Path(directory) / TRAINING_STATE_FILE
    torch.save(state, path)
    return path


def load_training_state(directory: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by :func:`save_training_state` (weights only, no code)."""
    return _load(Path(directory) / TRAINING_STATE_FILE)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights in ``path``: a plain state dict, a training checkpoint's ``model``, or a pytracking ``net``.

    ``path`` may also be a folder holding ``training_state.pt``. cmd-ray files are read with
    ``torch.load(weights_only=True)``; a file that refuses that is tried as a pytracking checkpoint
    through the restricted unpickler (no pickled code runs). DataParallel ``module.`` prefixes are
    stripped and ``feature_extractor.fc.*`` (the ImageNet head, not built here) dropped.
    """
    return _read_weights(Path(path))


def _load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for mangled or unsafe files
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Restricted unpickler
# ---------------------------------------------------------------------------------------------


class PickledObject:
    """Inert stand-in for an object of a class the restricted unpickler does not trust.

    Subclasses are made per pickled global (``pickled_module``, ``pickled_name``). An instance only
    holds what the pickle said: constructor ``args``/``kwargs``, the BUILD ``state`` and any
    list/dict items; it has no behaviour of the original class.
    """

    __slots__ = ("args", "dictitems", "kwargs", "listitems", "state")
    pickled_module: ClassVar[str] = ""
    pickled_name: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = object.__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.listitems = []
        obj.dictitems = {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # arguments already recorded by __new__
        pass

    # Only data is recorded, so that list-/dict-like pickles (APPENDS, SETITEMS) load as records too.
    def append(self, item: Any) -> None:
        self.listitems.append(item)

    def extend(self, items: Any) -> None:
        self.listitems.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.dictitems[key] = value

    @classmethod
    def qualname(cls) -> str:
        return f"{cls.pickled_module}.{cls.pickled_name}"

    def __repr__(self) -> str:
        return f"<inert {self.qualname()}>"


def _record_class(module: str, name: str) -> type[PickledObject]:
    safe = re.sub(r"\W", "_", name)[:64] or "anonymous"
    return type(
        f"Pickled_{safe}",
        (PickledObject,),
        {"__slots__": (), "pickled_module": module, "pickled_name": name, "__module__": __name__},
    )


def _is_record_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, PickledObject)


def _refuse(msg: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(f"restricted unpickler: {msg}")


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _refuse(f"{what} must be a non-negative int, got {value!r}")
    return value


def _checked_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, dtype: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor`` with type and bounds checks (``Tensor.set_`` does not check them)."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise _refuse(f"tensor storage must be a storage, got {type(storage).__name__}")
    dtype = storage.dtype if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise _refuse(f"tensor dtype must be a torch.dtype, got {dtype!r}")
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list) or len(size) != len(stride):
        raise _refuse(f"bad tensor size/stride {size!r} / {stride!r}")
    offset = _int(storage_offset, "storage offset")
    size = tuple(_int(s, "size") for s in size)
    stride = tuple(_int(s, "stride") for s in stride)
    untyped = storage._untyped_storage
    if math.prod(size) > 0:
        itemsize = torch._utils._element_size(dtype)
        needed = (offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1) * itemsize
        if needed > untyped.nbytes():
            raise _refuse(
                f"tensor of size {size} stride {stride} needs {needed} bytes of a {untyped.nbytes()}-byte storage"
            )
    return torch.empty((0,), dtype=dtype, device=untyped.device).set_(untyped, offset, size, stride)


def _finish_tensor(tensor: torch.Tensor, requires_grad: Any, metadata: Any = None) -> torch.Tensor:
    if metadata and isinstance(metadata, dict) and all(type(v) is bool for v in metadata.values()):
        torch._utils.set_tensor_metadata(tensor, metadata)
    tensor.requires_grad = bool(requires_grad) and (tensor.is_floating_point() or tensor.is_complex())
    return tensor  # pickled backward hooks are dropped, never attached


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
    return _checked_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    metadata: Any = None,
) -> torch.Tensor:
    return _finish_tensor(_checked_tensor(storage, storage_offset, size, stride), requires_grad, metadata)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> torch.Tensor:
    return _finish_tensor(_checked_tensor(storage, storage_offset, size, stride, dtype), requires_grad, metadata)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> nn.Parameter:
    if not isinstance(data, torch.Tensor):
        raise _refuse(f"parameter data must be a tensor, got {type(data).__name__}")
    return nn.Parameter(data, bool(requires_grad))


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> nn.Parameter:
    return _rebuild_parameter(data, requires_grad, backward_hooks)  # pickled attributes are not set


_TENSOR_REBUILDERS: frozenset[Callable[..., Any]] = frozenset(
    {_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter, _rebuild_parameter_with_state}
)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    """Tensor subclass / tensor with attributes: rebuilt as the plain tensor; type and attributes dropped."""
    if func not in _TENSOR_REBUILDERS or not isinstance(args, tuple):
        raise _refuse(f"_rebuild_from_type_v2 with {func!r}")
    return func(*args)


def _codecs_encode(obj: Any, encoding: Any = "utf-8") -> bytes:
    """What protocol-2 pickles of ``bytes`` call: ``_codecs.encode(text, "latin1")``."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise _refuse(f"_codecs.encode with encoding {encoding!r}")
    return obj.encode("latin-1")


def _bytearray(*args: Any) -> bytearray:
    """``bytearray`` from bytes/text only (``bytearray(<huge int>)`` would allocate)."""
    if args and not isinstance(args[0], bytes | str):
        raise _refuse("bytearray from a non-bytes argument")
    return bytearray(*args)


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> PickledObject:
    """Protocol 0/1 objects: ``copyreg._reconstructor(cls, base, state)``; only inert classes are allowed."""
    if not _is_record_class(cls):
        raise _refuse(f"copyreg._reconstructor of {cls!r}")
    return cls() if state is None else cls(state)


# Globals that may be called (REDUCE) or instantiated (NEWOBJ/INST/OBJ).
_CALLABLES: dict[str, Any] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    "torch.serialization._get_layout": torch.serialization._get_layout,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.complex": complex,
    "builtins.bytearray": _bytearray,
    "_codecs.encode": _codecs_encode,
    "copyreg._reconstructor": _copyreg_reconstructor,
}
_CALLABLE_IDS = frozenset(id(v) for v in _CALLABLES.values())
# Values that may appear but are never called: dtypes, memory formats, the untyped storage class.
_VALUES: dict[str, Any] = {
    **{f"torch.{k}": v for k, v in vars(torch).items() if isinstance(v, torch.dtype | torch.memory_format)},
    "torch.UntypedStorage": torch.UntypedStorage,
    "torch.storage.UntypedStorage": torch.UntypedStorage,
}


class SafeUnpickler(pickle._Unpickler):  # the pure-Python unpickler, so every opcode can be checked
    """Unpickler that rebuilds tensors and turns everything else into inert :class:`PickledObject` records."""

    dispatch: ClassVar[dict[int, Callable[..., Any]]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._records: dict[tuple[str, str], type[PickledObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise _refuse(f"bad global {module!r} {name!r}")
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as pickle.Unpickler maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        key = f"{module}.{name}"
        if key in _CALLABLES:
            return _CALLABLES[key]
        if key in _VALUES:
            return _VALUES[key]
        if module in ("torch", "torch.cuda") and name.endswith("Storage"):  # legacy typed storage classes
            try:
                return torch.serialization.StorageType(name)
            except KeyError:
                pass
        if (module, name) not in self._records:
            self._records[(module, name)] = _record_class(module, name)
        return self._records[(module, name)]

    # -- opcodes that call, instantiate or mutate: only allowed callables and inert records ------

    def _call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        if not isinstance(args, tuple | list) or (kwargs is not None and not isinstance(kwargs, dict)):
            raise _refuse("malformed call arguments")
        if _is_record_class(func) or id(func) in _CALLABLE_IDS:
            return func(*args, **(kwargs or {}))
        raise _refuse(f"refusing to call {func!r}")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _new(self, cls: Any, args: Any, kwargs: Any = None) -> Any:
        if any(cls is c for c in (collections.OrderedDict, set, frozenset, complex, torch.Size)) and not kwargs:
            return cls.__new__(cls, *args)
        if _is_record_class(cls):
            return self._call(cls, args, kwargs)
        raise _refuse(f"refusing to instantiate {cls!r}")

    def _instantiate(self, klass: Any, args: Any) -> None:
        self.append(self._call(klass, tuple(args)))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, PickledObject):
            inst.state = state
        elif isinstance(inst, torch.Tensor):
            pass  # tensor attributes/hooks are not restored
        elif isinstance(inst, collections.OrderedDict) and isinstance(state, dict):
            metadata = state.get("_metadata")  # state dicts carry module versions here
            if isinstance(metadata, dict):
                inst._metadata = metadata  # type: ignore[attr-defined]
        else:
            raise _refuse(f"refusing to set the state of a {type(inst).__name__}")

    def load_append(self) -> None:
        value = self.stack.pop()
        self._list_target().append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._list_target().extend(items)

    def _list_target(self) -> Any:
        target = self.stack[-1]
        if type(target) is list or isinstance(target, PickledObject):
            return target
        raise _refuse(f"refusing to append to a {type(target).__name__}")

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._dict_target()[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._dict_target()
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _dict_target(self) -> Any:
        target = self.stack[-1]
        if type(target) in (dict, collections.OrderedDict) or isinstance(target, PickledObject):
            return target
        raise _refuse(f"refusing to set items of a {type(target).__name__}")

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise _refuse(f"refusing to add items to a {type(target).__name__}")
        target.update(items)

    for _op, _fn in (
        (pickle.REDUCE, load_reduce),
        (pickle.NEWOBJ, load_newobj),
        (pickle.NEWOBJ_EX, load_newobj_ex),
        (pickle.BUILD, load_build),
        (pickle.APPEND, load_append),
        (pickle.APPENDS, load_appends),
        (pickle.SETITEM, load_setitem),
        (pickle.SETITEMS, load_setitems),
        (pickle.ADDITEMS, load_additems),
    ):
        dispatch[_op[0]] = _fn
    del _op, _fn


def _safe_pickle_load(file: Any, **kwargs: Any) -> Any:
    return SafeUnpickler(file, **kwargs).load()


def _safe_pickle_loads(data: bytes, **kwargs: Any) -> Any:
    return SafeUnpickler(io.BytesIO(data), **kwargs).load()


#: The ``pickle_module`` handed to ``torch.load``: its ``Unpickler`` (subclassed by torch, which adds
#: storage handling and ``persistent_load``) and ``load`` (legacy format headers) are restricted.
SAFE_PICKLE = types.ModuleType("cmd_ray_safe_pickle")
SAFE_PICKLE.Unpickler = SafeUnpickler  # type: ignore[attr-defined]
SAFE_PICKLE.load = _safe_pickle_load  # type: ignore[attr-defined]
SAFE_PICKLE.loads = _safe_pickle_loads  # type: ignore[attr-defined]
SAFE_PICKLE.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` through the restricted unpickler; :class:`CheckpointError` (naming the file) if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist()):
                    raise CheckpointError(f"checkpoint {path} is a TorchScript archive, not a state checkpoint")
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=SAFE_PICKLE)
    except CheckpointError:
        raise
    except Exception as exc:  # truncated zip/pickle, wrong magic number, refused opcode, …
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# pytracking checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass
class PytrackingCheckpoint:
    """What a pytracking checkpoint holds, as plain data.

    Attributes:
        state_dict: the network weights (``module.`` stripped, ``feature_extractor.fc.*`` dropped).
        constructor: ``{"__class__", "fun_name", "fun_module", "args", "kwds"}`` of the recorded
            ``NetConstructor`` (e.g. ``fun_name="dimpnet50"``, ``fun_module="ltr.models.tracking.dimpnet"``),
            or ``None`` when the file has none.
        settings: the training ``Settings`` attributes (nested objects as dicts with ``__class__``).
        stats: training statistics (``AverageMeter``/``StatValue`` records as dicts).
        epoch / net_type / actor_type / net_info: the corresponding entries, if present.
        dropped_keys: ``feature_extractor.fc.*`` keys removed (cmd-ray builds no ImageNet head).
        stripped_prefix: whether a DataParallel ``module.`` prefix was removed.
    """

    state_dict: dict[str, torch.Tensor]
    constructor: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    stats: Any = None
    epoch: int | None = None
    net_type: str | None = None
    actor_type: str | None = None
    net_info: Any = None
    dropped_keys: list[str] = field(default_factory=list)
    stripped_prefix: bool = False
    path: Path | None = None


def to_plain(obj: Any) -> Any:
    """Inert records -> dicts (``__class__`` plus attributes), containers -> dict/list/tuple/set; tensors kept."""
    return _Plain().convert(obj)


class _Plain:
    _NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")

    def __init__(self) -> None:
        self.memo: dict[int, Any] = {}

    def convert(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, str | bytes | bool | int | float | complex | torch.Tensor | torch.dtype):
            return obj
        key = id(obj)
        if key in self.memo:
            return self.memo[key]
        if isinstance(obj, PickledObject):
            return self._record(obj)
        if isinstance(obj, Mapping):
            out: dict[Any, Any] = {}
            self.memo[key] = out
            out.update((self.convert(k), self.convert(v)) for k, v in obj.items())
            return out
        if isinstance(obj, list):
            out_list: list[Any] = []
            self.memo[key] = out_list
            out_list.extend(self.convert(v) for v in obj)
            return out_list
        if isinstance(obj, tuple) and not isinstance(obj, torch.Size):
            return tuple(self.convert(v) for v in obj)
        if isinstance(obj, set | frozenset):
            return type(obj)(self.convert(v) for v in obj)
        return obj  # torch.Size, torch.device, slices, …

    def _record(self, rec: PickledObject) -> Any:
        cls = type(rec)
        numeric = self._numpy(rec)
        if numeric is not None:
            return numeric
        out: dict[str, Any] = {"__class__": cls.qualname()}
        self.memo[id(rec)] = out
        if rec.args:
            out["__args__"] = self.convert(rec.args)
        if rec.kwargs:
            out["__kwargs__"] = self.convert(rec.kwargs)
        state = rec.state
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}  # (__dict__, __slots__ state)
        if isinstance(state, dict) and all(isinstance(k, str) for k in state):
            out.update((k, self.convert(v)) for k, v in state.items() if k != "__class__")
        elif state is not None:
            out["__state__"] = self.convert(state)
        if rec.listitems:
            out["__items__"] = self.convert(rec.listitems)
        if rec.dictitems:
            out["__dictitems__"] = self.convert(rec.dictitems)
        return out

    def _numpy(self, rec: PickledObject) -> Any:
        """numpy scalars, dtypes and numeric arrays from their inert records (no numpy pickle code runs)."""
        cls = type(rec)
        try:
            if cls.pickled_module in self._NUMPY_MODULES and cls.pickled_name == "scalar" and len(rec.args) == 2:
                dtype = self._dtype(rec.args[0])
                if dtype is not None and isinstance(rec.args[1], bytes) and len(rec.args[1]) == dtype.itemsize:
                    return np.frombuffer(rec.args[1], dtype=dtype, count=1)[0].item()
            if cls.pickled_module in self._NUMPY_MODULES and cls.pickled_name == "_reconstruct":
                state = rec.state
                if isinstance(state, tuple) and len(state) == 5:
                    _, shape, dtype_rec, fortran, raw = state
                    dtype = self._dtype(dtype_rec)
                    if dtype is not None and isinstance(raw, bytes) and all(type(s) is int for s in shape):
                        array = np.frombuffer(raw, dtype=dtype, count=math.prod(shape))
                        return array.reshape(shape, order="F" if fortran else "C").copy()
            if cls.pickled_module == "numpy" and cls.pickled_name == "dtype":
                dtype = self._dtype(rec)
                return None if dtype is None else str(dtype)
        except (ValueError, TypeError):
            return None
        return None

    @staticmethod
    def _dtype(rec: Any) -> np.dtype | None:
        if not (isinstance(rec, PickledObject) and type(rec).pickled_name == "dtype" and rec.args):
            return None
        code = rec.args[0]
        if not isinstance(code, str) or not re.fullmatch(r"[a-zA-Z]\d{0,2}", code):
            return None
        dtype = np.dtype(code)
        if dtype.hasobject:
            return None
        if isinstance(rec.state, tuple) and len(rec.state) > 1 and rec.state[1] in ("<", ">", "|", "="):
            dtype = dtype.newbyteorder(rec.state[1]) if rec.state[1] != "|" else dtype
        return dtype


def _normalize_weights(weights: Mapping[Any, Any], path: Path) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """``module.`` stripped, ``feature_extractor.fc.*`` dropped; -> (state dict, dropped keys, stripped?)."""
    bad = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path}: weights hold non-tensor entries, e.g. {bad[:3]}")
    stripped = bool(weights) and all(k.startswith(DATAPARALLEL_PREFIX) for k in weights)
    state: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in weights.items():
        name = key[len(DATAPARALLEL_PREFIX) :] if stripped else key
        if name.startswith(FC_PREFIX):
            dropped.append(name)
            continue
        state[name] = value.detach() if isinstance(value, nn.Parameter) else value
    if dropped:
        log.info("%s: dropped %d ImageNet-head keys (%s*)", path, len(dropped), FC_PREFIX)
    return state, dropped, stripped


def load_pytracking_checkpoint(path: str | Path) -> PytrackingCheckpoint:
    """Read a pytracking (``ltr``/``dlframework``) checkpoint without executing any pickled code.

    Raises :class:`CheckpointError` (naming ``path``) for a missing, truncated or garbage file, a
    TorchScript archive, a pickle that needs a refused operation, or a file without weights.
    """
    path = Path(path)
    raw = safe_torch_load(path)
    try:
        return _pytracking_from_raw(raw, path)
    except RecursionError as exc:
        raise CheckpointError(f"checkpoint {path} is nested too deeply to read") from exc


def _pytracking_from_raw(raw: Any, path: Path) -> PytrackingCheckpoint:
    if isinstance(raw, PickledObject):
        raise CheckpointError(f"checkpoint {path} holds a pickled {type(raw).qualname()}, not a checkpoint dict")
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(raw).__name__}, not a checkpoint dict")
    if all(isinstance(v, torch.Tensor) for v in raw.values()) and raw:
        weights: Any = raw  # a bare state dict
    else:
        weights = next((raw[k] for k in ("net", "model", "state_dict") if isinstance(raw.get(k), Mapping)), None)
    if weights is None:
        raise CheckpointError(f"checkpoint {path} has no 'net' state dict (keys: {sorted(map(str, raw))[:10]})")
    state, dropped, stripped = _normalize_weights(weights, path)

    constructor = to_plain(raw.get("constructor"))
    if constructor is not None:
        if not isinstance(constructor, dict):
            raise CheckpointError(f"checkpoint {path}: 'constructor' is a {type(constructor).__name__}")
        constructor.setdefault("args", ())
        constructor.setdefault("kwds", {})
    settings = to_plain(raw.get("settings"))
    if settings is None:
        settings = {}
    elif not isinstance(settings, dict):
        settings = {"__value__": settings}
    epoch = raw.get("epoch")
    return PytrackingCheckpoint(
        state_dict=state,
        constructor=constructor,
        settings=settings,
        stats=to_plain(raw.get("stats")),
        epoch=epoch if type(epoch) is int else None,
        net_type=_str_or_none(raw.get("net_type")),
        actor_type=_str_or_none(raw.get("actor_type")),
        net_info=to_plain(raw.get("net_info")),
        dropped_keys=dropped,
        stripped_prefix=stripped,
        path=path,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# Constructor function names of pytracking (ltr.models.tracking.dimpnet, ltr.models.bbreg.atom).
_FACTORY_BACKBONES: dict[str, str] = {
    "dimpnet18": "resnet18",
    "L2dimpnet18": "resnet18",
    "klcedimpnet18": "resnet18",
    "dimpnet50": "resnet50",
    "klcedimpnet50": "resnet50",  # PrDiMP-50 (SuperDiMP is built by dimpnet50)
    "atom_resnet18": "resnet18",
    "atom_resnet50": "resnet50",
}
_PRESETS = ("tiny", "resnet18", "resnet50")


def choose_backbone(ckpt: PytrackingCheckpoint | str | Path) -> str:
    """The cmd-ray ``build_dimpnet`` preset (``"resnet50"``, ``"resnet18"``, ``"tiny"``) for a pytracking checkpoint.

    Decided by the recorded constructor: a ``backbone`` keyword naming a preset, else the factory
    name (``dimpnet50``/``klcedimpnet50`` -> resnet50, ``dimpnet18``/``atom_resnet18`` -> resnet18, a
    ``…18``/``…50`` suffix likewise); without a constructor, by the backbone keys of the weights
    (Bottleneck ``conv3`` -> resnet50, two BasicBlocks and ``layer4`` -> resnet18, else tiny).
    """
    if not isinstance(ckpt, PytrackingCheckpoint):
        ckpt = load_pytracking_checkpoint(ckpt)
    where = f"checkpoint {ckpt.path}" if ckpt.path else "checkpoint"
    constructor = ckpt.constructor
    if constructor:
        kwds = constructor.get("kwds") or {}
        backbone = kwds.get("backbone") if isinstance(kwds, dict) else None
        if isinstance(backbone, str) and backbone in _PRESETS:
            return backbone
        fun_name = constructor.get("fun_name")
        if isinstance(fun_name, str):
            if fun_name in _FACTORY_BACKBONES:
                return _FACTORY_BACKBONES[fun_name]
            match = re.search(r"(18|34|50|101)(?!\d)", fun_name)
            if match and f"resnet{match.group(1)}" in _PRESETS:
                return f"resnet{match.group(1)}"
            raise CheckpointError(
                f"{where}: constructor {constructor.get('fun_module')}.{fun_name} has no cmd-ray backbone preset"
                f" (supported: {', '.join(sorted(_FACTORY_BACKBONES))})"
            )
    keys = set(ckpt.state_dict)
    if not any(k.startswith("feature_extractor.") for k in keys):
        raise CheckpointError(f"{where}: no constructor and no feature_extractor.* weights to infer the backbone from")
    if "feature_extractor.layer1.0.conv3.weight" in keys:
        return "resnet50"
    has_layer4 = any(k.startswith("feature_extractor.layer4.") for k in keys)
    if "feature_extractor.layer1.1.conv1.weight" in keys and has_layer4:
        return "resnet18"
    return "tiny"


# pytracking factory keyword -> cmd_ray.models.dimpnet.build_dimpnet keyword.
_FACTORY_KWARGS = {
    "filter_size": "filter_size",
    "optim_iter": "optim_iter",
    "optim_init_step": "optim_init_step",
    "optim_init_reg": "optim_init_reg",
    "init_gauss_sigma": "init_gauss_sigma",
    "num_dist_bins": "num_dist_bins",
    "bin_displacement": "bin_displacement",
    "mask_init_factor": "mask_init_factor",
    "clf_feat_blocks": "clf_feat_blocks",
    "out_feature_dim": "clf_out_dim",
    "feat_stride": "feature_stride",
    "iou_input_dim": "iou_pred_dim",
    "iou_inter_dim": "iou_inter_dim",
}


def factory_kwargs(ckpt: PytrackingCheckpoint) -> dict[str, Any]:
    """``build_dimpnet`` keywords from the recorded constructor keywords (those cmd-ray has; others ignored).

    ``build_dimpnet(choose_backbone(ckpt), **factory_kwargs(ckpt))`` builds the matching network.
    """
    kwds = (ckpt.constructor or {}).get("kwds") or {}
    out: dict[str, Any] = {}
    for theirs, ours in _FACTORY_KWARGS.items():
        if theirs not in kwds:
            continue
        value = kwds[theirs]
        if isinstance(value, list | tuple):
            value = tuple(int(v) for v in value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[ours] = value
    return out


# ---------------------------------------------------------------------------------------------
# Loading into a model
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What :func:`load_into` did: ``loaded`` keys, and the ``missing``/``unexpected``/``mismatched`` ones."""

    loaded: list[str]
    missing_keys: list[str]
    unexpected_keys: list[str]
    shape_mismatches: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # key -> (checkpoint, model) shape

    @property
    def ok(self) -> bool:
        return not (self.missing_keys or self.unexpected_keys or self.shape_mismatches)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for title, keys in (("missing", self.missing_keys), ("unexpected", self.unexpected_keys)):
            if keys:
                lines.append(f"{title} ({len(keys)}): {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''}")
        for key, (theirs, ours) in list(self.shape_mismatches.items())[:8]:
            lines.append(f"shape mismatch {key}: checkpoint {list(theirs)} vs model {list(ours)}")
        return "\n".join(lines)


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor] | PytrackingCheckpoint) -> LoadReport:
    """Load what fits (``strict=False``; shape mismatches skipped instead of raising) and report the rest."""
    if isinstance(state_dict, PytrackingCheckpoint):
        state_dict = state_dict.state_dict
    own = model.state_dict()
    mismatched = {
        k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items() if k in own and v.shape != own[k].shape
    }
    usable = {k: v for k, v in state_dict.items() if k not in mismatched}
    result = model.load_state_dict(usable, strict=False)
    missing = sorted(k for k in result.missing_keys if k not in mismatched)
    report = LoadReport(
        loaded=sorted(k for k in usable if k in own),
        missing_keys=missing,
        unexpected_keys=sorted(result.unexpected_keys),
        shape_mismatches=dict(sorted(mismatched.items())),
    )
    if not report.ok:
        log.warning("partial load into %s:\n%s", type(model).__name__, report)
    return report


# ---------------------------------------------------------------------------------------------
# Reading weights from any weights file
# ---------------------------------------------------------------------------------------------


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Weights of a cmd-ray state dict / training checkpoint (file or folder) or a pytracking checkpoint."""
    if path.is_dir():
        path = path / TRAINING_STATE_FILE
    try:
        loaded = _load(path)
    except CheckpointError:
        if not path.is_file():
            raise
        return load_pytracking_checkpoint(path).state_dict  # its CheckpointError names the file
    if isinstance(loaded, Mapping):
        for key in ("model", "net", "state_dict"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return _normalize_weights(loaded, path)[0]
