"""Resize to the network's square input and map predictions back to the original pixels.

``letterbox`` keeps the aspect ratio and pads the short side symmetrically (grey 114, as YOLO
does; masks are padded with 255 = ignore); ``stretch`` resizes to a square (classification).
The :class:`LetterboxMeta` of each image is what postprocessing needs to undo it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

PAD_VALUE = 114


@dataclass(frozen=True)
class LetterboxMeta:
    """orig_hw: original (H, W); scale_xy: network px per original px; pad_xy: left/top padding."""

    orig_hw: tuple[int, int]
    scale_xy: tuple[float, float]
    pad_xy: tuple[int, int]
    input_hw: tuple[int, int]

    def boxes_to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) xyxy in network-input pixels -> original pixels, clipped to the image."""
        b = boxes.clone().float()
        b[:, [0, 2]] = (b[:, [0, 2]] - self.pad_xy[0]) / self.scale_xy[0]
        b[:, [1, 3]] = (b[:, [1, 3]] - self.pad_xy[1]) / self.scale_xy[1]
        b[:, [0, 2]] = b[:, [0, 2]].clamp(0, self.orig_hw[1])
        b[:, [1, 3]] = b[:, [1, 3]].clamp(0, self.orig_hw[0])
        return b

    def boxes_to_input(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) xyxy original pixels -> network-input pixels (inverse of boxes_to_original)."""
        b = boxes.clone().float()
        b[:, [0, 2]] = b[:, [0, 2]] * self.scale_xy[0] + self.pad_xy[0]
        b[:, [1, 3]] = b[:, [1, 3]] * self.scale_xy[1] + self.pad_xy[1]
        return b

    def crop_padding(self, maps: torch.Tensor) -> torch.Tensor:
        """(..., H_in, W_in) maps -> (..., h, w): the letterbox padding cut off, network resolution."""
        (h, w), (px, py) = self.orig_hw, self.pad_xy
        ih = round(h * self.scale_xy[1])
        iw = round(w * self.scale_xy[0])
        return maps[..., py:py + ih, px:px + iw]

    def map_to_original(self, maps: torch.Tensor) -> torch.Tensor:
        """(..., H_in, W_in) score maps -> (..., H, W): crop the padding, resize bilinearly."""
        h, w = self.orig_hw
        crop = self.crop_padding(maps)
        shape = crop.shape
        flat = crop.reshape(-1, 1, *shape[-2:]).float()
        out = torch.nn.functional.interpolate(flat, size=(h, w), mode="bilinear", align_corners=False)
        return out.reshape(*shape[:-2], h, w)


def letterbox(image: np.ndarray, imgsz: int, mode: str = "letterbox", in_channels: int = 3,
              stride: int | None = None) -> tuple[np.ndarray, LetterboxMeta]:
    """BGR uint8 HxWx3 -> RGB (or gray, ``in_channels=1``) uint8 imgsz x imgsz x C, plus meta.

    stride: "rect" letterbox for inference: pad only up to the next multiple of ``stride`` instead
    of a full square (a 640x480 photo becomes 640x480, not 640x640: 25% fewer pixels to process).
    """
    h, w = image.shape[:2]
    if mode == "stretch":
        out = cv2.resize(image, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)
        meta = LetterboxMeta((h, w), (imgsz / w, imgsz / h), (0, 0), (imgsz, imgsz))
    elif mode == "letterbox":
        scale = imgsz / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) else image
        th, tw = (imgsz, imgsz) if not stride else (-(-nh // stride) * stride, -(-nw // stride) * stride)
        px, py = (tw - nw) // 2, (th - nh) // 2
        out = cv2.copyMakeBorder(resized, py, th - nh - py, px, tw - nw - px,
                                 cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
        meta = LetterboxMeta((h, w), (nw / w, nh / h), (px, py), (th, tw))
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    if in_channels == 1:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)[..., None]
    else:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
    return out, meta
