"""The restricted unpickler: the security boundary every pickled checkpoint file is read through.

pytracking (``ltr``) checkpoints are ``torch.save({"epoch", "actor_type", "net_type", "net",
"net_info", "constructor", "optimizer", "stats", "settings"})`` where ``constructor`` is an
``ltr.admin.model_constructor.NetConstructor`` and ``settings`` an ``ltr.admin.settings.Settings``
(``dlframework.*`` in old files). ``weights_only`` refuses those classes, and plain unpickling would
import and run whatever the file names. :func:`safe_torch_load` (used by
:func:`cmd_ray.models.pytracking_checkpoint.load_pytracking_checkpoint`) instead reads them with
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

:func:`to_plain` turns the inert records of the constructor, settings and stats into plain dicts
(``{"__class__": "module.Name", **attributes}``) for
:class:`~cmd_ray.models.pytracking_checkpoint.PytrackingCheckpoint`.

This module imports nothing from ``cmd_ray``; changes to it are changes to what a checkpoint file can do.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import pickle
import re
import types
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint file is missing, mangled or of the wrong kind; the message names it."""


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
