"""The one predictor: frames in, per-image predictions (in original pixels) out, for every task.

``Predictor`` batches frames, preprocesses each with its task's letterbox/resize, runs the model
under ``inference_mode`` (fp16 autocast + channels_last + pinned non-blocking copies on CUDA) and
maps outputs back with the task's postprocess. Per-stage wall time is kept in ``timings``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from cvapps.checkpoint import load_checkpoint
from cvapps.engine.device import images_to_device, resolve_device
from cvapps.structures import Frame
from cvapps.tasks.base import Task


class Predictor:
    """Runs a task model on frames.

    class_names: index -> name; category_ids: index -> COCO category id (None: index + 1).
    preprocessing: {"imgsz", "resize", "in_channels"} as stored in the checkpoint.
    """

    def __init__(self, task: Task, model: nn.Module, class_names: list[str], preprocessing: dict[str, Any],
                 device: torch.device | str = "auto", batch: int = 8, half: bool | None = None,
                 category_ids: list[int] | None = None) -> None:
        self.task, self.class_names = task, list(class_names)
        self.category_ids = list(category_ids) if category_ids else list(range(1, len(class_names) + 1))
        self.imgsz = int(preprocessing["imgsz"])
        self.in_channels = int(preprocessing.get("in_channels", 3))
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.batch = max(1, batch)
        self.half = self.device.type == "cuda" if half is None else half
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.timings: dict[str, float] = defaultdict(float)
        self.count = 0

    @classmethod
    def from_checkpoint(cls, path: str | Path, task: str | tuple[str, ...] | None = None, *,
                        device: str = "auto", batch: int = 8) -> "Predictor":
        """Build the model a cvapps checkpoint describes and load its weights."""
        from cvapps.config import config_from_dict
        from cvapps.tasks import get_task

        ckpt = load_checkpoint(path, task)
        cfg = config_from_dict(ckpt["config"], ["model.pretrained=false", "model.backbone_weights=null", "model.weights=null"])
        task_obj = get_task(ckpt["task"])
        model = task_obj.build_model(cfg, ckpt["class_names"])
        model.load_state_dict(ckpt["model"])
        return cls(task_obj, model, ckpt["class_names"], ckpt["preprocessing"], device, batch,
                   category_ids=ckpt.get("category_ids"))

    def _run(self, frames: list[Frame], options: dict[str, Any]) -> list[Any]:
        t0 = time.perf_counter()
        prepared = [self.task.preprocess(f.image, self.imgsz, self.in_channels) for f in frames]
        arrays = np.stack([p[0] for p in prepared])
        images = torch.from_numpy(arrays).permute(0, 3, 1, 2)
        t1 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
            outputs = self.model(images_to_device(images, self.device))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        results = self.task.postprocess(outputs, [p[1] for p in prepared], **options)
        t3 = time.perf_counter()
        self.timings["preprocess"] += t1 - t0
        self.timings["infer"] += t2 - t1
        self.timings["postprocess"] += t3 - t2
        self.count += len(frames)
        return results

    def predict(self, frames: Iterable[Frame], **options: Any) -> Iterator[tuple[Frame, Any]]:
        """Yield ``(frame, prediction)`` in input order; ``options`` go to the task's postprocess
        (e.g. ``conf``, ``iou`` for detectors, ``topk`` for classification)."""
        pending: list[Frame] = []
        it = iter(frames)
        while True:
            t0 = time.perf_counter()
            frame = next(it, None)
            self.timings["read"] += time.perf_counter() - t0
            if frame is not None:
                pending.append(frame)
            if pending and (frame is None or len(pending) >= self.batch):
                yield from zip(pending, self._run(pending, options))
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
