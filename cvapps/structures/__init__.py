"""Plain data types that flow between sources, tasks and sinks.

``Frame`` (frame.py): one image and its place in its source. The prediction types (prediction.py)
are what every task's postprocess returns; ``Counts`` (counts.py) is what counting adds.
"""

from cvapps.structures.counts import Counts, LineCount, ZoneCount
from cvapps.structures.frame import Frame
from cvapps.structures.prediction import (
                                          Classification,
                                          Detections,
                                          MultiTaskPrediction,
                                          SegmentationMask,
                                          part_of,
)

__all__ = ["Classification", "Counts", "Detections", "Frame", "LineCount", "MultiTaskPrediction",
           "SegmentationMask", "ZoneCount", "part_of"]
