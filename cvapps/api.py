"""The public Python API: ``cvapps.load`` -> :class:`Model`, ``Model.predict`` -> :class:`~cvapps.results.Result`,
``Model.val``, ``Model.export`` and ``cvapps.train``.

::

    import cvapps
    model = cvapps.load("runs/yolo_shapes/best.pt")         # or an exported .onnx, or yolov8n.pt
    for r in model.predict("images/", stream=True):          # lazily, one Result per frame
        print(r.source, r.boxes, r.scores, r.labels)         # xyxy original pixels
    model.predict_ray("images/", "runs/ray", actors=4)       # on Ray Data into COCO files, resumable
    run = cvapps.train("configs/classify_shapes.yaml", overrides={"train.epochs": 1})

Everything goes through the library's one home for each job: models are loaded by
:func:`cvapps.engine.load.load_model`, frames are read by :func:`cvapps.io.sources.open_source`
and predicted by the one :class:`~cvapps.engine.predict.Predictor`, metrics come from
:func:`cvapps.engine.evaluate.evaluate_checkpoint`, training from :func:`cvapps.engine.train.train`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
from PIL import Image

from cvapps.analytics import TRACK_CONF, Analytics, AnalyticsPredictor, make_analytics
from cvapps.engine.evaluate import evaluate_checkpoint
from cvapps.engine.load import LoadedModel, LoadOptions, load_on_runtime
from cvapps.engine.predict import Predictor, check_options
from cvapps.engine.slicing import SliceOptions, SlicedPredictor, slice_options
from cvapps.engine.ray_predict import RayCluster, RayModel, RayReport, predict_files
from cvapps.engine.train import TrainResult
from cvapps.engine.train import train as _train
from cvapps.errors import CvappsError
from cvapps.engine.runtime import default_runtime
from cvapps.export import export_onnx
from cvapps.export_openvino import OpenVinoExportOptions, export_openvino
from cvapps.io.sources import Source, SourceOptions, open_source
from cvapps.results import Result
from cvapps.structures import Frame
from cvapps.tasks import load_config

#: ``predict`` keywords that go to the source, as :class:`~cvapps.io.sources.SourceOptions` (the rest
#: go to the task's postprocess: ``conf``, ``iou``, ``max_det`` for detectors, ``topk`` for classifiers).
SOURCE_OPTIONS = ("vid_stride", "shard", "buffer", "reconnect_s")
#: ``predict`` keywords for tracking and counting (:mod:`cvapps.analytics`).
ANALYTICS_OPTIONS = ("track", "track_buffer", "count_lines", "zones")
#: ``predict`` keywords for sliced inference (:mod:`cvapps.engine.slicing`).
SLICE_OPTIONS = ("slice", "slice_overlap", "slice_merge", "slice_full")
ARRAY_SOURCE = "<array>"


def overrides_list(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> list[str]:
    """Dotted config overrides as ``key=value`` strings (values written as JSON, which YAML reads back).

    Keys are dotted (``{"train.epochs": 1}``) or, as keyword arguments, use ``__`` for the dot
    (``train__epochs=1``); a path value is written as its string.
    """
    items = {**dict(overrides or {}), **{k.replace("__", "."): v for k, v in kwargs.items()}}
    return [f"{key}={json.dumps(os.fspath(v) if isinstance(v, os.PathLike) else v)}" for key, v in items.items()]


class Model:
    """A loaded model: ``predict`` (also ``model(source)``), ``val``, ``export``.

    names: class index -> name (segmenters: index 0 is the background; multitask models: the
    detection classes); task: its task's name (classify, segment, faster_rcnn, yolo, ultralytics or
    multitask: its Results carry boxes, mask and present classes from one forward, :meth:`part` for
    one of them); parts: what its predictions carry; category_ids: class index -> COCO category id
    (used by :meth:`Result.to_coco`).
    """

    def __init__(self, loaded: LoadedModel, trust: bool = False, slicing: SliceOptions | None = None) -> None:
        self.loaded = loaded
        self.path = loaded.source
        self._trust = trust
        self.slicing = slicing  # every predict sliced so, unless it says otherwise (load(slice=...))
        self._predictor: Predictor | None = None

    @property
    def names(self) -> list[str]:
        return list(self.loaded.class_names)

    def part(self, name: str) -> "Model":
        """This model as the model of the command ``name``: detect (a detector), segment (a segmenter)
        or classify (a classifier), as ``cvapps NAME`` takes it: a multitask model gives its boxes or
        masks, a model that is already one is returned as it is, any other is a one-line
        CheckpointError (the task declares what it serves: ``Task.commands``, ``Task.as_part``)."""
        loaded = self.loaded.task.as_part(self.loaded, name)
        return self if loaded is self.loaded else Model(loaded, self._trust, self.slicing)

    @property
    def parts(self) -> frozenset[str]:
        """The parts its predictions carry ("detections", "semantic", "classification", "presence"; a
        multitask model: those of its heads)."""
        return self.loaded.task.parts_of(self.loaded.raw_config)

    @property
    def task(self) -> str:
        return self.loaded.task.name

    @property
    def runtime(self) -> str:
        """The engine that runs it: ``torch``, ``onnxruntime`` or ``openvino`` (what ``auto`` chose)."""
        return self.loaded.runtime

    @property
    def predictor(self) -> Predictor:
        """The :class:`~cvapps.engine.predict.Predictor` behind ``predict`` (made once, on first use);
        a :class:`~cvapps.engine.slicing.SlicedPredictor` around it when loaded with ``slice``."""
        return self._sliced(self.slicing)

    def _sliced(self, slicing: SliceOptions | None) -> Predictor:
        if self._predictor is None:
            self._predictor = self.loaded.predictor()
        return self._predictor if slicing is None else SlicedPredictor(self._predictor, slicing)  # type: ignore[return-value]

    @property
    def category_ids(self) -> list[int]:
        return list(self.predictor.category_ids)

    @overload
    def predict(self, source: Any, stream: Literal[False] = ..., *, rgb: bool = ...,
                **options: Any) -> list[Result]: ...

    @overload
    def predict(self, source: Any, stream: Literal[True], *, rgb: bool = ...,
                **options: Any) -> Iterator[Result]: ...

    def predict(self, source: Any, stream: bool = False, *, rgb: bool = False,
                **options: Any) -> list[Result] | Iterator[Result]:
        """Predict every frame of ``source``; ``Result``s come back in input order.

        source: anything :func:`~cvapps.io.sources.open_source` takes (image path, folder, glob,
        ``.txt`` list, list of paths, video, webcam index, stream URL), a ``PIL.Image`` (any mode;
        converted from RGB), a numpy image (HxWx3 uint8, **BGR** as OpenCV reads it, or RGB with
        ``rgb=True``; or HxW gray) or a list of images. rgb: the arrays are RGB (as PIL, matplotlib
        and most notebooks hold them), not BGR; only for arrays. stream=True returns a generator (frames are read,
        predicted and handed over one batch at a time, so memory stays flat on long videos);
        stream=False returns a list (so never ends on a webcam or stream URL: use stream=True). options: ``vid_stride``, ``shard``, ``buffer``, ``reconnect_s``
        go to the source, the rest to the task (``conf``, ``iou`` for detectors and multitask
        models, ``presence_conf`` for a multitask model's present classes, ``topk``...).
        Detectors also take ``track`` (``"bytetrack"`` / ``"botsort"``: ``r.track_ids``; ``conf``
        then defaults to 0.1, the tracker's low threshold), ``track_buffer`` (frames, or ``"2s"``),
        ``count_lines`` ([(x1, y1, x2, y2)] or ``"x1,y1,x2,y2"`` strings) and ``zones`` (polygons
        [(x, y), ...] or ``"x1,y1,x2,y2,x3,y3,..."`` strings; a single string, line or polygon is one):
        ``r.counts`` (see :mod:`cvapps.analytics`); trackers start afresh on each call.
        Detectors and segmenters take ``slice`` (pixels, or ``"auto"``: the model's input size),
        ``slice_overlap`` (0.2), ``slice_merge`` (``"nms"`` or ``"nmm"``) and ``slice_full`` (also one
        whole-image pass): each frame predicted in overlapping slices, batched, merged back into
        original pixels (:mod:`cvapps.engine.slicing`); ``slice=None`` turns off a ``load(slice=...)``.
        Unreadable files are skipped and reported on stderr, as by the CLI. Out-of-range options
        (``conf=nan``, ``iou=5``, ``topk=0``) are one-line CvappsErrors, as the CLI's.
        """
        source_options = {k: options.pop(k) for k in SOURCE_OPTIONS if k in options}
        sliced = {k: options.pop(k) for k in SLICE_OPTIONS if k in options}
        slicing = self.slicing
        if sliced:
            size = sliced.get("slice", self.slicing if self.slicing is not None else "auto")
            slicing = slice_options(size, sliced.get("slice_overlap"), sliced.get("slice_merge"), sliced.get("slice_full"))
        predictor = self._sliced(slicing)  # refuses a classifier before any frame is read
        analytics = make_analytics(self.names, self.loaded.task.tracks,
                                   **{k: options.pop(k) for k in ANALYTICS_OPTIONS if k in options})
        if analytics is not None and analytics.tracker is not None:
            options.setdefault("conf", TRACK_CONF)
        check_options(options)  # the CLI's check: a bad conf/iou/topk fails here, not mid-stream
        frames = _open_frames(source, source_options, rgb=bool(rgb))  # opened now: a bad source fails here, not later
        results = self._results(frames, options, analytics, predictor)
        return results if stream else list(results)

    __call__ = predict

    def predict_ray(self, source: Any, out: str | os.PathLike[str], *, address: str | None = None, actors: int = 1,
                    save_jsonl: bool = False, **options: Any) -> RayReport:
        """Predict ``source`` on Ray Data into files in ``out``, as ``cvapps classify|segment|detect SOURCE
        --ray [ADDRESS] --ray-actors N --out OUT`` (``pip install "cvapps[ray]"``; see
        :func:`cvapps.engine.ray_predict.run_ray`): ``predictions.csv`` for classifiers, else
        ``predictions.json`` + ``predictions_coco.json`` (a multitask model: boxes and masks under each
        frame's one image id), and ``predictions.jsonl`` with save_jsonl.
        Resumable: calling it again after a crash predicts only what ``OUT/ray_manifest.jsonl`` lacks.
        options: ``vid_stride`` for the source, the rest for the task (``conf``, ``iou``, ``topk``...).
        Returns the run's report (``processed``, ``predicted``, ``skipped``, ``interrupted``).
        """
        source_options = SourceOptions(vid_stride=int(options.pop("vid_stride", 1)))
        if self.slicing is not None or any(options.get(k) for k in SLICE_OPTIONS):
            raise CvappsError("predict_ray does not slice: use predict(..., slice=...)")
        check_options(options)
        model = RayModel(str(self.path), options, self.loaded.batch, self.loaded.device, self._trust,
                         self.loaded.task.part)
        return predict_files(model, self.loaded, source, out, save_jsonl=save_jsonl,
                             cluster=RayCluster(address, actors), options=source_options, progress=False)

    def _results(self, frames: Iterable[Frame], options: dict[str, Any],
                 analytics: Analytics | None = None, base: Predictor | None = None) -> Iterator[Result]:
        names, ids = self.names, self.category_ids
        base = base if base is not None else self.predictor
        predictor = base if analytics is None else AnalyticsPredictor(base, analytics)
        with frames if isinstance(frames, Source) else contextlib.nullcontext():
            for frame, prediction in predictor.predict(frames, **options):
                yield Result(frame.source, frame.index, frame.timestamp, frame.image, prediction, names, ids,
                             frame.stream, frame.frame_index)
            for path, reason in getattr(frames, "skipped", []):
                print(f"skipped {path}: {reason}", file=sys.stderr)

    def val(self, data: str | os.PathLike[str] | None = None, *, out_dir: str | os.PathLike[str] | None = None,
            batch: int | None = None, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, float]:
        """Metrics on the val split of the model's dataset (``data``: another dataset root), as ``cvapps val``.

        overrides / ``key__sub=value`` keywords: config overrides (see :func:`overrides_list`);
        out_dir: also write ``val_metrics.json`` and plots there. Returns ``{"metric": value}``.
        """
        given = {**({"data.root": data} if data is not None else {}), **dict(overrides or {})}
        items = overrides_list(given, **kwargs)
        if self.loaded.device != "auto" and not any(item.startswith("train.device=") for item in items):
            items.append(f"train.device={json.dumps(self.loaded.device)}")  # evaluate where the model was loaded
        return evaluate_checkpoint(self.path, items, Path(out_dir) if out_dir is not None else None,
                                   trust=self._trust, batch=batch or self.loaded.batch)

    def export(self, format: str = "onnx", *, out: str | os.PathLike[str] | None = None, opset: int = 17,
               dynamic_batch: bool = True, check: bool = True) -> Path:
        """Export to ONNX or an fp32 OpenVINO folder (checked against PyTorch, as ``cvapps export``); returns
        the file or folder. INT8: :func:`cvapps.export_openvino.export_openvino`.

        out: the ``.onnx`` path or the folder (default: next to the checkpoint).
        """
        if str(format).lower() not in ("onnx", "openvino"):
            raise CvappsError(f"export: unknown format {format!r} (supported: onnx, openvino)")
        if Path(self.path).suffix.lower() == ".onnx" or Path(self.path).is_dir():
            kind = "an ONNX file" if Path(self.path).suffix.lower() == ".onnx" else "an OpenVINO model folder"
            raise CvappsError(f"export: {self.path} is already {kind}")
        if str(format).lower() == "openvino":
            return export_openvino(self.path, out, OpenVinoExportOptions(check=check)).folder
        return export_onnx(self.path, out, opset=opset, dynamic_batch=dynamic_batch, check=check).path

    def __repr__(self) -> str:
        return f"Model({self.path!r}, task={self.task!r}, names={self.names})"


def load(path_or_name: str | os.PathLike[str], device: str = "auto", *, batch: int = 8, trust: bool = False,
         imgsz: int | None = None, runtime: str | None = None,
         slice: SliceOptions | int | str | None = None) -> Model:
    """Load a cvapps checkpoint (``.pt``), a ``cvapps export`` ONNX file or OpenVINO folder, or a native
    ultralytics model (``.pt`` file or published name, ``.yaml``) as a :class:`Model`.

    device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``; batch: frames per forward pass;
    trust: allow a full unpickle of an ultralytics file that needs one; imgsz: the input size to
    predict at (a multiple of 32; refused for an export, whose size is fixed); slice: predict every
    frame in slices of this size (a :class:`~cvapps.engine.slicing.SliceOptions`, pixels or ``"auto"``;
    see :meth:`Model.predict`); runtime: ``torch``, ``onnxruntime``, ``openvino`` or ``auto`` (None: ``$CVAPPS_RUNTIME``,
    else each file its own: :mod:`cvapps.engine.runtime`). Failures are one-line CvappsErrors.
    """
    runtime = runtime if runtime is not None else default_runtime()
    loaded = load_on_runtime(path_or_name, runtime, LoadOptions(None, device, batch, trust, None, imgsz))
    return Model(loaded, trust=trust, slicing=slice_options(slice))


def train(config: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None, *, progress: bool = True,
          trust: bool = False, callbacks: Iterable[Any] = (), **kwargs: Any) -> TrainResult:
    """Train from a YAML config, as ``cvapps train CONFIG key=value ...``.

    overrides: ``{"train.epochs": 1, "data.root": "my_data"}``; or keywords with ``__`` for the dot:
    ``train(cfg, train__epochs=1, out="runs/x")``. Returns the run: ``out``, ``best`` / ``last``
    (checkpoint paths), ``best_metric`` and ``history`` (one metrics dict per epoch).
    callbacks: training hooks (subclasses of :class:`cvapps.engine.hooks.HookBase`, e.g.
    ``EarlyStopping(patience=5)``: ``before_train``, ``before_epoch``, ``after_step``, ``after_epoch``,
    ``after_train`` with the trainer's state; setting ``trainer.stop`` ends training after the epoch),
    or ``fn(run, metrics)`` / objects with ``on_epoch_end(run, metrics)``, once per epoch.
    """
    cfg = load_config(config, overrides_list(overrides, **kwargs))
    return _train(cfg, progress=progress, trust=trust, callbacks=callbacks)


def _open_frames(source: Any, source_options: dict[str, Any], *, rgb: bool = False) -> Iterable[Frame]:
    """Frames of in-memory images (arrays, PIL images, a list of them) or of anything ``open_source``
    takes (an open Source). rgb: the arrays are RGB."""
    if _in_memory(source):
        return [Frame(_as_bgr(source, rgb), ARRAY_SOURCE, 0, stream=ARRAY_SOURCE)]
    if isinstance(source, (list, tuple)) and source and all(_in_memory(s) for s in source):
        images = list(source)
        return (Frame(_as_bgr(a, rgb), ARRAY_SOURCE, i, stream=ARRAY_SOURCE) for i, a in enumerate(images))
    if isinstance(source, (list, tuple)) and any(_in_memory(s) for s in source):
        raise CvappsError("predict: a list must hold only images (arrays, PIL images) or only paths, not both")
    if rgb:
        raise CvappsError("predict: rgb=True is for numpy arrays; files and streams are read in their own colours")
    return open_source(source, SourceOptions(**source_options))


def _in_memory(source: Any) -> bool:
    return isinstance(source, (np.ndarray, Image.Image))


def _as_bgr(image: np.ndarray | Image.Image, rgb: bool = False) -> np.ndarray:
    """HxWx3 BGR uint8: a PIL image (any mode) through RGB; an RGB array (``rgb``) reversed; an HxW
    gray array repeated to 3 channels; anything else is refused."""
    if isinstance(image, Image.Image):
        image, rgb = np.asarray(image.convert("RGB")), True  # PIL images are RGB by definition
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) \
            or 0 in image.shape:
        order = "RGB" if rgb else "BGR"
        raise CvappsError(f"predict: arrays must be HxWx3 {order} uint8 (or HxW gray), got {image.dtype} {image.shape}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif rgb:
        image = image[:, :, ::-1]  # OpenCV's order, which every model of cvapps is fed
    return np.ascontiguousarray(image)
