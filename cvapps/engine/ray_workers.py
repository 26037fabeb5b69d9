"""The predictor actor of :mod:`cvapps.engine.ray_predict` (rows: see :mod:`cvapps.engine.ray_read`)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cvapps.engine.load import load_model
from cvapps.engine.manifest import encode_prediction
from cvapps.io.safe_write import write_bytes
from cvapps.structures import Frame


class PredictActor:
    """One model load per actor: the weights arrive once through Ray's object store (``weights``:
    ``[ObjectRef of the file's bytes]``, or None for a model name the loader resolves itself), and
    the same :class:`~cvapps.engine.predict.Predictor` as a single-process run predicts each batch."""

    def __init__(self, weights: list[Any] | None, model: str, device: str = "auto", batch: int = 8,
                 trust: bool = False, options: dict[str, Any] | None = None, part: str | None = None) -> None:
        import ray  # lazy: optional heavy package (this module only runs inside Ray workers)

        if weights is None:
            loaded = load_model(model, device=device, batch=batch, trust=trust)
        else:
            # The loaders read the whole file (torch, onnxruntime, OpenVINO), so the private copy is
            # removed as soon as the model is loaded: Ray ends actors without running __del__, and a
            # cleanup left to it would leave one model copy in the temp folder per actor.
            with tempfile.TemporaryDirectory(prefix="cvapps-model-") as tmp:
                local = Path(tmp) / Path(model).name  # same suffix: the loader dispatches on it
                write_bytes(local, ray.get(weights[0]))  # the one write primitive, in a fresh private folder
                loaded = load_model(str(local), device=device, batch=batch, trust=trust)
        # part: a multitask model seen as its detector or segmenter (`cvapps detect|segment --ray`)
        self.predictor = (loaded.task.as_part(loaded, part) if part else loaded).predictor()
        self.predictor.prefetch = 0  # Ray Data already overlaps reading with this actor's work
        self.options = dict(options or {})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["key"])
        is_frame = [batch["status"][i] == "frame" for i in range(n)]
        frames = [_frame(batch, i) for i in range(n) if is_frame[i]]
        predictions = iter(p for _, p in self.predictor.predict(frames, **self.options))
        width, height, encoded = np.zeros(n, np.int64), np.zeros(n, np.int64), np.empty(n, dtype=object)
        for i in range(n):
            encoded[i] = ""
            if is_frame[i]:
                height[i], width[i] = np.asarray(batch["image"][i]).shape[:2]
                encoded[i] = json.dumps(encode_prediction(next(predictions), self.predictor.class_names))
        out = {k: batch[k] for k in ("key", "order", "count", "status", "source", "stream", "frame_index", "index",
                                     "timestamp")}
        return {**out, "width": width, "height": height, "prediction": encoded}


def _frame(batch: dict[str, np.ndarray], i: int) -> Frame:
    """Row ``i`` of a decoded batch as the Frame a single-process source would have made."""
    frame_index = int(batch["frame_index"][i])
    return Frame(np.asarray(batch["image"][i]), str(batch["source"][i]), int(batch["index"][i]),
                 float(batch["timestamp"][i]), stream=str(batch["stream"][i]),
                 frame_index=frame_index if frame_index >= 0 else None)  # -1: a still image
