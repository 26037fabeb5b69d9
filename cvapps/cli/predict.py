"""``cvapps classify`` and the pieces every predict command (classify, segment, detect, predict) shares.

``add_common(parser)`` adds the options every predict command shares (source, model, output,
batching, device, stride, shard, live buffering, preview and the generic outputs);
``add_json_args(parser, results)`` adds ``--save-json`` / ``--coco-gt`` (segment, detect, predict);
``common_sinks(args, predictor, draw)`` builds the generic outputs those options ask for and
``run_common(args, predictor, sinks, options)`` runs the source with them and prints the timing
report; ``exit_code(report)`` is 0, 128 + signal when Ctrl-C/SIGTERM stopped the run early, or 1
when nothing at all was processed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cvapps.cli.slicing import add_slice_args, load_options
from cvapps.errors import CvappsError, plural

if TYPE_CHECKING:  # annotations only: the sources package loads torch, which `cvapps --help` must not wait for
    from cvapps.io.sources import SourceOptions, SourceSpec


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="image, folder (recursive), glob, .txt list, video file, webcam index, stream URL, "
                                  "or a streams file (.txt, one stream URL or webcam index per line, optionally "
                                  "followed by a name): all its streams through one batched model")
    p.add_argument("--model", required=True, help="checkpoint (.pt) to run")
    p.add_argument("--trust-model", action="store_true",
                   help="allow a model file that can only be read by a full unpickle (it can run code stored "
                        "in the file; also CVAPPS_TRUST_MODEL=1)")
    name = p.prog.split()[-1]  # the command: classify, segment, detect or predict
    p.add_argument("--out", default=None,
                   help=f"output folder (default runs/{name}/predict, or predict2, predict3, ... when that exists, "
                        "so runs never mix; with --ray, rerun with the same --out to resume)")
    p.add_argument("--exist-ok", action="store_true",
                   help=f"without --out: write into runs/{name}/predict even if it exists (no new numbered folder)")
    p.set_defaults(default_out=f"runs/{name}/predict")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--runtime", default=None, choices=["torch", "onnxruntime", "openvino", "auto"],
                   help="engine that runs the model (default $CVAPPS_RUNTIME, else the file's own: .pt torch, .onnx "
                        "onnxruntime, OpenVINO folder openvino); auto: OpenVINO on the CPU when cvapps[openvino] is "
                        "installed (a .pt converted once, cached by its sha256)")
    p.add_argument("--vid-stride", type=int, default=1, help="use every N-th video frame")
    add_slice_args(p)  # --imgsz, --slice...
    p.add_argument("--quiet", action="store_true",
                   help="print nothing on stderr but errors (no progress bar, timing report, library logs "
                        "or OpenCV/FFmpeg warnings)")
    p.add_argument("--max-file-mb", type=float, default=None, metavar="MB",
                   help="skip (and report) input files larger than this before reading them "
                        "(default $CVAPPS_MAX_FILE_MB, else 256)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="process only items I, I+N, I+2N, ... (0-based I); run N processes with I=0..N-1 "
                        "to split a folder or video")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="predict on Ray Data (pip install \"cvapps[ray]\"): parallel read tasks and a pool of "
                        "predictor actors; SOURCE a folder, glob, .txt list or video(s). No ADDRESS: a local Ray "
                        "instance; 'auto' or ray://HOST:10001: an existing cluster. Writes the JSON/CSV outputs "
                        "once all is done; OUT/ray_manifest.jsonl records finished items, so rerunning the same "
                        "command after a crash or Ctrl-C predicts only what is missing")
    p.add_argument("--ray-actors", type=int, default=1, metavar="N",
                   help="predictor actors with --ray, each loading the model once (one GPU each on a GPU "
                        "cluster; default 1)")
    p.add_argument("--buffer", action="store_true",
                   help="live sources (webcam, stream URL): keep every frame instead of only the newest")
    p.add_argument("--reconnect", type=float, default=10.0, metavar="SECONDS",
                   help="live sources (webcam, any URL): keep reconnecting a stalled stream this long before "
                        "finishing; also the longest a frozen server can hold one open or read (default 10)")
    p.add_argument("--save-video", action="store_true",
                   help="write OUT/<source name>.mp4 with the predictions drawn (same fps and size as the input; "
                        "detect/segment do this by default for video and stream sources)")
    p.add_argument("--save-images", action="store_true",
                   help="write each annotated frame as an image (detect/segment: the default for image sources; "
                        "classify: to OUT/annotated/)")
    p.add_argument("--save-jsonl", action="store_true",
                   help="write OUT/predictions.jsonl, one JSON object per frame")
    p.add_argument("--show", action="store_true", help="preview window (needs a display)")
    p.add_argument("--serve", default=None, metavar="[HOST:]PORT",
                   help="serve a live MJPEG preview page at http://HOST:PORT/ (default host 127.0.0.1)")


def add_json_args(p: argparse.ArgumentParser, results: str) -> None:
    """``--save-json`` and ``--coco-gt``; results: what ``predictions.json`` holds (for the help)."""
    p.add_argument("--save-json", action="store_true",
                   help=f"also write OUT/predictions.json ({results}) and OUT/predictions_coco.json (a COCO "
                        "dataset file whose annotations carry score; the default for video and stream sources)")
    p.add_argument("--coco-gt", metavar="FILE",
                   help="COCO dataset file whose image ids (matched by file_name) and category ids (matched "
                        "by name) the JSON files use, so COCOeval runs on the pair directly; implies --save-json")


def add_classify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topk", type=int, default=3, help="how many best classes to list per image (default 3)")


def check_classify_args(args: argparse.Namespace) -> None:
    """--topk >= 1 (the API's check: :func:`cvapps.engine.predict.check_options`)."""
    from cvapps.engine.predict import check_options

    check_options({"topk": args.topk}, cli=True)


def _source_stem(source: str) -> str:
    name = Path(str(source).split("?")[0].rstrip("/")).stem
    return name or "stream"


def source_spec(args: argparse.Namespace) -> SourceSpec:
    """What SOURCE is (:func:`cvapps.io.sources.describe_source`), decided once per command and kept
    on ``args``: every output choice and the run itself read this one answer."""
    from cvapps.io.sources import describe_source

    spec = getattr(args, "source_spec", None)
    if spec is None:
        spec = args.source_spec = describe_source(args.source)
    return spec


def source_options(args: argparse.Namespace) -> SourceOptions:
    """The common options as :class:`cvapps.io.sources.SourceOptions` (checked: a bad one is one line)."""
    from cvapps.io.sources import SourceOptions

    return SourceOptions(vid_stride=args.vid_stride, shard=getattr(args, "shard", None),
                         buffer=True if getattr(args, "buffer", False) else None,
                         reconnect_s=getattr(args, "reconnect", 10.0), max_file_mb=getattr(args, "max_file_mb", None))


def source_root(args: argparse.Namespace) -> str | None:
    """The folder outputs mirror (a folder source), else None."""
    return source_spec(args).root


def frame_outputs(args: argparse.Namespace) -> tuple[bool, bool, bool]:
    """``(per-frame images, annotated video, COCO JSON pair)`` for detect/segment: image sources
    default to images, video and stream sources to ``OUT/<stem>.mp4`` plus the JSON pair (frames
    are not files a user can open later, so the predictions must be kept); ``--save-images`` /
    ``--save-video`` / ``--save-json`` / ``--coco-gt`` add either, ``--no-images`` drops the images.
    A streams file (many cameras, open-ended) keeps its predictions in JSON lines instead (written
    as they come: :func:`common_sinks`), so the COCO pair is written only when asked for."""
    if getattr(args, "ray", None):  # Ray runs write data files only (see cvapps.engine.ray_predict)
        return False, False, True
    spec = source_spec(args)
    video_source = spec.is_video  # a video file, webcam, stream URL or streams file
    images = (getattr(args, "save_images", False) or not video_source) and not getattr(args, "no_images", False)
    video = bool(getattr(args, "save_video", False) or video_source)
    json = bool(getattr(args, "save_json", False) or getattr(args, "coco_gt", None)
                or (video_source and spec.kind != "streams"))
    return images, video, json


def common_sinks(args: argparse.Namespace, predictor: Any, draw: Callable | None = None, *,
                 video: bool | None = None, images: bool | None = None) -> list[Any]:
    """Sinks for the annotated video, annotated images (``OUT/annotated/``), --save-jsonl, --show and
    --serve (in that order). video/images: override --save-video/--save-images (detect and segment
    decide with :func:`frame_outputs` and write their own images). A streams file gets one video
    per stream (``OUT/<stream>.mp4``) and ``OUT/predictions.jsonl`` (with its gap events) by default."""
    from cvapps.io.sinks import AnnotatedImages, JsonLinesSink, VideoPerSource, VideoWriterSink, make_drawer

    if getattr(args, "ray", None):
        asked = [flag for flag, on in (("--save-video", getattr(args, "save_video", False)),
                                       ("--save-images", getattr(args, "save_images", False)),
                                       ("--show", getattr(args, "show", False)),
                                       ("--serve", getattr(args, "serve", None)), ("--shard", getattr(args, "shard", None)),
                                       ("--track", getattr(args, "track", None)),
                                       ("--count-line", getattr(args, "count_line", None)),
                                       ("--zone", getattr(args, "zone", None)))
                 if on]
        if asked:
            raise CvappsError(f"--ray writes JSON/CSV outputs only: drop {', '.join(asked)} (or run without --ray)")
        video = images = False
    draw = draw or make_drawer(predictor.class_names)
    out = Path(args.out)
    root = source_root(args)
    streams = source_spec(args).kind == "streams"
    sinks: list[Any] = []
    if getattr(args, "save_video", False) if video is None else video:
        sinks.append(VideoPerSource(out, draw) if streams else VideoWriterSink(out / f"{_source_stem(args.source)}.mp4",
                                                                                draw))
    if getattr(args, "save_images", False) if images is None else images:
        sinks.append(AnnotatedImages(out / "annotated", draw, root=root))
    if getattr(args, "save_jsonl", False) or streams:
        sinks.append(JsonLinesSink(out / "predictions.jsonl", predictor.class_names, root=root))
    if getattr(args, "show", False) or getattr(args, "serve", None):
        from cvapps.io.preview import MJPEGServer, PreviewWindow, exposure_warning

        if args.show:
            sinks.append(PreviewWindow(draw))
        if args.serve:
            server = MJPEGServer(args.serve, draw)
            warning = exposure_warning(server.host, server.port)
            if warning:  # printed even with --quiet: it is about who can see the user's stream
                print(warning, file=sys.stderr)
            if not getattr(args, "quiet", False):
                print(f"serving the live preview at {server.url}", file=sys.stderr)
            sinks.append(server)
    return sinks


def run_common(args: argparse.Namespace, predictor: Any, sinks: list[Any], options: dict[str, Any] | None = None) -> Any:
    """Run SOURCE through ``predictor`` into ``sinks`` with the common options; print the reports.

    Returns the :class:`~cvapps.engine.runner.RunReport`. Outputs are valid even when the run was
    stopped by Ctrl-C/SIGTERM (``report.interrupted``).
    """
    from cvapps.engine.runner import run_source
    from cvapps.io.guard import protected
    from cvapps.io.images import large_images_allowed
    from cvapps.io.run_dirs import removed_if_failed
    from cvapps.io.sources import local_inputs

    spec, read = source_spec(args), source_options(args)
    others = (getattr(args, "model", None), getattr(args, "coco_gt", None))
    # no output may replace an input; files over the size cap are skipped unread (read.max_file_mb)
    # a run that fails before writing anything leaves no empty OUT behind
    allow_large = large_images_allowed(True if getattr(args, "allow_large", False) else None)  # --allow-large
    with allow_large, removed_if_failed(args.out), protected(args.out, *local_inputs(spec), others=others):
        if getattr(args, "ray", None):
            return _run_ray(args, predictor, sinks, options, read)
        report = run_source(predictor, spec, sinks, progress=not args.quiet, options=options, source_options=read)
    if Path(args.out).is_dir():  # the summary line names the folder (none when nothing was written)
        report.out = str(args.out)
    if not args.quiet:
        print(report.timing_report(), file=sys.stderr)
    return report


def _run_ray(args: argparse.Namespace, predictor: Any, sinks: list[Any], options: dict[str, Any] | None,
             read: SourceOptions) -> Any:
    """``--ray``: the same sinks fed by :func:`cvapps.engine.ray_predict.run_ray`; the workers load the
    model file themselves (a multitask model's part, if the predictor runs one)."""
    from cvapps.engine.ray_predict import RayCluster, RayModel, run_ray

    model = RayModel(args.model, dict(options or {}), args.batch, args.device, args.trust_model,
                     predictor.task.part)
    report = run_ray(model, source_spec(args), sinks, args.out, RayCluster(args.ray, args.ray_actors),
                     options=read, progress=not args.quiet)
    if report.interrupted:  # nothing was written (run_ray said what is done): stop here, as Ctrl-C does
        raise KeyboardInterrupt
    if not args.quiet:
        print(f"ray: predicted {plural(report.predicted, 'frame')} in {report.wall_s:.2f} s; {report.resumed} of "
              f"{report.items} items were done by an earlier run", file=sys.stderr)
    return report


def print_written(sinks: list[Any]) -> None:
    """``wrote PATH`` for each sink with a ``path`` that exists (files only appear complete)."""
    from cvapps.formats.names import safe_name

    for sink in sinks:
        # a sink with many files (a video per stream) lists them in ``paths``
        for path in getattr(sink, "paths", [getattr(sink, "path", None)]):
            if path is not None and Path(path).exists():
                print(f"wrote {safe_name(str(path))}")


def exit_code(report: Any) -> int:
    """0 for a complete run; 128 + signal number when a signal stopped it (outputs are still valid);
    1, with one ``error:`` line, when the run processed nothing at all (every input unreadable, or
    none there): a script must not take an empty run for a successful one."""
    import signal

    if report.interrupted:
        return 128 + int(getattr(signal, report.interrupted, signal.SIGINT))
    if not report.processed:
        why = (f"all {len(report.skipped)} inputs were skipped (see above)" if report.skipped
               else "the source gave no frames")
        print(f"error: nothing was processed: {why}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images with a classification checkpoint",
                       description="Classify every image of SOURCE; writes OUT/predictions.csv "
                                   "(path,label,score and the top-k) and prints a per-class count.")
    add_common(p)
    add_classify_args(p)
    p.set_defaults(func=cmd_classify)


def cmd_classify(args: argparse.Namespace) -> int:
    from cvapps.api import load

    check_classify_args(args)  # bad options fail before the model loads
    model = load(args.model, device=args.device, batch=args.batch, trust=args.trust_model,
                 runtime=getattr(args, "runtime", None), **load_options(args))
    return run_classify(args, model.part("classify"))  # a model of another kind: a one-line error


def run_classify(args: argparse.Namespace, model: Any) -> int:
    """``cvapps classify`` with ``model`` (a :class:`cvapps.api.Model`) already loaded."""
    from cvapps.io.sinks import ClassificationCSV

    check_classify_args(args)
    predictor = model.predictor
    csv_sink = ClassificationCSV(Path(args.out) / "predictions.csv", predictor.class_names, args.topk)
    sinks = [csv_sink, *common_sinks(args, predictor)]
    report = run_common(args, predictor, sinks, {"topk": args.topk})
    print_written(sinks)
    print(f"{report.summary()}; predicted: {csv_sink.summary() or 'nothing'}")
    return exit_code(report)
