"""Batch prediction on Ray Data: many processes or machines, resumable, the same outputs as one process.

::

    driver: plan items (images; videos cut into frame ranges) -- skip those in OUT/ray_manifest.jsonl
      -> ray.data.from_items -> map_batches(decode_items)           parallel read tasks (read_image / OpenCV)
      -> map_batches(PredictActor, ActorPoolStrategy(size=actors))  one model load per actor (num_gpus=1 on GPUs)
      -> driver: each finished item appended to the manifest (flushed)
    then, once every item is in the manifest: replay all of them in source order into the sinks.

Why replay instead of writing as results come: items finish in any order, on any worker, and a run
may be killed and resumed; replaying the manifest in the source's order hands the sinks exactly the
frames, in exactly the order, a single-process run would, so :class:`~cvapps.formats.coco.ImageIndex`
gives the same image ids (1..N by file order, never by completion order) and a resumed run's COCO
file equals an uninterrupted one's. Only data sinks (COCO, JSON lines, CSV, counters) can be fed
this way: the replayed frames carry no pixels (a zero-cost array of the right shape).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cvapps.engine.device import progress_interval
from cvapps.engine.load import LoadedModel
from cvapps.engine.manifest import Manifest, decode_prediction
from cvapps.engine.manifest_check import RecordCheck, classes_of
from cvapps.engine.predict import coco_category_ids
from cvapps.engine.ray_plan import Item, check_ray_address, plan_items
from cvapps.engine.ray_read import decode_items, item_rows
from cvapps.engine.ray_workers import PredictActor
from cvapps.engine.runner import RunReport
from cvapps.errors import CvappsError
from cvapps.formats.coco import ImageIndex
from cvapps.io.guard import output_root
from cvapps.io.sinks import (
    AnnotatedImages,
    ClassificationCSV,
    CocoSink,
    JsonLinesSink,
    MaskImages,
    OverlayImages,
    VideoWriterSink,
    close_all,
)
from cvapps.io.sources import SourceOptions, describe_source
from cvapps.structures import Frame

MANIFEST = "ray_manifest.jsonl"
INSTALL = 'pip install "cvapps[ray]"'
# Bigger blocks and calls amortise Ray's per-task and per-call costs (measured on 2 CPUs: 8/8 -> 32/32
# raised one actor's steady rate by a third); they stay small enough to stream.
BLOCK_IMAGES = 32  # images per read task
CALL_FRAMES = 32  # frames per actor call (the predictor still runs them `batch` at a time)
READ_CPUS = 0.5  # Ray CPUs a read task asks for (see _dataset)
PIXEL_SINKS = (AnnotatedImages, OverlayImages, MaskImages, VideoWriterSink)


@dataclass(frozen=True)
class RayModel:
    """What every predictor actor runs: ``path`` (a model file, or a name the loader resolves) on
    ``device``, ``batch`` frames per forward (``trust``: allow a full unpickle); ``part``: the command
    (detect, segment) whose part of a multitask model runs, as ``cvapps detect|segment`` do (None: the
    whole model; see ``Task.part``); ``options`` go to the task's postprocess (``conf``, ``iou``, ``topk``...)."""

    path: str
    options: dict[str, Any] = field(default_factory=dict)
    batch: int = 8
    device: str = "auto"
    trust: bool = False
    part: str | None = None


@dataclass(frozen=True)
class RayCluster:
    """Where it runs: ``address`` None/"local" starts a local Ray instance with ``num_cpus`` CPUs
    (default all), "auto" or ``ray://host:10001`` joins a cluster (a Ray already initialised is used
    as it is); ``actors`` predictor actors, one GPU each when the cluster has GPUs and the device is
    auto/cuda; ``chunk`` video frames per read task (the unit of work and of resuming)."""

    address: str | None = None
    actors: int = 1
    num_cpus: int | None = None
    chunk: int = 32


@dataclass
class RayReport(RunReport):
    """A :class:`RunReport` plus ``predicted`` (frames predicted by this call; the rest came from the
    manifest of an earlier, interrupted call) and ``items`` / ``resumed`` (work items, and those already done)."""

    predicted: int = 0
    items: int = 0
    resumed: int = 0
    first_result_s: float = 0.0  # from the start of the call to the first finished item (Ray and actor start-up)
    predict_s: float = 0.0  # from the start of the call to the last finished item


def import_ray() -> Any:
    """``ray`` (with ``ray.data``), quiet; a one-line CvappsError naming the extra when it is missing."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # read when ray starts: no usage report
    try:
        import ray  # lazy: optional heavy package
        import ray.data
    except ImportError:
        raise CvappsError(f"--ray needs Ray Data: {INSTALL}") from None
    return ray


# -- running -----------------------------------------------------------------------------------

def _connect(ray: Any, address: str | None, actors: int, num_cpus: int | None) -> bool:
    """Start a local Ray instance (address None/"local") or join a cluster; False if Ray was already up."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address in (None, "", "local"):
        cpus = num_cpus or max(os.cpu_count() or 1, actors + 1)  # a free CPU for the read tasks
        ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
    else:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:  # Ray's own, many lines
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            raise CvappsError(f"--ray: cannot join the Ray cluster at {address}: {lines[0][:200]}") from None
    return True


def _model_bytes(model: str) -> tuple[bytes | None, str]:
    """The model file's bytes (shipped once to each actor through the object store) and its sha256;
    None for a name the loader resolves itself (a published ultralytics model)."""
    path = Path(model)
    if not path.is_file():
        return None, model
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _dataset(ray: Any, todo: list[Item], weights: Any, model: RayModel, actors: int, options: SourceOptions) -> Any:
    images = [it for it in todo if it.kind == "image"]
    videos = [it for it in todo if it.kind == "video"]
    parts = []
    if images:  # one read task per BLOCK_IMAGES images; each video range is a read task of its own
        blocks = max(1, -(-len(images) // BLOCK_IMAGES))
        parts.append(ray.data.from_items(item_rows(images), override_num_blocks=blocks))
    if videos:
        parts.append(ray.data.from_items(item_rows(videos), override_num_blocks=len(videos)))
    ds = parts[0] if len(parts) == 1 else parts[0].union(parts[1])
    resources = ray.cluster_resources()
    device = str(model.device)
    want_gpu = device.startswith("cuda") or (device == "auto" and resources.get("GPU", 0) >= 1)
    # Read tasks take half a CPU, so two run beside each actor's core; a resource request unlike the
    # actors' also keeps Ray Data from fusing them into the actors. With no CPU left beside the
    # actors, reading is fused into them instead (the same request), or the read tasks would wait forever.
    have = resources.get("GPU", 0) if want_gpu else resources.get("CPU", 0)
    if have < actors:  # Ray Data would wait for the missing actors forever
        raise CvappsError(f"--ray-actors {actors} needs {actors} {'GPUs' if want_gpu else 'CPUs'}; the Ray cluster "
                          f"has {have:g}")
    spare = resources.get("CPU", 0) - actors
    read_cpus = READ_CPUS if spare >= READ_CPUS else 1
    ds = ds.map_batches(decode_items, batch_size=1, num_cpus=read_cpus,
                        fn_kwargs={"vid_stride": options.vid_stride, "max_file_mb": options.max_file_mb})
    return ds.map_batches(
        PredictActor, batch_size=max(model.batch, CALL_FRAMES), compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"weights": None if weights is None else [weights], "model": model.path,
                               "device": model.device, "batch": model.batch, "trust": model.trust,
                               "options": model.options, "part": model.part},
        num_cpus=1, num_gpus=1 if want_gpu else 0)


class _Collect:
    """Driver side: rows of an item arrive in pieces and in any order; an item is written to the
    manifest once all ``count`` of its rows are in."""

    def __init__(self, manifest: Manifest, bar: tqdm) -> None:
        self.manifest, self.bar = manifest, bar
        self.pending: dict[str, dict[int, dict[str, Any]]] = {}
        self.frames = 0
        self.first_t = self.last_t = None  # perf_counter of the first and the last finished item

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for i in range(len(batch["key"])):
            key = str(batch["key"][i])
            if key in self.manifest.done:  # already recorded (a retried task can deliver rows twice)
                continue
            rows = self.pending.setdefault(key, {})  # by frame index: a row delivered twice counts once
            rows[int(batch["index"][i])] = {k: batch[k][i] for k in ("status", "source", "index", "timestamp",
                                                                    "width", "height", "prediction")}
            if len(rows) == int(batch["count"][i]):
                self._finish(key, list(self.pending.pop(key).values()))

    def _finish(self, key: str, rows: list[dict[str, Any]]) -> None:
        status = str(rows[0]["status"])
        if status == "skip":
            record: dict[str, Any] = {"key": key, "skipped": str(rows[0]["source"])}
        else:
            frames = [] if status == "empty" else [
                {"source": str(r["source"]), "index": int(r["index"]), "timestamp": float(r["timestamp"]),
                 "width": int(r["width"]), "height": int(r["height"]),
                 "prediction": json.loads(str(r["prediction"]))}
                for r in sorted(rows, key=lambda r: int(r["index"]))]
            record = {"key": key, "frames": frames}
            self.frames += len(frames)
        self.manifest.append(record)
        self.bar.update(1)
        self.last_t = time.perf_counter()
        self.first_t = self.first_t or self.last_t


class _SigtermToInterrupt:
    """SIGTERM stops the driver like Ctrl-C (main thread only): the manifest keeps what was done."""

    def __enter__(self) -> _SigtermToInterrupt:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _replay(items: list[Item], manifest: Manifest, sinks: Sequence[Any], report: RayReport) -> None:
    """Every item's frames, in source order, into every sink (see the module doc)."""
    pixel = np.zeros((1, 1, 3), np.uint8)
    image_index = 0  # still images are numbered over those read, as ImageFilesSource numbers them
    for item in items:
        record = manifest.done[item.key]
        if "skipped" in record:
            report.skipped.append((item.path, record["skipped"]))
            continue
        for f in record["frames"]:
            image = np.broadcast_to(pixel, (f["height"], f["width"], 3))  # the shape sinks read, no memory
            video = item.kind == "video"
            index = f["index"] if video else image_index
            image_index += not video
            # the frame's stream: its video (the item's file), or the image's own path
            frame = Frame(image, f["source"], index, f["timestamp"], stream=item.path if video else f["source"],
                          frame_index=f["index"] if video else None)
            prediction = decode_prediction(f["prediction"])
            for sink in sinks:
                sink.write(frame, prediction)
            report.processed += 1


def run_ray(model: RayModel | str, source: Any, sinks: Sequence[Any], out: str | Path,
            cluster: RayCluster | None = None, *, options: SourceOptions | None = None,
            progress: bool = True) -> RayReport:
    """Predict every frame of ``source`` on Ray and write the results to ``sinks``; resumable.

    model: a :class:`RayModel`, or a model file (or name) as :func:`~cvapps.engine.load.load_model`
    takes it, with the defaults; sinks: data sinks only (COCO, JSON lines, CSV); out: the output
    folder, where ``ray_manifest.jsonl`` records finished items (rerun the same call after a crash or
    Ctrl-C to do only what is missing); cluster: :class:`RayCluster` (default: a local instance, one
    actor); source: a :class:`~cvapps.io.sources.SourceSpec` or anything
    :func:`~cvapps.io.sources.describe_source` takes (files only); options: its ``vid_stride`` and
    ``max_file_mb`` apply (:class:`~cvapps.io.sources.SourceOptions`; Ray splits the work itself, so
    no ``shard``). The sinks are written only when every item is
    done: a run stopped early (``report.interrupted``) leaves its progress in the manifest and no outputs.
    """
    for sink in sinks:
        if isinstance(sink, PIXEL_SINKS):
            raise CvappsError(f"--ray writes JSON/CSV outputs only, not {type(sink).__name__} "
                              "(drop --save-images/--save-video, or run without --ray)")
    model = model if isinstance(model, RayModel) else RayModel(str(model))
    cluster = cluster or RayCluster()
    options = options if options is not None else SourceOptions()
    chunk = cluster.chunk
    if cluster.actors < 1 or model.batch < 1 or chunk < 1:
        raise CvappsError("--ray-actors, --batch and the video chunk must be >= 1")
    if options.shard != (0, 1):
        raise CvappsError("--ray splits the work itself: drop --shard")
    spec = describe_source(source)  # the one decision of what the source is, as a local run makes it
    ray = import_ray()
    if not ray.is_initialized():  # a wrong address fails here in seconds, before anything is written
        check_ray_address(cluster.address)
    report = RayReport()
    t0 = time.perf_counter()
    items, report.skipped = plan_items(spec, chunk)
    data, model_id = _model_bytes(model.path)
    run = {"source": list(spec.paths) if spec.kind == "paths" else spec.text,
           "model": model_id, "options": dict(model.options), "vid_stride": options.vid_stride, "chunk": chunk}
    if model.part:  # a multitask model's boxes or masks only: not the same run as the whole model's
        run["part"] = model.part
    root = output_root(out)  # the manifest and every output: written inside OUT, through no link
    root.__enter__()
    committed = False
    try:
        # stored records are checked against their items before use (a bad one is predicted again)
        check = RecordCheck(items, classes_of(list(sinks)))
        with Manifest(Path(out) / MANIFEST, run, check) as manifest, _SigtermToInterrupt():
            todo = [it for it in items if it.key not in manifest.done]
            if manifest.resumed and progress:
                print(f"resuming: {len(items) - len(todo)} of {len(items)} items already done "
                      f"({manifest.path})", file=sys.stderr)
            bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="predict (ray)", unit="item",
                       disable=not progress, dynamic_ncols=True, mininterval=progress_interval())
            collect = _Collect(manifest, bar)
            try:
                if todo:
                    _predict(ray, todo, collect, data, model, cluster, options)
            except KeyboardInterrupt as exc:
                report.interrupted = "SIGTERM" if str(exc) == "SIGTERM" else "SIGINT"
            finally:
                bar.close()
            report.predicted, report.items, report.resumed = collect.frames, len(items), len(items) - len(todo)
            if collect.first_t is not None:
                report.first_result_s, report.predict_s = collect.first_t - t0, collect.last_t - t0
            if report.interrupted is None:
                _replay(items, manifest, sinks, report)
        committed = report.interrupted is None
    finally:
        try:
            errors = close_all(sinks, commit=committed)
        finally:
            root.__exit__(None, None, None)
        report.wall_s = time.perf_counter() - t0
    if errors and committed:  # (an interrupted run discards its staged files on purpose)
        raise CvappsError(errors[-1])
    if report.interrupted:
        print(f"stopped by {report.interrupted}: {len(manifest.done)} of {len(items)} items are done "
              f"(recorded in {manifest.path}); rerun the same command to finish", file=sys.stderr)
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return report


def _predict(ray: Any, todo: list[Item], collect: _Collect, data: bytes | None, model: RayModel,
             cluster: RayCluster, options: SourceOptions) -> None:
    started = _connect(ray, cluster.address, cluster.actors, cluster.num_cpus)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bar counts items
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
        weights = None if data is None else ray.put(data)  # stored once, fetched once per actor
        ds = _dataset(ray, todo, weights, model, cluster.actors, options)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            collect.add(batch)
    finally:
        if started:
            ray.shutdown()


def predict_files(model: RayModel, loaded: LoadedModel, source: Any, out: str | Path, *,
                  save_jsonl: bool = False, **kwargs: Any) -> RayReport:
    """:func:`run_ray` into the files ``cvapps classify|segment|detect SOURCE --ray`` writes to ``out``:
    ``predictions.csv`` for classifiers (top-k from ``options["topk"]``, default 3), else
    ``predictions.json`` + ``predictions_coco.json``; ``predictions.jsonl`` too with save_jsonl.
    loaded: the model as loaded here (its task, class names and category ids name the outputs)."""
    out = Path(out)
    task, class_names = loaded.task, loaded.class_names
    category_ids = coco_category_ids(loaded.category_ids, len(class_names))
    spec = describe_source(source)
    root = spec.root
    if "classification" in task.parts:  # a classifier: top-k rows
        topk = int(model.options.get("topk", 3))
        sinks: list[Any] = [ClassificationCSV(out / "predictions.csv", class_names, topk)]
    else:
        sinks = [CocoSink(out / "predictions_coco.json", class_names, category_ids,
                          results_path=out / "predictions.json", index=ImageIndex(root, None))]
    if save_jsonl:
        sinks.append(JsonLinesSink(out / "predictions.jsonl", class_names, root=root))
    return run_ray(model, spec, sinks, out, **kwargs)
