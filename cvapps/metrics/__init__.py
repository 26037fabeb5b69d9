"""Task metrics with one interface, fed by the engine's evaluation loop (detectron2 style).

A metric object has ``reset()``, ``process(predictions, targets)`` (one batch: the task's
postprocessed predictions in original image pixels and the matching targets), ``summarize() ->
dict[str, float]`` and ``plot(out_dir)``. Tasks choose their metric; they never run a loop.
"""

from cvapps.metrics.base import Metric
from cvapps.metrics.classification import ClassificationMetric, classification_metrics
from cvapps.metrics.coco import CocoDetectionMetric, coco_evaluate, make_coco, plot_pr_curves
from cvapps.metrics.multitask import MultiTaskMetric, PresenceMetric
from cvapps.metrics.segmentation import SegmentationMetric, segmentation_metrics

__all__ = ["Metric", "ClassificationMetric", "CocoDetectionMetric", "MultiTaskMetric", "PresenceMetric",
           "SegmentationMetric",
           "classification_metrics", "coco_evaluate", "make_coco", "plot_pr_curves", "segmentation_metrics"]
