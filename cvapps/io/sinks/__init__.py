"""Where predictions go. A sink has ``write(frame, prediction)`` and ``close()``; the runner feeds
every sink each ``(frame, prediction)`` pair in order from its writer thread and closes them all with
:func:`close_all` at the end (also on Ctrl-C): whole-file outputs are moved into place together or
not at all.

Modules: :mod:`base` (protocol, two-phase close), :mod:`images` (annotated images, overlays, mask
PNGs, classification CSV), :mod:`video` (annotated H.264 mp4, one per stream for many cameras), :mod:`jsonl` (one JSON object per frame),
:mod:`coco` (the one COCO sink). Drawing lives in :mod:`cvapps.io.draw`.
"""

from cvapps.io.draw import Draw, draw_prediction, make_drawer
from cvapps.io.sinks.base import Sink, StagedSink, close_all
from cvapps.io.sinks.coco import CocoSink
from cvapps.io.sinks.images import AnnotatedImages, ClassificationCSV, MaskImages, OverlayImages
from cvapps.io.sinks.jsonl import JsonLinesSink, prediction_to_json
from cvapps.io.sinks.video import VideoPerSource, VideoWriterSink, count_video_frames, h264_unavailable

__all__ = ["AnnotatedImages", "ClassificationCSV", "CocoSink", "Draw", "JsonLinesSink", "MaskImages", "OverlayImages",
           "Sink", "StagedSink", "VideoPerSource", "VideoWriterSink", "close_all", "count_video_frames",
           "draw_prediction", "h264_unavailable", "make_drawer", "prediction_to_json"]
