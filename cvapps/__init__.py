"""cvapps: computer-vision applications on one shared CNN backbone.

Four tasks (classification, FCN segmentation, Faster R-CNN and YOLO detection) share one
backbone contract (:mod:`cvapps.backbones`), one augmentation builder (:mod:`cvapps.data.augment`),
one training loop (:mod:`cvapps.engine.train`) and one predictor (:mod:`cvapps.engine.predict`).

The Python API (:mod:`cvapps.api`, :mod:`cvapps.results`)::

    model = cvapps.load("best.pt")                      # Model: .predict / .val / .export / .names / .task
    for result in model.predict("images/", stream=True):  # Result: .boxes / .label / .mask / .plot() / .to_coco()
        ...
    run = cvapps.train("configs/classify_shapes.yaml", overrides={"train.epochs": 1})
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cvapps.threads import passive_openmp

passive_openmp()  # before anything imports torch: OpenMP workers sleep instead of spinning (see threads.py)

__version__ = "0.1.0"

__all__ = ["Model", "Result", "TrainResult", "load", "train"]

# The API pulls in torch and the engine; `import cvapps` (and every CLI start) stays light until
# one of these names is used (PEP 562 module __getattr__).
_API = {"Model": "cvapps.api", "load": "cvapps.api", "train": "cvapps.api", "TrainResult": "cvapps.api",
        "Result": "cvapps.results"}

if TYPE_CHECKING:
    from cvapps.api import Model, TrainResult, load, train
    from cvapps.results import Result


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cvapps' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
