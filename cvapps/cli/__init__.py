"""``cvapps`` command line: thin wrappers that parse, build and call the library.

Each command group lives in its own module with ``register(subparsers)``; errors caused by the
user's input (:class:`~cvapps.errors.CvappsError`) print as one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from cvapps import __version__
from cvapps.errors import CvappsError

# Modules that add subcommands, in the order `cvapps --help` lists them.
COMMAND_MODULES = [
    "cvapps.cli.demo",      # demo
    "cvapps.cli.train",     # train, val, summary
    "cvapps.cli.predict",   # classify
    "cvapps.cli.segment",   # segment
    "cvapps.cli.detect",    # detect (Faster R-CNN, YOLO, native ultralytics)
    "cvapps.cli.data",      # data synth|check|convert
    "cvapps.cli.tools",     # export, merge-json
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


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        # Past a file-size limit (`ulimit -f`) the write fails with EFBIG, reported as one line,
        # instead of the signal killing the process with a core dump.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Overrides may follow options (`train CFG --quiet train.lr=0.1`); argparse would stop there.
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        result = args.func(args)
    except CvappsError as exc:
        print(f"error: {exc}" if not str(exc).startswith("config error") else str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
