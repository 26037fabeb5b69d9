"""A pickle reader for model files that never calls anything the file names.

A pickle is a program: ``GLOBAL`` names a callable, ``REDUCE``/``NEWOBJ`` call it, ``BUILD`` calls
its ``__setstate__``. torch's weights-only unpickler calls the classes on its allowlist, and an
ultralytics model class *does work* with its arguments (``DetectionModel(cfg)`` builds layers and
``eval``s strings from ``cfg``). :class:`InertUnpickler` calls nothing the file chooses:

* a class or function name becomes an inert placeholder type (:class:`Stub` subclass named after
  it); calling it, ``NEWOBJ`` on it or ``BUILD`` on its instances only records plain data;
* tensors are rebuilt here from the archive's storages (``_rebuild_tensor_v2`` /
  ``_rebuild_parameter`` and torch's ``('storage', ...)`` persistent ids, bounds-checked) and
  wrapped in :class:`TensorRef`, so no torch method runs on a file's say;
* only ``OrderedDict``, ``set``/``frozenset``, ``torch.Size`` (a tuple), ``torch.device`` (a string)
  and ``_codecs.encode`` (protocol-2 bytes) are real, argument-checked constructors of plain values;
  ``torch.<dtype>`` names give the dtype.

:func:`module_state` turns a placeholder module tree (``_parameters``/``_buffers``/``_modules``)
into a state dict, :func:`plain` turns recorded data into JSON-like values. Building a model from
what is read is the caller's job (:mod:`cvapps.tasks.ultralytics_rebuild`).
"""

from __future__ import annotations

import io
import math
import pickle
import re
from typing import Any

import numpy as np
import torch

from cvapps.errors import CheckpointError
from cvapps.io.archive import TorchArchive

MAX_DEPTH = 64  # module nesting / container nesting walked by the converters
MAX_NAMES = 10_000  # distinct global names one pickle may mention
MAX_DIMS = 8
NAME = re.compile(r"^[A-Za-z0-9_]{1,128}$")  # a module / parameter / buffer attribute name
STORAGE_KEY = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_STORAGE_DTYPES = {"DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}  # torch.save's names for the dtypes of plain tensors
_DTYPES = {str(d).removeprefix("torch."): d for d in _STORAGE_DTYPES.values()}
MAX_PLAIN = 300_000  # values one conversion to plain data may produce (shared references count each time)
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_NUMPY_CODE = re.compile(r"^[<>=|]?[fiub][1248]$")


class UnsafeFile(CheckpointError):
    """The pickle does something a plain model file never does (the caller adds the file's name)."""


class Stub:
    """An instance of a class the file named: what it was called with and the state BUILD gave it."""

    __slots__ = ("cv_args", "cv_kwargs", "cv_state")
    cv_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Stub":
        self = object.__new__(cls)
        self.cv_args, self.cv_kwargs, self.cv_state = args, kwargs, None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls the type: record only (in __new__)
        pass

    def __setstate__(self, state: Any) -> None:  # BUILD: kept as data, never applied
        self.cv_state = state

    def __reduce__(self) -> Any:
        raise TypeError("placeholders are not picklable")


class TensorRef:
    """A tensor rebuilt from the archive; BUILD on it is refused (Tensor.__setstate__ would run)."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __setstate__(self, state: Any) -> None:
        raise UnsafeFile("its pickle sets state on a tensor")


class _Inert:
    """Base of this module's own objects that a pickle can reach: BUILD on them is refused (a
    pickle's slot state could otherwise replace their attributes)."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise UnsafeFile("its pickle sets state on a storage or a constructor")


class _StorageKind(_Inert):
    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Storage(_Inert):
    __slots__ = ("flat",)

    def __init__(self, flat: torch.Tensor) -> None:
        self.flat = flat


class _Call(_Inert):
    """One of the few real constructors, as an object whose attributes a pickle cannot set."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class _Dict(dict):
    """What ``OrderedDict(...)`` gives: a dict (ordered) on which BUILD (torch's ``_metadata`` of a
    state dict) records nothing and can set no attribute."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        pass


def _ordered_dict(*args: Any) -> _Dict:
    if args and (len(args) > 1 or not isinstance(args[0], (list, tuple))
                 or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in args[0])):
        raise UnsafeFile("its pickle calls OrderedDict with arguments no checkpoint uses")
    return _Dict(args[0] if args else ())


def _set_of(kind: type) -> Any:
    def make(*args: Any) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset))):
            raise UnsafeFile(f"its pickle calls {kind.__name__} with arguments no checkpoint uses")
        return kind(args[0] if args else ())
    return make


def _size(*args: Any) -> tuple[int, ...]:
    if args and (len(args) > 1 or not _ints(args[0])):
        raise UnsafeFile("its pickle calls torch.Size with arguments no checkpoint uses")
    return tuple(args[0]) if args else ()


def _device(*args: Any) -> str:
    if not 1 <= len(args) <= 2 or not isinstance(args[0], str) or len(args[0]) > 32:
        raise UnsafeFile("its pickle calls torch.device with arguments no checkpoint uses")
    return args[0]


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeFile("its pickle calls _codecs.encode with arguments no checkpoint uses")
    return text.encode("latin1")


class InertUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of ``archive`` calling nothing the file names (see the module docstring)."""

    def __init__(self, archive: TorchArchive) -> None:
        super().__init__(io.BytesIO(archive.read("data.pkl")), encoding="utf-8")
        self.archive = archive
        self.storages: dict[str, _Storage] = {}
        self.stubs: dict[str, type] = {}
        real = {"collections.OrderedDict": _ordered_dict, "builtins.set": _set_of(set),
                "builtins.frozenset": _set_of(frozenset), "_codecs.encode": _encode,
                "torch.Size": _size, "torch.device": _device,  # as plain tuples and strings
                "torch._utils._rebuild_tensor_v2": self._rebuild_tensor,
                "torch._utils._rebuild_parameter": _rebuild_parameter,
                "torch._utils._rebuild_parameter_with_state": _rebuild_parameter}
        self.real = {name: _Call(fn) for name, fn in real.items()}

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)  # protocol 2 names builtins as Python 2 did
        full = f"{module}.{name}"
        if full in self.real:
            return self.real[full]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageKind(_STORAGE_DTYPES[name])  # a fresh object per use: nothing shared to tamper with
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]  # a dtype value (immutable, has no state to set)
        if full not in self.stubs:
            if len(self.stubs) >= MAX_NAMES:
                raise UnsafeFile(f"its pickle names over {MAX_NAMES} classes")
            self.stubs[full] = type("Stub", (Stub,), {"__slots__": (), "cv_name": full[:200]})
        return self.stubs[full]

    def persistent_load(self, pid: Any) -> _Storage:
        # torch: ("storage", storage type, key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise UnsafeFile("its pickle has a persistent id that is not a torch storage")
        _, kind, key, _location, numel = pid
        key = key.decode("ascii", "replace") if isinstance(key, bytes) else key
        if not isinstance(kind, _StorageKind) or not isinstance(key, str) or not STORAGE_KEY.match(key) \
                or type(numel) is not int or numel < 0:
            raise UnsafeFile("its pickle has a malformed torch storage id")
        if key not in self.storages:
            self.storages[key] = _Storage(self._read_storage(key, kind.dtype, numel))
        storage = self.storages[key]
        if storage.flat.dtype != kind.dtype or storage.flat.numel() != numel:
            raise UnsafeFile(f"its pickle uses storage {key} as two different types")
        return storage

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        size = self.archive.size(f"data/{key}")
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if size is None or size != nbytes:
            raise UnsafeFile(f"its storage {key} declares {nbytes} bytes but the archive holds {size}")
        buf = torch.empty(nbytes, dtype=torch.uint8)
        view, got = memoryview(buf.numpy()), 0
        with self.archive.open(f"data/{key}") as fh:
            while got < nbytes:  # chunked into the tensor itself: no second copy of the weights
                n = fh.readinto(view[got: got + (16 << 20)])
                if not n:
                    raise UnsafeFile(f"its storage {key} is truncated")
                got += n
        return buf.view(dtype) if nbytes else torch.empty(0, dtype=dtype)

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                        hooks: Any = None, metadata: Any = None) -> TensorRef:
        if not isinstance(storage, _Storage) or type(offset) is not int or not _ints(size) or not _ints(stride) \
                or len(size) != len(stride) or len(size) > MAX_DIMS:
            raise UnsafeFile("its pickle rebuilds a tensor from malformed arguments")
        numel, last = math.prod(size), offset + sum((s - 1) * st for s, st in zip(size, stride))
        have = storage.flat.numel()
        # A view must lie inside its storage and be no bigger than it (no zero-stride giant views).
        if offset < 0 or (numel and (last >= have or numel > have)):
            raise UnsafeFile(f"its tensor of shape {tuple(size)[:MAX_DIMS]} does not fit its storage")
        if not numel:
            return TensorRef(torch.empty(tuple(size), dtype=storage.flat.dtype))
        return TensorRef(torch.as_strided(storage.flat, tuple(size), tuple(stride), offset))


def _ints(xs: Any) -> bool:
    return isinstance(xs, (tuple, list)) and all(type(x) is int and 0 <= x < 1 << 48 for x in xs)


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, state: Any = None) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise UnsafeFile("its pickle rebuilds a parameter from something that is not a tensor")
    return data


def read_inert(archive: TorchArchive) -> Any:
    """The pickle of ``archive`` as plain containers, :class:`Stub` and :class:`TensorRef` objects.

    Raises UnsafeFile for anything a plain torch/ultralytics file never does, CheckpointError
    for a pickle that cannot be read.
    """
    order = archive.read("byteorder") if archive.size("byteorder") is not None and archive.size("byteorder") < 16 \
        else b"little"
    if order.strip() != b"little":
        raise UnsafeFile("its tensors are stored big-endian")
    try:
        return InertUnpickler(archive).load()
    except CheckpointError:
        raise
    except (RecursionError, MemoryError):
        raise UnsafeFile("its pickle nests too deeply or is too large") from None
    except Exception as exc:  # noqa: BLE001 - any malformed pickle: one line naming the kind
        raise UnsafeFile(f"its pickle cannot be read ({type(exc).__name__})") from None


def stub_name(obj: Any) -> str:
    """The class name a placeholder records (``type`` name for anything else)."""
    return obj.cv_name if isinstance(obj, Stub) else type(obj).__name__


def module_state(stub: Stub, what: str = "model") -> dict[str, torch.Tensor]:
    """The state dict (parameters and persistent buffers) of a placeholder ``nn.Module`` tree.

    Every module in the tree must have been made the way torch pickles modules (``NEWOBJ`` with
    no arguments, then BUILD with its ``__dict__``); names must be identifiers; values tensors.
    """
    out: dict[str, torch.Tensor] = {}
    stack: list[tuple[Any, str, int]] = [(stub, "", 0)]
    visits = 0
    while stack:
        node, prefix, depth = stack.pop()
        where = prefix.rstrip(".")[:100] or what
        visits += 1
        if not isinstance(node, Stub) or node.cv_args or node.cv_kwargs or not isinstance(node.cv_state, dict):
            raise UnsafeFile(f"{where} is not a plain module object ({stub_name(node)[:80]})")
        if depth > MAX_DEPTH or visits > 200_000:  # shared submodules could otherwise repeat exponentially
            raise UnsafeFile(f"{where}: modules nest too deeply or too often")
        state = node.cv_state
        skip = state.get("_non_persistent_buffers_set", set())
        if not isinstance(skip, (set, frozenset)):
            raise UnsafeFile(f"{where}: malformed _non_persistent_buffers_set")
        for field in ("_parameters", "_buffers"):
            values = state.get(field, {})
            if not isinstance(values, dict):
                raise UnsafeFile(f"{where}: {field} is a {type(values).__name__}, not a dict")
            for name, value in values.items():
                if not isinstance(name, str) or not NAME.match(name):
                    raise UnsafeFile(f"{where}: a {field[1:-1]} name is not an identifier")
                if value is None or (field == "_buffers" and name in skip):
                    continue
                if not isinstance(value, TensorRef):
                    raise UnsafeFile(f"{where}.{name} is a {stub_name(value)}, not a tensor")
                out[prefix + name] = value.tensor
        children = state.get("_modules", {})
        if not isinstance(children, dict):
            raise UnsafeFile(f"{where}: _modules is a {type(children).__name__}, not a dict")
        for name, child in reversed(list(children.items())):
            if not isinstance(name, str) or not NAME.match(name):
                raise UnsafeFile(f"{where}: a submodule name is not an identifier")
            if child is not None:
                stack.append((child, f"{prefix}{name}.", depth + 1))
    return out


def plain(obj: Any) -> Any:
    """Recorded data as plain values: dict/list/str/number/bool/None; numpy scalars, paths and
    namespaces the way ultralytics pickles them become numbers, strings and dicts; tensors and other
    placeholders None. UnsafeFile past :data:`MAX_DEPTH` levels or :data:`MAX_PLAIN` values (a
    pickle can share one list a thousand times at every level)."""
    if _expanded(obj, 0, {}) > MAX_PLAIN:  # counted first (linear), so nothing of a bomb is built
        raise UnsafeFile("its data nests too deeply or is too large")
    return _Plain().convert(obj, 0)


def _expanded(obj: Any, depth: int, memo: dict[int, int]) -> int:
    """How many values converting ``obj`` would produce (each shared object once per reference)."""
    if depth > MAX_DEPTH:
        raise UnsafeFile("its data nests too deeply or is too large")
    if id(obj) in memo:
        return memo[id(obj)]
    n = 1
    if isinstance(obj, dict):
        n += sum(_expanded(k, depth + 1, memo) + _expanded(v, depth + 1, memo) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        n += sum(_expanded(v, depth + 1, memo) for v in obj)
    elif isinstance(obj, Stub) and obj.cv_name.endswith("SimpleNamespace"):
        n += _expanded(obj.cv_state, depth + 1, memo)
    memo[id(obj)] = n = min(n, MAX_PLAIN + 1)
    return n


class _Plain:
    def __init__(self) -> None:
        self.left = MAX_PLAIN

    def convert(self, obj: Any, depth: int) -> Any:
        self.left -= 1
        if depth > MAX_DEPTH or self.left < 0:  # (already ruled out by _expanded; kept as the bound)
            raise UnsafeFile("its data nests too deeply or is too large")
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, bytes):
            return obj.decode("utf-8", "replace")
        if isinstance(obj, dict):
            return {k if isinstance(k, (str, int)) else str(self.convert(k, depth + 1)): self.convert(v, depth + 1)
                    for k, v in obj.items()}
        if isinstance(obj, (list, tuple, set, frozenset)):
            return [self.convert(v, depth + 1) for v in obj]
        if isinstance(obj, Stub):
            if obj.cv_name.endswith("SimpleNamespace") and isinstance(obj.cv_state, dict):  # older train args
                return self.convert(obj.cv_state, depth + 1)
            return _plain_stub(obj)
        return None


def _plain_stub(obj: Stub) -> Any:
    name, args = obj.cv_name, obj.cv_args
    if name.rpartition(".")[2] in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath") \
            and name.startswith("pathlib.") and all(isinstance(a, str) for a in args):
        return "/".join(args)
    if name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar") and len(args) == 2 \
            and isinstance(args[0], Stub) and args[0].cv_name == "numpy.dtype" and args[0].cv_args \
            and isinstance(args[0].cv_args[0], str) and _NUMPY_CODE.match(args[0].cv_args[0]) \
            and isinstance(args[1], bytes):
        dtype = np.dtype(args[0].cv_args[0])
        if dtype.itemsize == len(args[1]):
            return np.frombuffer(args[1], dtype=dtype)[0].item()
    return None
