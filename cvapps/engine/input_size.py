"""``--imgsz`` / ``cvapps.load(..., imgsz=)``: the input size a loaded model predicts at.

A cvapps checkpoint's models take any multiple of their task's stride (``Task.rect_stride``), so the
stored ``preprocessing["imgsz"]`` (the training size) is replaced and the predictor letterboxes the
long side to it (rect letterbox: the short side padded to the stride only). An exported model
(``fixed_size``: ONNX, OpenVINO) takes only its export size: another is refused in one line.
"""

from __future__ import annotations

from typing import Any

from cvapps.errors import ConfigError, shorten


def set_imgsz(loaded: Any, imgsz: Any) -> None:
    """Predict ``loaded`` (a :class:`~cvapps.engine.load.LoadedModel`) at ``imgsz`` pixels (long side);
    a size the model cannot take is a one-line ConfigError."""
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32:
        raise ConfigError(f"--imgsz must be an integer >= 32, got {shorten(imgsz)}")
    pre = loaded.preprocessing
    if int(pre["imgsz"]) == imgsz:
        return
    if pre.get("fixed_size"):
        raise ConfigError(f"--imgsz {imgsz}: {loaded.source} is an exported model ({loaded.runtime}) that takes only "
                          f"its export size {pre['imgsz']}; drop --imgsz or predict with the .pt checkpoint")
    stride = loaded.task.rect_stride
    if stride and imgsz % stride:
        raise ConfigError(f"--imgsz {imgsz}: {loaded.task.describe()} needs a multiple of {stride}")
    loaded.preprocessing = {**pre, "imgsz": imgsz}
