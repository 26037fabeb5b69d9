"""Plain data types that flow between sources, tasks and sinks.

``Frame`` (frame.py): one image and its place in its source. ``Prediction`` (prediction.py) is what
every task's postprocess returns per image, with its optional parts (``Detections``,
``SegmentationMask``, ``Classification``, ``Presence``); ``Counts`` (counts.py) is what counting adds.
"""

from cvapps.structures.counts import Counts, LineCount, ZoneCount
from cvapps.structures.frame import Frame
from cvapps.structures.prediction import (
           Classification,
           Detections,
           Prediction,
           Presence,
           SegmentationMask,
)

__all__ = ["Classification", "Counts", "Detections", "Frame", "LineCount", "Prediction", "Presence",
           "SegmentationMask", "ZoneCount"]
