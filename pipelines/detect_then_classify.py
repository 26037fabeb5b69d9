#!/usr/bin/env python
"""Detect objects, crop them, classify each crop with a classification checkpoint, write both together.

    python pipelines/detect_then_classify.py SOURCE --detector det.pt --classifier cls.pt --out runs/dtc

Writes OUT/results.jsonl: one line per frame, ``{"file_name", "index", "objects": [{"box": [x1, y1,
x2, y2], "detector": {"name", "score"}, "classifier": {"name", "score"}}]}`` (boxes in original
pixels), and with --save-video / --save-images the frames with "detector/classifier" labels drawn.
Crops of one frame are classified as one batch, in the writer stage, so it overlaps detection.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import load_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("source", help="image, folder, video, webcam index or stream URL")
    p.add_argument("--detector", required=True, help="Faster R-CNN / YOLO checkpoint (or ultralytics model file)")
    p.add_argument("--classifier", required=True, help="classification checkpoint for the crops")
    p.add_argument("--out", default="runs/detect_classify", help="output folder")
    p.add_argument("--conf", type=float, default=0.25, help="detector score threshold (default 0.25)")
    p.add_argument("--pad", type=float, default=0.1, help="grow each crop by this share of the box size (default 0.1)")
    p.add_argument("--batch", type=int, default=8, help="frames per detector pass (default 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--save-video", action="store_true", help="annotated OUT/<source>.mp4")
    p.add_argument("--save-images", action="store_true", help="annotated images in OUT/annotated/")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def crop_boxes(image, boxes, pad: float = 0.1) -> list:
    """Crops (BGR views) of ``image`` for xyxy ``boxes`` grown by ``pad`` of their size, clipped."""
    h, w = image.shape[:2]
    crops = []
    for x1, y1, x2, y2 in boxes:
        dx, dy = (x2 - x1) * pad, (y2 - y1) * pad
        a, b = max(0, int(x1 - dx)), max(0, int(y1 - dy))
        c, d = min(w, int(round(x2 + dx))), min(h, int(round(y2 + dy)))
        crops.append(image[b:max(d, b + 1), a:max(c, a + 1)])
    return crops


class ClassifyCrops:
    """Sink: classifies the detections' crops with ``classifier`` (a :class:`cvapps.Model`) and hands
    ``(frame, objects)`` to ``outputs``."""

    def __init__(self, classifier: Any, detector_names: list[str], path: Path, pad: float,
                 outputs: list[Any] | None = None, root: Any = None) -> None:
        from cvapps.io.sinks import JsonLinesSink

        self.classifier, self.names, self.pad = classifier, detector_names, pad
        classifier.predictor.prefetch = 0  # a handful of crops per call: no prefetch thread per frame
        self.path = Path(path)
        self.outputs = outputs or []
        self._lines = JsonLinesSink(self.path, [])  # its temp-file-and-rename keeps the file whole
        self.objects = 0
        self.root = root  # folder sources: file_name relative to it

    def start(self, source: Any) -> None:
        for sink in self.outputs:
            if hasattr(sink, "start"):
                sink.start(source)

    def write(self, frame: Any, prediction: Any) -> None:
        from cvapps.formats.names import frame_file_name

        dets = prediction.detections
        crops = crop_boxes(frame.image, dets.boxes.tolist(), self.pad)
        classes = self.classifier.predict(crops) if crops else []  # one Result per crop
        objects = []
        for box, score, label, cls in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist(), classes):
            objects.append({"box": [round(v, 2) for v in box],
                            "detector": {"name": self.names[label], "score": round(score, 4)},
                            "classifier": {"name": cls.names[cls.label], "score": round(cls.score, 4)}})
        self.objects += len(objects)
        record = {"file_name": frame_file_name(frame, self.root), "index": frame.index, "objects": objects}
        self._lines.write_record(record)
        for sink in self.outputs:
            sink.write(frame, (dets, objects))

    def close(self) -> None:
        self._lines.close()
        for sink in self.outputs:
            sink.close()


def draw_objects(image, pred) -> Any:
    """Boxes labelled "detector/classifier classifier-score"."""
    import torch

    from cvapps.io.draw import draw_detections
    from cvapps.structures import Detections

    dets, objects = pred
    names = [f"{o['detector']['name']}/{o['classifier']['name']}" for o in objects]
    relabelled = Detections(dets.boxes, torch.tensor([o["classifier"]["score"] for o in objects]),
                            torch.arange(len(objects)))
    return draw_detections(image, relabelled, names)


@dataclass(frozen=True)
class CropSettings:
    """conf: detection score threshold; pad: crop margin as a fraction of the box; save_video /
    save_images: also write annotated outputs; progress: show a bar."""

    conf: float = 0.25
    pad: float = 0.1
    save_video: bool = False
    save_images: bool = False
    progress: bool = True


def detect_then_classify(detector: Any, classifier: Any, source: Any, out: Path,
                         settings: CropSettings = CropSettings()) -> tuple[Any, ClassifyCrops]:
    from cvapps.engine.runner import run_source
    from cvapps.io.sinks import AnnotatedImages, VideoWriterSink

    outputs: list[Any] = []
    root = source if Path(str(source)).is_dir() else None
    if settings.save_video:
        outputs.append(VideoWriterSink(out / f"{Path(str(source)).stem or 'stream'}.mp4", draw_objects))
    if settings.save_images:
        outputs.append(AnnotatedImages(out / "annotated", draw_objects, root=root))
    sink = ClassifyCrops(classifier, detector.names, out / "results.jsonl", settings.pad, outputs, root)
    report = run_source(detector.predictor, source, [sink], progress=settings.progress,
                        options={"conf": settings.conf})
    return report, sink


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from cvapps.errors import CvappsError

    try:
        detector = load_model(args.detector, args.device, args.batch, part="detect")
        classifier = load_model(args.classifier, args.device, 32, part="classify")
        settings = CropSettings(args.conf, args.pad, args.save_video, args.save_images, not args.quiet)
        report, sink = detect_then_classify(detector, classifier, args.source, Path(args.out), settings)
    except CvappsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{report.summary()}; {sink.objects} objects classified")
    print(f"wrote {sink.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
