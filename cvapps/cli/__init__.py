"""``cvapps`` command line: thin wrappers that parse, build and call the library.

Each command group lives in its own module with ``register(subparsers)``; errors caused by the
user's input (:class:`~cvapps.errors.CvappsError`) print as one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from cvapps import __version__
from cvapps.errors import CvappsError
from cvapps.io.run_dirs import numbered_run

# Modules that add subcommands, in the order `cvapps --help` lists them.
COMMAND_MODULES = [
    "cvapps.cli.demo",      # demo
    "cvapps.cli.train",     # train, val, summary
    "cvapps.cli.predict",   # classify
    "cvapps.cli.segment",   # segment
    "cvapps.cli.detect",    # detect (Faster R-CNN, YOLO, native ultralytics)
    "cvapps.cli.run",       # predict (any task; a multitask model whole)
    "cvapps.cli.data",      # data synth|check|convert
    "cvapps.cli.tools",     # export, merge-json
    "cvapps.cli.benchmark",  # benchmark (runtimes side by side)
    "cvapps.cli.analytics",  # track-eval (HOTA / IDF1 / MOTA of MOT files)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvapps",
        description="Computer-vision applications on one shared CNN backbone: classification, FCN "
                    "segmentation, Faster R-CNN and YOLO detection, over images, folders, video and streams.",
        epilog="Configs are YAML files in configs/; any key can be overridden as dotted key=value, "
               "e.g. `cvapps train configs/classify_shapes.yaml train.epochs=5 train.device=cpu`.",
    )
    parser.add_argument("--version", action="version", version=f"cvapps {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


@contextlib.contextmanager
def quiet_output(enabled: bool) -> Iterator[None]:
    """``--quiet``: nothing on stderr but errors, for the duration of the command.

    Library chatter is switched off at its source (ultralytics' logger and progress bars via
    ``YOLO_VERBOSE``, OpenCV's log level, Python warnings); what native code (OpenCV, FFmpeg)
    still prints to file descriptor 2 goes to the null device, while Python's ``sys.stderr``
    keeps writing to the real stderr, so cvapps' own one-line errors still show.
    """
    if not enabled:
        yield
        return
    quiet_env = {"YOLO_VERBOSE": "False",  # read when ultralytics is first imported
                 "OPENCV_LOG_LEVEL": "ERROR",
                 "OPENCV_FFMPEG_LOGLEVEL": "-8"}  # AV_LOG_QUIET, read at FFmpeg's first use
    previous_env = {key: os.environ.get(key) for key in quiet_env}
    os.environ.update(quiet_env)
    ultralytics_logger = logging.getLogger("ultralytics")  # in case ultralytics is imported already
    previous_logger_level = ultralytics_logger.level
    ultralytics_logger.setLevel(logging.ERROR)
    import cv2  # heavy: imported here so that `cvapps --help` stays fast

    cv_logging = getattr(getattr(cv2, "utils", None), "logging", None)
    previous_level = cv_logging.getLogLevel() if cv_logging is not None else None
    if cv_logging is not None:
        cv_logging.setLogLevel(cv_logging.LOG_LEVEL_ERROR)  # no OpenCV warnings
    old_stderr = sys.stderr
    try:
        stderr_is_fd2 = old_stderr.fileno() == 2  # else a test harness has replaced sys.stderr
    except (OSError, ValueError, AttributeError):
        stderr_is_fd2 = False
    try:
        old_stderr.flush()
        saved_fd: int | None = os.dup(2)
    except OSError:  # no fd 2 at all: the log levels above must do
        saved_fd = None
    if saved_fd is not None:
        if stderr_is_fd2:  # Python's own stderr keeps the real terminal/pipe
            sys.stderr = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding=old_stderr.encoding,
                                   errors="backslashreplace")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if saved_fd is not None:
            if sys.stderr is not old_stderr:
                sys.stderr.flush()
                sys.stderr.close()
                sys.stderr = old_stderr
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        if cv_logging is not None and previous_level is not None:
            cv_logging.setLogLevel(previous_level)
        ultralytics_logger.setLevel(previous_logger_level)
        for key, value in previous_env.items():  # main() may be called again in this process
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM")


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGXFSZ ignored: past a file-size limit (`ulimit -f`) a write fails with EFBIG, reported as one
    line, instead of the signal killing the process with a core dump. SIGTERM (when nothing else
    handles it) stops the command like Ctrl-C, so its ``finally`` blocks remove temporary files
    (a killed `data synth` would leave a half-written video); commands that stop more gently
    (prediction runs, Ray) install their own handler while they run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield
    finally:
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    with _signals():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Overrides may follow options (`train CFG --quiet train.lr=0.1`); argparse would stop there.
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "default_out", None) and args.out is None:
        # predict commands: a new numbered folder per run unless --out or --exist-ok (--ray resumes in its OUT)
        args.out = str(numbered_run(args.default_out, args.exist_ok or bool(getattr(args, "ray", None))))
    with quiet_output(bool(getattr(args, "quiet", False))):
        try:
            result = args.func(args)
        except CvappsError as exc:
            print(f"error: {exc}" if not str(exc).startswith("config error") else str(exc), file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt as exc:
            print("interrupted", file=sys.stderr)
            return 128 + (signal.SIGTERM if str(exc) == "SIGTERM" else signal.SIGINT)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
