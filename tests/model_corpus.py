"""A generated corpus of hostile model files: pickles that would run code, zip bombs, wrong-typed weights.

:func:`make_corpus` writes them (with :mod:`pickle_asm`), ``{case name: path}``. Every payload that
runs code creates the file ``marker`` (``pathlib.Path(marker).touch()``), so a test only checks that
it is absent; the payloads are live: fully unpickled (``--trust-model``), they do create it.
"""

from __future__ import annotations

import copy
import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
from pickle_asm import (
    Asm,
    BuildOn,
    Call,
    Get,
    Global,
    Memo,
    NewObj,
    NewObjEx,
    Storages,
    Tensor,
    deflate_zeros,
    module_node,
    pickle_file,
    raw_zip,
    replace_member,
    ultralytics_root,
)
from torch import nn

#: A real cvapps checkpoint in the repository (the cvapps-* cases change one thing in it).
SAMPLE_CKPT = Path(__file__).resolve().parents[1] / "sample_data" / "models" / "classify.pt"
#: The model classes of ultralytics.nn.tasks (and the alias ultralytics maps old files to).
MODEL_CLASSES = ["BaseModel", "DetectionModel", "SegmentationModel", "ClassificationModel", "PoseModel", "OBBModel",
                 "RTDETRDetectionModel", "WorldModel", "YOLOEModel", "YOLOESegModel", "SemanticSegmentationModel",
                 "DepthModel", "Ensemble", "YOLOv10DetectionModel"]

TASKS = "ultralytics.nn.tasks"
GIB = 1 << 30


def touch(marker: Path) -> str:
    """Python source that creates ``marker`` (what a payload evaluates)."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def hostile_cfgs(base: dict[str, Any], marker: Path) -> dict[str, dict[str, Any]]:
    """Model yamls (from a real one) that run code when ultralytics builds them, or try to:
    ``activation`` is eval'd; a module name is looked up in ultralytics.nn.tasks' globals, which hold
    ``torch_safe_load`` (a full unpickle of the file named by the argument ``evil.pt``, relative to
    the working directory); argument strings are resolved from parse_model's locals or literal_eval'd."""
    code = touch(marker)
    cfgs = {name: copy.deepcopy(base) for name in ("activation", "module-backbone", "module-head",
                                                    "module-function", "arg-code", "arg-locals")}
    cfgs["activation"]["activation"] = f"{code} or nn.SiLU()"
    cfgs["module-backbone"]["backbone"][0][2] = code
    cfgs["module-head"]["head"][-1][2] = code
    cfgs["module-function"]["head"].append([-1, 1, "torch_safe_load", ["evil.pt"]])
    cfgs["arg-code"]["backbone"][0][3] = [code, 3, 2]
    cfgs["arg-locals"]["backbone"][0][3] = ["d", 3, 2]
    return cfgs


def evil_full_pickle(path: Path, marker: Path) -> Path:
    """A .pt that creates ``marker`` when fully unpickled (what torch_safe_load would do to it)."""
    call = Call(Call(Global("builtins", "getattr"), (Call(Global("pathlib", "Path"), (str(marker),)), "touch")))
    return pickle_file(path, {"model": call})


def make_corpus(folder: Path, marker: Path, trees: dict[str, nn.Module], real: dict[str, Path]) -> dict[str, Path]:
    """Write the hostile model files into ``folder``; ``{case name: path}``.

    trees: real ultralytics models by task ("detect", "segment", "classify"), rewritten node by node;
    real: files ultralytics' own save wrote ("detect" at least), tampered inside their zip."""
    folder.mkdir(parents=True, exist_ok=True)
    evil_full_pickle(folder / "evil.pt", marker)
    out: dict[str, Path] = {}

    def put(name: str, value: Any, storages: Storages | None = None, protocol: int = 2) -> None:
        out[name] = pickle_file(folder / f"{name}.pt", value, storages, protocol)

    cfgs = hostile_cfgs(trees["detect"].yaml, marker)
    act = cfgs["activation"]
    # Every model class called with a hostile yaml: REDUCE (protocols 2-5), NEWOBJ with arguments,
    # NEWOBJ_EX with keyword arguments.
    for cls in MODEL_CLASSES:
        for proto in (2, 3, 4, 5):
            put(f"reduce-{cls}-p{proto}", {"model": Call(Global(TASKS, cls), (act,)), "train_args": {}}, protocol=proto)
        put(f"newobj-{cls}", {"model": NewObj(Global(TASKS, cls), (act,))})
        for proto in (4, 5):
            put(f"newobj_ex-{cls}-p{proto}", {"model": NewObjEx(Global(TASKS, cls), (), {"cfg": act})}, protocol=proto)
    for name, cfg in cfgs.items():
        for proto in (2, 4):
            put(f"reduce-yaml-{name}-p{proto}", {"model": Call(Global(TASKS, "DetectionModel"), (cfg,))}, protocol=proto)
    # BUILD: a real model restored as torch pickles it, its stored yaml hostile (rebuilding it, as
    # `cvapps train model.model=FILE` used to through model.yaml, would eval it).
    for task, tree in trees.items():
        for name, cfg in cfgs.items() if task == "detect" else [("activation", act)]:
            storages = Storages()
            node = module_node(tree, storages)
            node.state["yaml"] = copy.deepcopy(cfg)
            put(f"build-{task}-yaml-{name}", {"model": node}, storages)
    payload = Call(Call(Global("builtins", "getattr"), (Call(Global("pathlib", "Path"), (str(marker),)), "touch")))
    system = Call(Global("os", "system"), (f"touch {marker}",))  # a single call: unpickles to an inert record
    # Calls of functions that run code or allocate, at the top, nested, in BUILD state, inside a real model.
    for proto in (2, 4):
        put(f"top-getattr-touch-p{proto}", payload, protocol=proto)
        put(f"model-eval-p{proto}", {"model": Call(Global("builtins", "eval"), (touch(marker),))}, protocol=proto)
        put(f"model-exec-p{proto}", {"model": Call(Global("builtins", "exec"), (touch(marker),))}, protocol=proto)
        put(f"model-os-system-p{proto}", {"model": Call(Global("os", "system"), (f"touch {marker}",))}, protocol=proto)
        put(f"nested-p{proto}", {"model": [{"a": ({"b": [system]},)}], "train_args": {"x": [[system]]}}, protocol=proto)
    put("torch-linear-huge", {"model": Call(Global("torch.nn.modules.linear", "Linear"), (200_000, 200_000))})
    put("torchvision-download", {"model": Call(Global("ultralytics.nn.modules", "TorchVision"), ("resnet18", "DEFAULT"))})
    put("build-state-is-a-call", {"model": NewObj(Global(TASKS, "DetectionModel"), (), payload)})
    tensor = Tensor("0", "FloatStorage", 1, (1,), (1,))
    put("build-on-tensor", {"model": BuildOn(tensor, (tensor, 0, (10**9,), (0,)))}, _one_storage())
    put("build-on-storage-kind", {"model": BuildOn(Global("torch", "FloatStorage"), (None, {"dtype": payload}))})
    put("build-on-constructor", {"model": BuildOn(Global("collections", "OrderedDict"), (None, {"__defaults__": (1,)}))})
    put("build-on-ordered-dict-slots", {"model": Call(Global("collections", "OrderedDict"), (), (None, {"keys": system}))})
    storages = Storages()
    real_root = ultralytics_root(trees["detect"], storages)
    for where in ("train_args", "names", "submodule", "attribute", "optimizer"):
        root = copy.deepcopy(real_root)
        if where == "submodule":
            root["model"].state["_modules"]["evil"] = system
        elif where == "attribute":
            root["model"].state["_modules"]["model"].state["evil"] = system
        elif where == "names":
            root["model"].state["names"] = {0: system}
        else:
            root[where] = {"x": system}
        put(f"real-model-system-in-{where}", root, storages)
    put("real-model-reduce-submodule", _with(real_root, lambda r: r["model"].state["_modules"].__setitem__(
        "model", Call(Global("torch.nn.modules.container", "Sequential"), (system,)))), storages)
    # A real ultralytics-saved file whose data.pkl is rewritten (its storages kept).
    det = real["detect"]
    out["tampered-real-reduce"] = replace_member(det, folder / "tampered-real-reduce.pt", "/data.pkl", Asm(2).program(
        {"model": Call(Global(TASKS, "DetectionModel"), (act,))}))
    out["tampered-real-os-system"] = replace_member(det, folder / "tampered-real-os-system.pt", "/data.pkl", Asm(4).program(
        Call(Global("os", "system"), (f"touch {marker}",))))
    with zipfile.ZipFile(det) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
        first_storage = next(n for n in zf.namelist() if "/data/" in n)
    out["tampered-real-truncated-pickle"] = replace_member(det, folder / "tampered-real-truncated-pickle.pt",
                                                           "/data.pkl", pkl[: len(pkl) // 2])
    out["tampered-real-short-storage"] = replace_member(det, folder / "tampered-real-short-storage.pt",
                                                        first_storage.split("/", 1)[1], b"\0" * 4)
    out.update(_bombs(folder, trees["detect"]))
    out.update(_wrong_types(folder, real_root, storages))
    return out


def _flatten(t: Tensor) -> None:
    """The same storage seen as a 2-d tensor: a weight of the wrong shape."""
    rest = math.prod(t.size[1:])
    t.size, t.stride = (t.size[0], rest), (rest, 1)


def laughs(levels: int = 8, width: int = 40) -> Memo:
    """A list holding one list ``width`` times, at each of ``levels`` levels: a few kB of pickle, a
    tree of ``width ** levels`` values to anything that walks it without noticing shared references."""
    node = Memo([1], 0)
    for i in range(1, levels + 1):
        node = Memo([node] + [Get(i - 1)] * (width - 1), i)
    return node


def _one_storage() -> Storages:
    s = Storages()
    s.data["0"] = struct.pack("<f", 1.0)
    return s


def _with(root: dict[str, Any], change: Any) -> dict[str, Any]:
    root = copy.deepcopy(root)
    change(root)
    return root


def _bombs(folder: Path, tree: nn.Module) -> dict[str, Path]:
    """Archives that inflate far beyond their size, and pickles that ask for huge tensors."""
    out = {}
    pkl, crc = deflate_zeros(3 * GIB)  # ~3 MB that inflate to 3 GiB
    out["bomb-data-pkl-3gib"] = raw_zip(folder / "bomb-data-pkl.pt", [("archive/data.pkl", pkl, 8, crc, 3 * GIB)])
    small = Asm(2).program({"model": None})
    out["bomb-storage-declared-3gib"] = raw_zip(folder / "bomb-storage-declared.pt", [
        ("archive/data.pkl", small, 0, zlib.crc32(small), len(small)), ("archive/data/0", b"\0" * 64, 0, 0, 3 * GIB)])
    big, crc = deflate_zeros(GIB + (1 << 20))
    out["bomb-storage-deflated-1gib"] = raw_zip(folder / "bomb-storage-deflated.pt", [
        ("archive/data.pkl", small, 0, zlib.crc32(small), len(small)), ("archive/data/0", big, 8, crc, GIB + (1 << 20))])
    out["bomb-many-entries"] = raw_zip(folder / "bomb-many-entries.pt", [
        ("archive/data.pkl", small, 0, zlib.crc32(small), len(small))] + [(f"archive/x/{i}", b"", 0, 0, 0)
                                                                         for i in range(120_000)])
    one = _one_storage()
    view = Tensor("0", "FloatStorage", 1, (10**10,), (0,))  # 40 GB of float32 as a zero-stride view of one float
    out["bomb-zero-stride-view"] = pickle_file(folder / "bomb-zero-stride-view.pt", {"model": NewObj(
        Global(TASKS, "DetectionModel"), (), {"_parameters": {"w": view}, "yaml": {}})}, one)
    out["bomb-numel-claims-1e12"] = pickle_file(folder / "bomb-numel.pt", {"model": NewObj(
        Global(TASKS, "DetectionModel"), (), {"_parameters": {"w": Tensor("0", "FloatStorage", 10**12, (10**12,), (1,))}})},
        one)
    # A real cvapps checkpoint (read by torch's weights-only unpickler once the checks pass) with one thing added.
    real = torch.load(SAMPLE_CKPT, map_location="cpu", weights_only=True)
    st = Storages()
    st.data["0"] = one.data["0"]
    base = {**real, "model": {k: st.tensor(v) for k, v in real["model"].items()}}

    def cvapps(name: str, **change: Any) -> None:
        out[name] = pickle_file(folder / f"{name}.pt", {**base, **change}, st)

    cvapps("cvapps-zero-stride-view", model={**base["model"], "extra": view})
    cvapps("cvapps-bytearray-3gib", metrics=Call(Global("builtins", "bytearray"), (3 * GIB,)))
    cvapps("cvapps-numel-claims-1e12", model={**base["model"], "extra": Tensor("0", "FloatStorage", 10**12, (10**12,),
                                                                                (1,))})
    cvapps("cvapps-laughs-in-metrics", metrics=laughs())
    st_laughs = Storages()
    out["laughs-in-train-args"] = pickle_file(folder / "laughs.pt", {**ultralytics_root(tree, st_laughs),
                                                                     "train_args": {"x": laughs()}}, st_laughs)
    return out


def _wrong_types(folder: Path, real_root: dict[str, Any], storages: Storages) -> dict[str, Path]:
    """Real models whose state is of the wrong type or shape, or not finite; cvapps checkpoints likewise."""
    out = {}

    def put(name: str, change: Any, st: Storages = storages) -> None:
        out[name] = pickle_file(folder / f"{name}.pt", _with(real_root, change), st)

    put("state-parameters-is-a-string", lambda r: r["model"].state.__setitem__("_parameters", "weights"))
    put("state-modules-is-a-list", lambda r: r["model"].state.__setitem__("_modules", [1, 2]))
    conv = lambda r: r["model"].state["_modules"]["model"].state["_modules"]["0"].state["_modules"]["conv"].state
    put("state-weight-is-a-string", lambda r: conv(r)["_parameters"].__setitem__("weight", "w"))
    put("state-weight-wrong-shape", lambda r: _flatten(conv(r)["_parameters"]["weight"].args[0]))
    put("state-weight-missing", lambda r: conv(r)["_parameters"].pop("weight"))
    put("state-weight-extra", lambda r: conv(r)["_parameters"].__setitem__("extra", conv(r)["_parameters"]["weight"]))
    put("model-is-a-string", lambda r: r.__setitem__("model", "DetectionModel"))
    put("model-is-a-list", lambda r: r.__setitem__("model", [1, 2, 3]))
    out["root-is-a-list"] = pickle_file(folder / "root-list.pt", [1, 2, 3])
    nan = Storages()
    nan.data = dict(storages.data)
    key = next(k for k in nan.data if len(nan.data[k]) >= 16)
    nan.data[key] = struct.pack("<f", float("nan")) * (len(nan.data[key]) // 4)
    out["ultralytics-nan-weights"] = pickle_file(folder / "ultralytics-nan.pt", real_root, nan)
    torch.save({"model": nn.Sequential(nn.Linear(2, 2))}, folder / "torch-sequential.pt")
    out["not-ultralytics-sequential"] = folder / "torch-sequential.pt"
    (folder / "text.pt").write_text("not a model\n")
    out["text-file"] = folder / "text.pt"
    (folder / "empty.pt").write_bytes(b"")
    out["empty-file"] = folder / "empty.pt"
    ckpt = {"format": "cvapps-checkpoint-v1", "task": "classify", "config": {}, "class_names": ["a"],
            "preprocessing": {"imgsz": 32, "resize": "stretch", "in_channels": 3}}
    for name, model in (("string", "weights"), ("list", [1, 2]), ("dict-of-strings", {"w": "x"})):
        torch.save({**ckpt, "model": model}, folder / f"cvapps-model-{name}.pt")
        out[f"cvapps-model-is-a-{name}"] = folder / f"cvapps-model-{name}.pt"
    return out
