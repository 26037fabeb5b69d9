"""Config validation: unknown keys and wrong types are one-line errors naming the key (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cvapps.cli import main
from cvapps.config import parse_overrides
from cvapps.tasks import load_config
from cvapps.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    for key in ("task", "model", "data", "train", "out"):
        assert hasattr(cfg, key)
    assert cfg.model.arch and cfg.model.backbone and cfg.data.root and cfg.data.imgsz > 0
    assert cfg.train.epochs > 0 and cfg.train.batch > 0 and cfg.train.lr > 0 and cfg.train.device


def test_overrides_apply_with_yaml_types() -> None:
    cfg = load_config(REPO / "configs/classify_shapes.yaml", ["train.lr=0.5", "train.epochs=2", "data.names=[a, b, c]"])
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 2 and cfg.data.names == ["a", "b", "c"]
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize("override, message", [
    ("train.lrr=0.1", "config error: train.lrr: unknown key (known keys here: epochs"),
    ("train.lr=abc", "config error: train.lr: input should be a valid number"),
    ("train.epochs=2.5", "config error: train.epochs:"),
    ("model.pool=max", "config error: model.pool:"),
    ("task=painting", "config error: task: unknown task 'painting'"),
    ("nonsense", "is not key=value"),
])
def test_bad_config_is_one_line_error(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/classify_shapes.yaml", [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_exit_code_2_and_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "cvapps", "train", str(REPO / "configs/classify_shapes.yaml"),
                             "train.batch=many"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: train.batch: input should be a valid integer, unable to parse string as an integer, got 'many'"]


def test_missing_and_invalid_yaml(tmp_path: Path, capsys) -> None:
    assert main(["train", str(tmp_path / "absent.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: classify\nmodel: [unclosed\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "file not found" in err and "not valid YAML" in err


def test_every_subcommand_has_help(capsys) -> None:
    from cvapps.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"train", "val", "summary", "classify", "data"} <= set(commands)
    for name, sub in commands.items():
        assert sub.format_help().strip(), name
