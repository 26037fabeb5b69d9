"""``Result``: one frame's prediction, as :meth:`cvapps.Model.predict` returns it, with its conversions.

A Result keeps the frame identity (``source``, ``index``, ``timestamp``), the original image (HxWx3
BGR uint8) and the task's prediction structure (:class:`~cvapps.structures.Classification`,
:class:`~cvapps.structures.SegmentationMask`, :class:`~cvapps.structures.Detections` or, for a
multitask model, :class:`~cvapps.structures.MultiTaskPrediction`, all in original image pixels).
A multitask Result exposes its boxes as a detector's does (``boxes``, ``scores``, ``labels``), its
mask as a segmenter's (``mask``) and its presence head as ``present`` / ``presence``. Conversions reuse the library's one home for each format: drawing
(:mod:`cvapps.io.draw`), atomic image writing (:mod:`cvapps.io.images`) and COCO results
(:mod:`cvapps.formats.coco`: the same rounding as ``predictions.json``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvapps.errors import CvappsError
from cvapps.formats.coco import detections_to_results, mask_to_results, mask_to_rle
from cvapps.formats.masks import IGNORE_INDEX
from cvapps.io.draw import draw_prediction
from cvapps.io.images import write_image
from cvapps.structures import Classification, Detections, MultiTaskPrediction, SegmentationMask, part_of

Prediction = Classification | SegmentationMask | Detections | MultiTaskPrediction

SUPERVISION_HINT = "pip install 'cvapps[supervision]'"


@dataclass
class Result:
    """One frame's prediction.

    source: file path, ``"clip.mp4#frame=000123"`` for video frames, ``"<array>"`` for arrays;
    index: position in the source; timestamp: seconds from the start of a video (0.0 for images);
    image: the original HxWx3 BGR uint8 frame; prediction: the task's structure (original pixels);
    names: class index -> name; category_ids: class index -> COCO category id (the model's).
    """

    source: str
    index: int
    timestamp: float
    image: np.ndarray
    prediction: Prediction
    names: list[str]
    category_ids: list[int] = field(default_factory=list)

    # -- convenience views ---------------------------------------------------------------------
    def _need(self, kind: type, what: str) -> Any:
        """The prediction as ``kind``: itself, or a multitask prediction's part of that kind."""
        pred = self.prediction
        if isinstance(pred, MultiTaskPrediction) and kind in (Detections, SegmentationMask):
            part = part_of(pred, kind)
            if part is None:
                head = "detect" if kind is Detections else "segment"
                raise CvappsError(f"Result.{what}: this multitask model has no {head} head")
            return part
        if not isinstance(pred, kind):
            raise CvappsError(f"Result.{what}: only for {kind.__name__} results, this is a {type(pred).__name__}")
        return pred

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float32 xyxy boxes in original image pixels (detectors and multitask models)."""
        return self._need(Detections, "boxes").boxes.numpy()

    @property
    def scores(self) -> np.ndarray:
        """(N,) float32 confidences in [0, 1] (detectors and multitask models)."""
        return self._need(Detections, "scores").scores.numpy()

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class indices into ``names`` (detectors and multitask models: of the boxes)."""
        return self._need(Detections, "labels").labels.numpy()

    @property
    def track_ids(self) -> np.ndarray | None:
        """(N,) int64 track ids parallel to ``boxes`` when predicted with ``track=``, else None."""
        return self._need(Detections, "track_ids").track_ids

    @property
    def counts(self) -> dict[str, Any] | None:
        """This frame's line totals and zone occupancy (``{"lines": [...], "zones": [...]}``, see
        :mod:`cvapps.analytics.counting`) when predicted with ``count_lines=`` / ``zones=``, else None."""
        counts = self._need(Detections, "counts").counts
        return counts.to_json() if counts is not None else None

    @property
    def label(self) -> int:
        """The predicted class index (classifiers only); ``names[label]`` is its name."""
        return int(self._need(Classification, "label").label)

    @property
    def score(self) -> float:
        """The predicted class's probability (classifiers only)."""
        return float(self._need(Classification, "score").score)

    @property
    def mask(self) -> np.ndarray:
        """HxW uint8 class index per pixel, original image size, 0 = background (segmenters and
        multitask models); ``mask_names[v]`` names the value v."""
        return np.asarray(self._need(SegmentationMask, "mask").mask)

    @property
    def mask_names(self) -> list[str]:
        """Mask value -> class name: ``names`` for a segmenter (background first), ``["background",
        *names]`` for a multitask model (its ``names`` are the detection classes)."""
        return ["background", *self.names] if isinstance(self.prediction, MultiTaskPrediction) else self.names

    @property
    def present(self) -> np.ndarray:
        """(M,) int64 indices into ``names`` of the classes the presence head finds in the image
        (multitask models with a classify head; probability >= ``presence_conf``, default 0.5)."""
        return self._presence("present").labels.numpy()

    @property
    def presence(self) -> np.ndarray:
        """(K,) float32 presence probability of every class in ``names`` (multitask models with a classify head)."""
        return np.asarray(self._presence("presence").label_scores)

    def _presence(self, what: str) -> MultiTaskPrediction:
        pred = self._need(MultiTaskPrediction, what)
        if pred.labels is None:
            raise CvappsError(f"Result.{what}: this multitask model has no classify head")
        return pred

    def _name(self, label: int, names: list[str] | None = None) -> str:
        names = self.names if names is None else names
        return names[label] if 0 <= label < len(names) else str(label)

    # -- outputs -------------------------------------------------------------------------------
    def plot(self) -> np.ndarray:
        """A copy of ``image`` (HxWx3 BGR uint8) with the prediction drawn, as the annotated outputs."""
        return draw_prediction(self.image, self.prediction, self.names)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`plot` to ``path`` atomically (format from the extension: .jpg, .png, ...)."""
        write_image(path, self.plot())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``source``, ``index``, ``timestamp`` and the prediction.

        Detections: ``boxes`` ([[x1, y1, x2, y2]] original pixels), ``scores``, ``labels``, ``names``
        (and ``track_ids``, ``counts`` when tracked / counted);
        Classification: ``label``, ``name``, ``score``, ``topk`` ([{label, name, score}]);
        SegmentationMask: ``size`` [H, W] and ``classes`` ([{label, name, pixels, score, rle}],
        the mask of each class present as compressed COCO RLE; label = mask value);
        MultiTaskPrediction: the keys of each part it has (Detections', SegmentationMask's) and
        ``present`` ([{label, name, score}]: the classes its presence head finds).
        """
        out: dict[str, Any] = {"source": self.source, "index": int(self.index), "timestamp": float(self.timestamp)}
        pred = self.prediction
        if isinstance(pred, MultiTaskPrediction):
            if pred.detections is not None:
                out.update(self._detections_dict(pred.detections))
            if pred.segmentation is not None:
                out.update(self._mask_dict(pred.segmentation))
            if pred.labels is not None:
                out["present"] = [{"label": k, "name": self._name(k), "score": float(pred.label_scores[k])}
                                  for k in pred.labels.tolist()]
        elif isinstance(pred, Detections):
            out.update(self._detections_dict(pred))
        elif isinstance(pred, Classification):
            out.update(label=int(pred.label), name=self._name(pred.label), score=float(pred.score),
                       topk=[{"label": int(k), "name": self._name(k), "score": float(p)} for k, p in pred.topk])
        else:
            out.update(self._mask_dict(pred))
        return out

    def _detections_dict(self, pred: Detections) -> dict[str, Any]:
        labels = pred.labels.tolist()
        out = {"boxes": pred.boxes.tolist(), "scores": pred.scores.tolist(), "labels": labels,
               "names": [self._name(k) for k in labels]}
        if pred.track_ids is not None:
            out["track_ids"] = pred.track_ids.tolist()
        if pred.counts is not None:
            out["counts"] = pred.counts.to_json()
        return out

    def _mask_dict(self, pred: SegmentationMask) -> dict[str, Any]:
        mask = np.asarray(pred.mask)
        classes = []
        for c in _present_classes(mask):
            binary = mask == c
            classes.append({"label": c, "name": self._name(c, self.mask_names), "pixels": int(binary.sum()),
                            "score": _class_score(pred, c), "rle": mask_to_rle(binary)})
        return {"size": list(mask.shape[:2]), "classes": classes}

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of JSON."""
        return json.dumps(self.to_dict())

    def to_coco(self, image_id: int, category_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """COCO results entries for this frame, exactly as ``predictions.json`` holds them.

        Detections: ``{"image_id", "category_id", "bbox" [x, y, w, h] (0.01 px), "score"}`` per box;
        SegmentationMask: ``{"image_id", "category_id", "segmentation" (RLE), "score"}`` per class
        present; MultiTaskPrediction: both, under the one ``image_id`` (mask value c has the id of
        class c - 1). category_ids: class index -> COCO id (default: the model's). An image with
        nothing found gives ``[]``. Classifications have no COCO results form (a CvappsError).
        """
        ids = list(category_ids) if category_ids is not None else (self.category_ids or
                                                                   list(range(1, len(self.names) + 1)))
        pred = self.prediction
        if isinstance(pred, MultiTaskPrediction):  # as the COCO sink writes it
            boxes = detections_to_results(pred.detections, image_id, ids) if pred.detections is not None else []
            seg = pred.segmentation
            return boxes + (mask_to_results(seg.mask, seg.scores, image_id, [0, *ids]) if seg is not None else [])
        if isinstance(pred, Detections):
            return detections_to_results(pred, image_id, ids)
        if isinstance(pred, SegmentationMask):
            return mask_to_results(pred.mask, pred.scores, image_id, ids)
        raise CvappsError("Result.to_coco: a classification has no COCO results form; use to_dict()")

    def to_supervision(self) -> Any:
        """``supervision.Detections`` (xyxy float32, confidence, class_id, data["class_name"]).

        Detections map one to one; a SegmentationMask gives one detection per class present, with
        its binary ``mask`` (HxW bool), its bounding box and its score (1.0 without scores); a
        Classification gives ``supervision.Classifications``; a multitask prediction its boxes
        (its mask when it has no detect head). Needs the optional supervision package.
        """
        sv = _supervision()
        pred = self.prediction
        if isinstance(pred, MultiTaskPrediction):
            pred = pred.detections if pred.detections is not None else pred.segmentation
            if pred is None:
                raise CvappsError("Result.to_supervision: this multitask model has no detect or segment head")
        if isinstance(pred, Classification):
            return sv.Classifications(class_id=np.array([int(pred.label)]), confidence=np.array([float(pred.score)]))
        if isinstance(pred, Detections):
            labels = pred.labels.numpy().astype(int)
            masks = getattr(pred, "masks", None)  # instance masks, when the structure carries them
            return sv.Detections(xyxy=pred.boxes.numpy().astype(np.float32), confidence=pred.scores.numpy(),
                                 class_id=labels, mask=None if masks is None else np.asarray(masks).astype(bool),
                                 tracker_id=pred.track_ids,
                                 data={"class_name": np.array([self._name(k) for k in labels], dtype=str)})
        mask = np.asarray(pred.mask)
        classes = _present_classes(mask)
        if not classes:
            return sv.Detections.empty()
        binaries = np.stack([mask == c for c in classes])
        scores = [_class_score(pred, c) for c in classes]
        return sv.Detections(xyxy=sv.mask_to_xyxy(binaries).astype(np.float32), mask=binaries,
                             confidence=np.array(scores, dtype=np.float32), class_id=np.array(classes, dtype=int),
                             data={"class_name": np.array([self._name(c, self.mask_names) for c in classes], dtype=str)})

    def __repr__(self) -> str:
        pred = self.prediction
        parts = [pred.detections, pred.segmentation] if isinstance(pred, MultiTaskPrediction) else [pred]
        what = []
        for part in parts:
            if isinstance(part, Detections):
                what.append(f"{len(part)} detections")
            elif isinstance(part, Classification):
                what.append(f"{self._name(part.label)} {part.score:.2f}")
            elif isinstance(part, SegmentationMask):
                present = [self._name(c, self.mask_names) for c in _present_classes(np.asarray(part.mask))]
                what.append(f"mask with classes {present}")
        if isinstance(pred, MultiTaskPrediction) and pred.labels is not None:
            what.append(f"present {[self._name(k) for k in pred.labels.tolist()]}")
        return f"Result({self.source!r}, index={self.index}, {', '.join(what)})"


def _class_score(pred: SegmentationMask, c: int) -> float:
    """Mean confidence of class c's pixels (1.0 when the mask has no scores)."""
    return float(pred.scores[c]) if pred.scores is not None and c < len(pred.scores) else 1.0


def _present_classes(mask: np.ndarray) -> list[int]:
    """Class indices present in a class-index mask, without background (0) and ignore (255)."""
    return [int(c) for c in np.unique(mask).tolist() if c not in (0, IGNORE_INDEX)]


def _supervision() -> Any:
    try:
        import supervision as sv  # optional extra, imported only when a conversion asks for it
    except ImportError:
        raise CvappsError(f"Result.to_supervision needs the supervision package: {SUPERVISION_HINT}") from None
    return sv
