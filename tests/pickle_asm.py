"""Writing torch ``.pt`` files opcode by opcode, for tests that need pickles no library would write.

:class:`Asm` assembles a pickle program in any protocol (2-5) without the classes it names being
importable: ``Call`` is REDUCE, ``NewObj`` / ``NewObjEx`` the NEWOBJ / NEWOBJ_EX opcodes, ``BuildOn``
a bare BUILD, a node's ``state`` a BUILD after it, ``Memo``/``Get`` the memo (shared references).
:func:`module_node` turns a real ``nn.Module`` into the nodes torch.save would write, so a real model
can be rewritten piece by piece. :func:`write_pt` packs a pickle and its storages as torch.save does
(``<prefix>/data.pkl``, ``<prefix>/data/<key>``); :func:`raw_zip` writes members whose declared sizes
are whatever the test says; :func:`deflate_zeros` makes a deflate stream that inflates 1000-fold.
"""

from __future__ import annotations

import copy
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

STORAGE_NAMES = {torch.float32: "FloatStorage", torch.float16: "HalfStorage", torch.int64: "LongStorage",
                 torch.float64: "DoubleStorage", torch.bool: "BoolStorage", torch.uint8: "ByteStorage"}


# --- pickle assembly -------------------------------------------------------------------------------
@dataclass
class Global:
    module: str
    name: str


@dataclass
class Call:
    """REDUCE(func, args) [+ BUILD(state)]."""
    func: Any
    args: tuple = ()
    state: Any = None


@dataclass
class NewObj:
    """NEWOBJ(cls, args) [+ BUILD(state)]: how torch pickles an nn.Module (args empty, state its __dict__)."""
    cls: Any
    args: tuple = ()
    state: Any = None


@dataclass
class NewObjEx:
    """NEWOBJ_EX(cls, args, kwargs) [+ BUILD(state)] (protocol 4+)."""
    cls: Any
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    state: Any = None


@dataclass
class BuildOn:
    """``value`` then BUILD(state) on it, with no call in between."""
    value: Any
    state: Any


@dataclass
class Memo:
    """``value``, then kept in memo slot ``slot`` (LONG_BINPUT)."""
    value: Any
    slot: int


@dataclass
class Get:
    """The value in memo slot ``slot`` again (LONG_BINGET): a shared reference."""
    slot: int


@dataclass
class Tensor:
    """``_rebuild_tensor_v2(('storage', <dtype>Storage, key, 'cpu', numel), offset, size, stride, ...)``."""
    key: str
    storage: str
    numel: int
    size: tuple
    stride: tuple
    offset: int = 0


def Param(t: Tensor) -> Call:
    return Call(Global("torch._utils", "_rebuild_parameter"), (t, True, Call(Global("collections", "OrderedDict"))))


class Asm:
    """Writes a pickle program for ``value`` in ``protocol`` (2-5)."""

    def __init__(self, protocol: int = 2) -> None:
        self.proto, self.out = protocol, bytearray(b"\x80" + bytes([protocol]))

    def program(self, value: Any) -> bytes:
        self.emit(value)
        return bytes(self.out + b".")

    def emit(self, v: Any) -> None:
        out = self.out
        if isinstance(v, Global):
            if self.proto >= 4:
                self.emit(v.module), self.emit(v.name)
                out += b"\x93"  # STACK_GLOBAL
            else:
                out += b"c" + f"{v.module}\n{v.name}\n".encode()
        elif isinstance(v, Call):
            self.emit(v.func), self.emit(tuple(v.args))
            out += b"R"
            self._build(v.state)
        elif isinstance(v, NewObj):
            self.emit(v.cls), self.emit(tuple(v.args))
            out += b"\x81"
            self._build(v.state)
        elif isinstance(v, NewObjEx):
            self.emit(v.cls), self.emit(tuple(v.args)), self.emit(dict(v.kwargs))
            out += b"\x92"
            self._build(v.state)
        elif isinstance(v, Memo):
            self.emit(v.value)
            out += b"r" + struct.pack("<I", v.slot)
        elif isinstance(v, Get):
            out += b"j" + struct.pack("<I", v.slot)
        elif isinstance(v, BuildOn):
            self.emit(v.value)
            self._build(v.state)
        elif isinstance(v, Tensor):
            self.emit(Global("torch._utils", "_rebuild_tensor_v2"))
            out += b"("
            self.emit(("storage", Global("torch", v.storage), v.key, "cpu", v.numel))
            out += b"Q"  # BINPERSID
            for x in (v.offset, tuple(v.size), tuple(v.stride), False, Call(Global("collections", "OrderedDict"))):
                self.emit(x)
            out += b"tR"
        elif v is None:
            out += b"N"
        elif v is True or v is False:
            out += b"\x88" if v else b"\x89"
        elif isinstance(v, int):
            out += b"J" + struct.pack("<i", v) if -2**31 <= v < 2**31 else _long1(v)
        elif isinstance(v, float):
            out += b"G" + struct.pack(">d", v)
        elif isinstance(v, str):
            data = v.encode("utf-8", "surrogatepass")
            out += b"X" + struct.pack("<I", len(data)) + data
        elif isinstance(v, bytes):
            out += b"B" + struct.pack("<I", len(v)) + v
        elif isinstance(v, tuple):
            out += b"("
            for x in v:
                self.emit(x)
            out += b"t"
        elif isinstance(v, list):
            out += b"]("
            for x in v:
                self.emit(x)
            out += b"e"
        elif isinstance(v, dict):
            out += b"}("
            for k, x in v.items():
                self.emit(k), self.emit(x)
            out += b"u"
        elif isinstance(v, (set, frozenset)):
            if self.proto >= 4:
                out += b"\x8f("
                for x in v:
                    self.emit(x)
                out += b"\x90"
            else:
                self.emit(Call(Global("builtins", "set"), (list(v),)))
        else:
            raise TypeError(f"cannot assemble {type(v).__name__}")

    def _build(self, state: Any) -> None:
        if state is not None:
            self.emit(state)
            self.out += b"b"


def _long1(v: int) -> bytes:
    data = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


# --- real modules as nodes ---------------------------------------------------------------------------
class Storages:
    """The storages of the tensors turned into nodes (key -> bytes)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def tensor(self, t: torch.Tensor) -> Tensor:
        t = t.detach().contiguous().cpu()
        key = str(len(self.data))
        self.data[key] = t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()
        return Tensor(key, STORAGE_NAMES[t.dtype], t.numel(), tuple(t.shape), tuple(t.stride()))


def module_node(mod: nn.Module, storages: Storages) -> NewObj:
    """The nodes torch.save writes for ``mod``: NEWOBJ(class) + BUILD(its __dict__), tensors as storages."""
    state: dict[str, Any] = {}
    for key, value in mod.__dict__.items():
        if key == "_parameters":
            state[key] = {k: None if p is None else Param(storages.tensor(p)) for k, p in value.items()}
        elif key == "_buffers":
            state[key] = {k: None if b is None else storages.tensor(b) for k, b in value.items()}
        elif key == "_modules":
            state[key] = {k: None if m is None else module_node(m, storages) for k, m in value.items()}
        elif isinstance(value, torch.Tensor):
            state[key] = storages.tensor(value)
        elif isinstance(value, nn.Module):
            state[key] = module_node(value, storages)
        elif _plain(value):
            state[key] = copy.deepcopy(value)
    cls = type(mod)
    return NewObj(Global(cls.__module__, cls.__qualname__), (), state)


def _plain(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return True
    if isinstance(v, (list, tuple, set, frozenset)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(_plain(k) and _plain(x) for k, x in v.items())
    return False


def ultralytics_root(model: nn.Module, storages: Storages, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict ultralytics' save writes, around ``model``'s nodes."""
    return {"model": module_node(model, storages), "ema": None, "date": "2025-01-01", "version": "8.4.0", **extra}


# --- archives --------------------------------------------------------------------------------------
def write_pt(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None, prefix: str = "archive") -> Path:
    """A torch.save-layout zip (members stored, as torch writes them)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", data_pkl)
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, data in (storages or {}).items():
            zf.writestr(f"{prefix}/data/{key}", data)
        zf.writestr(f"{prefix}/version", "3\n")
    return path


def pickle_file(path: Path, value: Any, storages: Storages | None = None, protocol: int = 2) -> Path:
    return write_pt(path, Asm(protocol).program(value), storages.data if storages else None)


def replace_member(src: Path, dst: Path, suffix: str, data: bytes) -> Path:
    """``src`` with the member ending in ``suffix`` (e.g. ``/data.pkl``) replaced by ``data``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, data if info.filename.endswith(suffix) else zin.read(info))
    return dst


def deflate_zeros(size: int, chunk: int = 1 << 20) -> tuple[bytes, int]:
    """(raw deflate stream of ``size`` zero bytes, its crc32) in about ``size / 1000`` bytes: each
    full-flushed chunk compresses to the same bytes, so one is compressed and repeated."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    block = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    n, rest = divmod(size, chunk)
    tail = comp.compress(bytes(rest)) + comp.flush()
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    return block * n + tail, zlib.crc32(bytes(rest), crc)


def raw_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip of ``(name, payload, method (0 stored / 8 deflated), crc, declared size)`` members, the
    declared sizes written as given (sizes below 4 GiB; over 65535 members as zip64 does)."""
    out, central = bytearray(), bytearray()
    for name, payload, method, crc, size in members:
        raw = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(payload), size, len(raw), 0)
        out += raw + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(payload), size,
                               len(raw), 0, 0, 0, 0, 0, offset) + raw
    n, tail = len(members), b""
    if n > 0xFFFF:  # the count lives in a zip64 end record (then its locator)
        tail = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), len(out))
        tail += struct.pack("<IIQI", 0x07064B50, 0, len(out) + len(central), 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + tail + end))
    return path
