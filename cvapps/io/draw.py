"""Drawing detections on images (OpenCV): boxes, class names and scores in a fixed palette."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from cvapps.structures import Detections

# A fixed palette (BGR) so a class keeps its colour across images, runs and models.
PALETTE: list[tuple[int, int, int]] = [
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
    (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
    (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203),
    (200, 149, 255), (199, 55, 255),
]


def color(label: int) -> tuple[int, int, int]:
    return PALETTE[int(label) % len(PALETTE)]


def draw_detections(image_bgr: np.ndarray, det: Detections, class_names: Sequence[str],
                    thickness: int | None = None) -> np.ndarray:
    """A copy of ``image_bgr`` (H, W, 3 uint8) with each box (xyxy original pixels) outlined and
    labelled ``name score``; the label sits above the box, or inside it at the top edge."""
    out = np.ascontiguousarray(image_bgr.copy())
    h, w = out.shape[:2]
    t = thickness or max(1, round(0.002 * (h + w)))
    scale = max(0.35, t / 3)
    for (x1, y1, x2, y2), score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
        c = color(label)
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, c, t, cv2.LINE_AA)
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, t - 1))
        above = p1[1] - th - base >= 0
        top = p1[1] - th - base if above else p1[1]
        cv2.rectangle(out, (p1[0], top), (min(w - 1, p1[0] + tw), top + th + base), c, -1, cv2.LINE_AA)
        cv2.putText(out, text, (p1[0], top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    max(1, t - 1), cv2.LINE_AA)
    return out

