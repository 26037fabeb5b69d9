"""``cvapps train``, ``cvapps val`` and ``cvapps summary``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train any task from a YAML config. Writes OUT/last.pt, OUT/best.pt, "
                                   "OUT/metrics.csv and loss/metric plots. Resume with train.resume=true.")
    p.add_argument("config", help="YAML config, e.g. configs/classify_shapes.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=3")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--trust-model", action="store_true",
                   help="task ultralytics: allow model files that need a full unpickle (runs code stored in them)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("val", help="evaluate a checkpoint on a dataset's val split",
                       description="Evaluate a checkpoint: accuracy and per-class precision/recall "
                                   "(classification), mIoU (segmentation), COCO mAP (detection). "
                                   "Plots go to --out (default: the checkpoint's folder).")
    p.add_argument("checkpoint", help="a model cvapps train wrote (cvapps or ultralytics .pt), or an ONNX export")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.root=path/to/dataset")
    p.add_argument("--out", help="folder for plots and the metrics JSON")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8, as the predict commands)")
    p.add_argument("--trust-model", action="store_true",
                   help="allow a model file that can only be read by a full unpickle (it can run code stored "
                        "in the file; also CVAPPS_TRUST_MODEL=1)")
    p.set_defaults(func=cmd_val)

    p = sub.add_parser("summary", help="layer table with output shapes and parameter counts",
                       description="Print a torchinfo table (output shape and parameters of every layer) "
                                   "for a config or a checkpoint.")
    p.add_argument("source", help="a YAML config or a cvapps checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--depth", type=int, default=4, help="module nesting depth to show (default 4)")
    p.set_defaults(func=cmd_summary)


def cmd_train(args: argparse.Namespace) -> int:
    from cvapps.engine.train import train
    from cvapps.tasks import load_config

    cfg = load_config(args.config, args.overrides)
    train(cfg, progress=not args.quiet, trust=args.trust_model)
    return 0


def cmd_val(args: argparse.Namespace) -> int:
    from cvapps.engine.evaluate import evaluate_checkpoint, metrics_json

    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    metrics = evaluate_checkpoint(args.checkpoint, args.overrides, out, trust=args.trust_model,
                                  batch=max(1, args.batch))
    print(metrics_json(metrics))  # valid JSON: an undefined metric is null, not NaN
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from cvapps.engine.summary import summarize

    print(summarize(args.source, args.overrides, depth=args.depth))
    return 0
