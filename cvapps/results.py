"""``Result``: one frame's prediction, as :meth:`cvapps.Model.predict` returns it, with its conversions.

A Result keeps the frame identity (``source``, ``index``, ``timestamp``), the original image (HxWx3
BGR uint8) and the :class:`~cvapps.structures.Prediction` (its parts in original image pixels). The
properties read its parts: ``boxes``, ``scores``, ``labels``, ``track_ids``, ``counts`` (detections),
``label``, ``score`` (classification), ``mask``, ``mask_names`` (semantic mask) and ``present`` /
``presence`` (a multitask model's presence head); a multitask Result has several. ``names`` maps a
class index to its name; ``name`` (classification), ``label_names`` (detections) and
``present_names`` (presence) are the names of what was found. Colour order: ``image`` and
``plot()`` are BGR, as OpenCV uses them (``plot(rgb=True)`` for matplotlib or PIL). Conversions reuse
the library's one home for each format: drawing (:mod:`cvapps.io.draw`), atomic image writing
(:mod:`cvapps.io.images`), and the parts' own JSON and COCO forms (:mod:`cvapps.structures.prediction`:
the same as the JSON lines and ``predictions.json``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvapps.errors import CvappsError
from cvapps.io.draw import draw_prediction
from cvapps.io.images import write_image
from cvapps.io.show import show_image
from cvapps.structures import Prediction
from cvapps.structures.prediction import PARTS, class_name

SUPERVISION_HINT = "pip install 'cvapps[supervision]'"
HEADS = {"detections": "detect", "semantic": "segment", "presence": "classify"}  # part -> multitask head


@dataclass
class Result:
    """One frame's prediction.

    source: file path, ``"clip.mp4#frame=000123"`` for video frames (a display name: read
    ``stream`` / ``frame_index``), ``"<array>"`` for arrays;
    index: position in the source; timestamp: seconds from the start of a video (0.0 for images);
    image: the original HxWx3 BGR uint8 frame; prediction: its parts in original pixels;
    names: class index -> name; category_ids: class index -> COCO category id (the model's);
    stream: the video/stream/camera the frame comes from (a still image's path: the default,
    ``source``); frame_index: its number in that stream, None for still images (as the
    :class:`~cvapps.structures.Frame` it was predicted from).
    """

    source: str
    index: int
    timestamp: float
    image: np.ndarray
    prediction: Prediction
    names: list[str]
    category_ids: list[int] = field(default_factory=list)
    stream: str = ""
    frame_index: int | None = None

    def __post_init__(self) -> None:
        if not self.stream:  # a still image (or an array) is its own stream
            self.stream = self.source

    # -- convenience views ---------------------------------------------------------------------
    def _part(self, name: str, what: str) -> Any:
        """The prediction's part ``name``; a one-line CvappsError naming what it has when it is missing."""
        part = getattr(self.prediction, name)
        if part is None:
            have = self.prediction.parts()
            if len(have) > 1 and name in HEADS:
                raise CvappsError(f"Result.{what}: this multitask model has no {HEADS[name]} head")
            kinds = " + ".join(type(p).__name__ for p in have.values()) or "empty prediction"
            raise CvappsError(f"Result.{what}: only for {PARTS[name].__name__} results, this is a {kinds}")
        return part

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float32 xyxy boxes in original image pixels (detectors and multitask models)."""
        return self._part("detections", "boxes").boxes.numpy()

    @property
    def scores(self) -> np.ndarray:
        """(N,) float32 confidences in [0, 1] (detectors and multitask models)."""
        return self._part("detections", "scores").scores.numpy()

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class indices into ``names`` (detectors and multitask models: of the boxes)."""
        return self._part("detections", "labels").labels.numpy()

    @property
    def label_names(self) -> list[str]:
        """The class name of each box, parallel to ``boxes`` (detectors and multitask models)."""
        return [self._name(k) for k in self._part("detections", "label_names").labels.tolist()]

    @property
    def track_ids(self) -> np.ndarray | None:
        """(N,) int64 track ids parallel to ``boxes`` when predicted with ``track=``, else None."""
        return self._part("detections", "track_ids").track_ids

    @property
    def counts(self) -> dict[str, Any] | None:
        """This frame's line totals and zone occupancy (``{"lines": [...], "zones": [...]}``, see
        :mod:`cvapps.analytics.counting`) when predicted with ``count_lines=`` / ``zones=``, else None."""
        self._part("detections", "counts")  # counting needs boxes: a detector's result only
        counts = self.prediction.counts
        return counts.to_json() if counts is not None else None

    @property
    def label(self) -> int:
        """The predicted class index (classifiers only); ``names[label]`` is its name."""
        return self._part("classification", "label").label

    @property
    def name(self) -> str:
        """The predicted class's name (classifiers only): ``names[label]``."""
        return self._name(self._part("classification", "name").label)

    @property
    def score(self) -> float:
        """The predicted class's probability (classifiers only)."""
        return self._part("classification", "score").score

    @property
    def mask(self) -> np.ndarray:
        """HxW uint8 class index per pixel, original image size, 0 = background (segmenters and
        multitask models); ``mask_names[v]`` names the value v."""
        return self._part("semantic", "mask").mask

    @property
    def mask_names(self) -> list[str]:
        """Mask value -> class name: ``names`` for a segmenter (background first), ``["background",
        *names]`` for a multitask model (its ``names`` are the detection classes)."""
        semantic = self.prediction.semantic
        return semantic.names_for(self.names) if semantic is not None else self.names

    @property
    def present(self) -> np.ndarray:
        """(M,) int64 indices into ``names`` of the classes the presence head finds in the image
        (multitask models with a classify head; probability >= ``presence_conf``, default 0.5)."""
        return self._part("presence", "present").labels

    @property
    def present_names(self) -> list[str]:
        """The names of the classes in :attr:`present` (multitask models with a classify head)."""
        return [self._name(k) for k in self._part("presence", "present_names").labels.tolist()]

    @property
    def presence(self) -> np.ndarray:
        """(K,) float32 presence probability of every class in ``names`` (multitask models with a classify head)."""
        return self._part("presence", "presence").scores

    # -- outputs -------------------------------------------------------------------------------
    def plot(self, *, rgb: bool = False) -> np.ndarray:
        """A copy of ``image`` with the prediction drawn, as the annotated outputs: HxWx3 uint8 in
        **BGR** order (OpenCV's: ``cv2.imshow``, ``cv2.imwrite``); ``rgb=True`` for matplotlib or PIL."""
        drawn = draw_prediction(self.image, self.prediction, self.names)
        return np.ascontiguousarray(drawn[:, :, ::-1]) if rgb else drawn

    def show(self, *, wait: bool = True) -> None:
        """Show :meth:`plot`: inline in a Jupyter notebook, else in an OpenCV window (``wait``: until a
        key is pressed), else a matplotlib figure; on a machine without a screen a one-line note on
        stderr says so (nothing is raised)."""
        show_image(self.plot(), self.source, wait=wait)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`plot` to ``path`` atomically (format from the extension: .jpg, .png, ...)."""
        write_image(path, self.plot())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``source``, ``index``, ``timestamp`` and the prediction's one JSON form
        (:meth:`~cvapps.structures.Prediction.to_json`, as the JSON lines hold it): the keys of each
        part it has. Detections: ``boxes`` ([[x1, y1, x2, y2]] original pixels), ``scores``,
        ``labels``, ``names`` (and ``masks``, ``track_ids``, ``counts`` when there are instance masks,
        tracks, counts); classification: ``label``, ``name``, ``score``, ``topk`` ([{label, name,
        score}]); mask: ``size`` [H, W] and ``classes`` ([{label, name, pixels, score, rle}], each
        class present as compressed COCO RLE; label = mask value), ``class_scores``; presence:
        ``present`` ([{label, name, score}]) and ``presence`` (every class's probability).
        """
        return {"source": self.source, "index": int(self.index), "timestamp": float(self.timestamp),
                **self.prediction.to_json(self.names)}

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of JSON."""
        return json.dumps(self.to_dict())

    def to_coco(self, image_id: int, category_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """COCO results entries for this frame, exactly as ``predictions.json`` holds them.

        Detections: ``{"image_id", "category_id", "bbox" [x, y, w, h] (0.01 px), "score"}`` per box;
        a mask: ``{"image_id", "category_id", "segmentation" (RLE), "score"}`` per class present; a
        multitask model's: both, under the one ``image_id`` (mask value c has the id of class c - 1).
        category_ids: class index -> COCO id (default: the model's). An image with nothing found
        gives ``[]``. Classifications have no COCO results form (a CvappsError).
        """
        ids = list(category_ids) if category_ids is not None else (self.category_ids or
                                                                   list(range(1, len(self.names) + 1)))
        if self.prediction.detections is None and self.prediction.semantic is None:
            raise CvappsError("Result.to_coco: a classification has no COCO results form; use to_dict()")
        return self.prediction.to_coco(image_id, ids)

    def to_supervision(self) -> Any:
        """``supervision.Detections`` (xyxy float32, confidence, class_id, data["class_name"]).

        Detections map one to one (with ``tracker_id`` and their ``data``); a mask gives one
        detection per class present, with its binary ``mask`` (HxW bool), its bounding box and its
        score (1.0 without scores); a classification gives ``supervision.Classifications``; a
        multitask prediction its boxes (its mask when it has no detect head). Needs the optional
        supervision package.
        """
        sv = _supervision()
        pred = self.prediction
        if pred.detections is not None:
            det = pred.detections
            labels = det.labels.numpy().astype(int)
            return sv.Detections(xyxy=det.boxes.numpy().astype(np.float32), confidence=det.scores.numpy(),
                                 class_id=labels, mask=None if det.masks is None else det.masks.numpy(),
                                 tracker_id=det.track_ids,
                                 data={"class_name": np.array([self._name(k) for k in labels], dtype=str),
                                       **det.data})
        if pred.semantic is not None:
            seg, names = pred.semantic, self.mask_names
            classes = seg.present()
            if not classes:
                return sv.Detections.empty()
            binaries = np.stack([seg.mask == c for c in classes])
            return sv.Detections(xyxy=sv.mask_to_xyxy(binaries).astype(np.float32), mask=binaries,
                                 confidence=np.array([seg.class_score(c) for c in classes], dtype=np.float32),
                                 class_id=np.array(classes, dtype=int),
                                 data={"class_name": np.array([class_name(names, c) for c in classes], dtype=str)})
        if pred.classification is not None:
            cls = pred.classification
            return sv.Classifications(class_id=np.array([cls.label]), confidence=np.array([cls.score]))
        raise CvappsError("Result.to_supervision: this multitask model has no detect or segment head")

    def _name(self, label: int) -> str:
        return class_name(self.names, label)

    def __repr__(self) -> str:
        pred, what = self.prediction, []
        if pred.detections is not None:
            what.append(f"{len(pred.detections)} detections")
        if pred.semantic is not None:
            what.append(f"mask with classes {[class_name(self.mask_names, c) for c in pred.semantic.present()]}")
        if pred.classification is not None:
            what.append(f"{self._name(pred.classification.label)} {pred.classification.score:.2f}")
        if pred.presence is not None:
            what.append(f"present {[self._name(k) for k in pred.presence.labels.tolist()]}")
        return f"Result({self.source!r}, index={self.index}, {', '.join(what)})"


def _supervision() -> Any:
    try:
        import supervision as sv  # optional extra, imported only when a conversion asks for it
    except ImportError:
        raise CvappsError(f"Result.to_supervision needs the supervision package: {SUPERVISION_HINT}") from None
    return sv
