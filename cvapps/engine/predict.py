"""The one predictor: frames in, per-image predictions (in original pixels) out, for every task.

``Predictor`` batches frames, preprocesses each with its task's letterbox/resize, runs the model
under ``inference_mode`` (fp16 autocast + pinned non-blocking copies on CUDA) and maps outputs
back with the task's postprocess. Per-stage wall time is kept in ``timings``.

Memory layout: decided once per predictor by :func:`~cvapps.engine.device.choose_memory_format`
(channels_last on CUDA; on the CPU the task's measured choice, ``Task.cpu_channels_last``) and
read back as ``predictor.memory_format``, which the benchmarks use so they compare like with like.
"""

from __future__ import annotations

import math
import numbers
import operator
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cvapps.engine.device import choose_memory_format, images_to_device, resolve_device
from cvapps.engine.inference_form import inference_form
from cvapps.errors import CvappsError, shorten
from cvapps.formats.names import check_class_names
from cvapps.structures import Frame
from cvapps.tasks.base import Task
from cvapps.threads import QUEUE_BYTES, Producer

# option -> (lowest, highest, lowest allowed itself); conf, iou, presence_conf are fractions, the others counts.
_FRACTIONS = {"conf": (0.0, 1.0, True), "presence_conf": (0.0, 1.0, True), "iou": (0.0, 1.0, False)}
_COUNTS = ("max_det", "topk")


def check_options(options: Mapping[str, Any], cli: bool = False) -> None:
    """The one check of the postprocess options (``conf``, ``iou``, ``presence_conf``, ``max_det``,
    ``topk``), for the CLI (``cli``: name them ``--conf``...) and the API alike: an out-of-range,
    NaN or non-numeric value is a one-line CvappsError. None (the task's default) and options of
    other names pass."""
    for name, value in options.items():
        if value is None or (name not in _FRACTIONS and name not in _COUNTS):
            continue
        shown = f"--{name.replace('_', '-')}" if cli else name
        if name in _COUNTS:
            try:
                ok = not isinstance(value, bool) and operator.index(value) >= 1
            except TypeError:
                ok = False
            if not ok:
                raise CvappsError(f"{shown} must be an integer >= 1, got {shorten(value)}")
            continue
        low, high, closed = _FRACTIONS[name]
        number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
        if not (math.isfinite(number) and (low <= number if closed else low < number) and number <= high):
            span = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g}]"
            raise CvappsError(f"{shown} must be a number in {span}, got {shorten(value)}")


def coco_category_ids(category_ids: list[int] | None, num_classes: int) -> list[int]:
    """Class index -> COCO category id: the given ids, or index + 1 when there are none."""
    return list(category_ids) if category_ids else list(range(1, num_classes + 1))


@dataclass
class _Batch:
    """frames, their uint8 (B, C, H, W) network-input tensor and letterbox metas (one per frame);
    positions: where each frame stands in the group of frames it was prepared with."""

    frames: list[Frame]
    images: torch.Tensor
    metas: list[Any]
    positions: list[int]
    device_images: torch.Tensor | None = None  # CUDA only: copy in flight on the side stream
    ready: Any = None  # CUDA only: event recorded after that copy


@dataclass(frozen=True)
class PredictOptions:
    """How a :class:`Predictor` runs its model.

    device: "auto" (CUDA when there is one), "cpu", "cuda", "cuda:1", ... or a torch.device.
    batch: frames per forward. half: fp16 autocast (None: on CUDA only).
    prefetch: batches prepared ahead by the prefetch thread (0: inline).
    channels_last: convert the model to the memory layout it runs fastest in (False: leave a model
      under training as it is and feed it NCHW).
    fuse: run the model's inference form (BatchNorms folded, convolutions packed on the CPU;
      engine/inference_form.py); False runs the model as it is (one under training).
    """

    device: torch.device | str = "auto"
    batch: int = 8
    half: bool | None = None
    prefetch: int = 2
    channels_last: bool = True
    fuse: bool = True


class Predictor:
    """Runs a task model on frames.

    class_names: index -> name; category_ids: index -> COCO category id (None: index + 1).
    preprocessing: {"imgsz", "resize", "in_channels"} as stored in the checkpoint (and "fixed_size": True
    for a model that takes only imgsz x imgsz inputs).
    """

    def __init__(self, task: Task, model: nn.Module, class_names: list[str], preprocessing: dict[str, Any],
                 options: PredictOptions | None = None, *, category_ids: list[int] | None = None) -> None:
        opts = options if options is not None else PredictOptions()
        # names reach line-based files (tracks/labels.txt, CSV rows): one place refuses unsafe ones
        self.task, self.class_names = task, check_class_names(class_names)
        self.prefetch = max(0, opts.prefetch)
        self.category_ids = coco_category_ids(category_ids, len(class_names))
        self.imgsz = int(preprocessing["imgsz"])
        self.in_channels = int(preprocessing.get("in_channels", 3))
        self.device = resolve_device(opts.device)
        self.batch = max(1, opts.batch)
        self.half = self.device.type == "cuda" if opts.half is None else opts.half
        # Rect letterbox (less padding) where the task's models take any multiple of rect_stride, unless
        # this one only takes its export-time input size (preprocessing "fixed_size": an ONNX export).
        self.rect = bool(task.rect_stride) and not preprocessing.get("fixed_size", False)
        # fuse and channels_last are independent: a model under training (evaluate.py) is run as it is
        # and fed NCHW, since its optimizer state keeps its layout.
        model = model.to(self.device).eval()
        self.model = inference_form(model, self.device) if opts.fuse else model
        self.memory_format = (choose_memory_format(self.model, self.device, task.cpu_channels_last)
                              if opts.channels_last else torch.contiguous_format)
        # Side stream for host-to-device copies, so they overlap compute (see _prepare).
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.timings: dict[str, float] = defaultdict(float)
        self.count = 0

    # -- stages ----------------------------------------------------------------------------------
    def _prepare(self, frames: list[Frame]) -> list[_Batch]:
        """Preprocess on the CPU: letterbox/resize each frame, stack to uint8 (B, C, H, W).

        With rect letterboxing, frames of different shapes (a folder of portrait and landscape
        photos) form one sub-batch per input shape instead of being padded to a common square.
        On CUDA each sub-batch is pinned and copied on a side stream right here (in the prefetch
        thread), so the host-to-device copy of batch k+1 overlaps the forward pass of batch k.
        """
        t0 = time.perf_counter()
        prepared = [self.task.preprocess(f.image, self.imgsz, self.in_channels, rect=self.rect) for f in frames]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, (array, _) in enumerate(prepared):
            by_shape.setdefault(array.shape, []).append(i)
        batches = []
        for idxs in by_shape.values():
            images = torch.from_numpy(np.stack([prepared[i][0] for i in idxs])).permute(0, 3, 1, 2)
            batch = _Batch([frames[i] for i in idxs], images, [prepared[i][1] for i in idxs], idxs)
            if self._copy_stream is not None:
                batch.images = images.contiguous().pin_memory()
                with torch.cuda.stream(self._copy_stream):
                    batch.device_images = batch.images.to(self.device, non_blocking=True)
                    batch.ready = torch.cuda.Event()
                    batch.ready.record(self._copy_stream)
            batches.append(batch)
        self.timings["preprocess"] += time.perf_counter() - t0
        return batches

    def _infer_all(self, batches: list[_Batch], options: dict[str, Any]) -> list[tuple[Frame, Any]]:
        """Run every sub-batch; ``(frame, prediction)`` pairs back in input order."""
        out: list[Any] = [None] * sum(len(b.frames) for b in batches)
        for batch in batches:
            for pos, frame, result in zip(batch.positions, batch.frames, self._infer(batch, options)):
                out[pos] = (frame, result)
        return out

    def _infer(self, batch: _Batch, options: dict[str, Any]) -> list[Any]:
        t1 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
            if batch.device_images is not None and batch.ready is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(batch.ready)
                batch.device_images.record_stream(stream)  # allocated on the copy stream, used here
                x = batch.device_images.to(dtype=torch.float32, memory_format=self.memory_format).div_(255)
            else:
                x = images_to_device(batch.images, self.device, self.memory_format)
            outputs = self.model(x)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        results = self.task.postprocess(outputs, batch.metas, **options)
        t3 = time.perf_counter()
        self.timings["infer"] += t2 - t1
        self.timings["postprocess"] += t3 - t2
        self.count += len(batch.frames)
        return results

    def _run(self, frames: list[Frame], options: dict[str, Any]) -> list[Any]:
        return [result for _, result in self._infer_all(self._prepare(frames), options)]

    def _batches(self, frames: Iterable[Frame], stop: threading.Event) -> Iterator[list[_Batch]]:
        """Prefetch thread: read frames, group them into batches, preprocess, hand over in order."""
        for frames_batch in self._groups(frames, stop):
            yield self._prepare(frames_batch)

    def predict(self, frames: Iterable[Frame], **options: Any) -> Iterator[tuple[Frame, Any]]:
        """Yield ``(frame, prediction)`` in input order; ``options`` go to the task's postprocess
        (e.g. ``conf``, ``iou`` for detectors, ``topk`` for classification).

        Reading and preprocessing run one batch ahead in a prefetch thread (``prefetch`` batches
        queued), so decode/letterbox overlap the forward pass; errors there are re-raised here.
        Out-of-range options are a one-line CvappsError (:func:`check_options`).
        """
        check_options(options)
        if self.prefetch <= 0:
            yield from self._predict_inline(frames, options)
            return
        stage: Producer[list[_Batch]] = Producer(
            lambda stop: self._batches(frames, stop), maxsize=self.prefetch, name="cvapps-prefetch",
            max_bytes=QUEUE_BYTES, weigh=lambda batches: sum(f.image.nbytes for b in batches for f in b.frames))
        try:
            for batches in stage:
                yield from self._infer_all(batches, options)
        finally:
            stage.close(join_s=2.0)

    def _predict_inline(self, frames: Iterable[Frame], options: dict[str, Any]) -> Iterator[tuple[Frame, Any]]:
        for frames_batch in self._groups(frames):
            yield from zip(frames_batch, self._run(frames_batch, options))

    def _groups(self, frames: Iterable[Frame], stop: threading.Event | None = None) -> Iterator[list[Frame]]:
        """Frames in lists of ``batch`` (the last may be shorter); time spent reading is counted."""
        pending: list[Frame] = []
        it = iter(frames)
        while stop is None or not stop.is_set():
            t0 = time.perf_counter()
            frame = next(it, None)
            self.timings["read"] += time.perf_counter() - t0
            if frame is not None:
                pending.append(frame)
            if pending and (frame is None or len(pending) >= self.batch):
                yield pending
                pending = []
            if frame is None:
                return

    def __call__(self, image: np.ndarray, **options: Any) -> Any:
        """Predict one BGR uint8 image."""
        return self._run([Frame(image, "<array>")], options)[0]

    def timing_report(self) -> str:
        n = max(1, self.count)
        parts = [f"{stage} {1000 * t / n:.1f}" for stage, t in self.timings.items()]
        return f"{self.count} images; ms/image: " + ", ".join(parts)
