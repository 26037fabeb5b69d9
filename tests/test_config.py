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


@pytest.mark.parametrize("override, message", [
    ("train.grad_clip=-5", "config error: train.grad_clip: input should be greater than 0, got -5"),
    ("train.epochs=true", "config error: train.epochs: should be a number, not true/false, got True"),
    ("train.lr=yes", "config error: train.lr: should be a number, not true/false"),
    ("model.hidden=[8, true]", "config error: model.hidden: should be a number, not true/false"),
    ("train.lr=.inf", "config error: train.lr: input should be a finite number"),
    ("task=[classify]", "config error: task: should be a task name, got ['classify']"),
    ("data.imgsz=100000", "config error: data.imgsz: input should be less than or equal to 8192"),
    ("train.seed=-1", "config error: train.seed: input should be greater than or equal to 0"),
    ("data.names=[&a x, *a]", "YAML anchors and aliases (&name, *name) are not allowed"),
    ("data.names=" + "[" * 100_000, "nested more than 32 levels deep"),
])
def test_typed_fields_reject_nonsense(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/classify_shapes.yaml", [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_null_grad_clip_and_exponent_lr_still_accepted() -> None:
    cfg = load_config(REPO / "configs/classify_shapes.yaml", ["train.grad_clip=null", "train.lr=1e-3"])
    assert cfg.train.grad_clip is None and cfg.train.lr == 1e-3


def test_quoted_values_are_cut_short() -> None:
    huge = "x" * 5_000_000
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/classify_shapes.yaml", [f"train.optimizer={huge}"])
    assert len(str(info.value)) < 200 and str(info.value).startswith("config error: train.optimizer:")


def _config_file(tmp_path: Path, name: str, extra: str) -> Path:
    path = tmp_path / name
    path.write_text((REPO / "configs/classify_shapes.yaml").read_text() + extra)
    return path


def test_hostile_config_files_are_one_line_errors(tmp_path: Path, capsys) -> None:
    # An alias bomb (10 levels of 10 aliases: 10**10 strings once expanded) is refused before it
    # expands, as are a config that is not UTF-8, absurd nesting and a task that is not a name.
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    cases = {
        _config_file(tmp_path, "bomb.yaml", "\n".join(bomb) + "\n"): "anchors and aliases (&name, *name) are not allowed",
        _config_file(tmp_path, "deep.yaml", "x: " + "[" * 100_000 + "]" * 100_000 + "\n"): "nested more than 32 levels",
        tmp_path / "task.yaml": "config error: task: should be a task name",
    }
    latin = tmp_path / "latin.yaml"
    latin.write_bytes((REPO / "configs/classify_shapes.yaml").read_bytes() + "# caf\xe9\n".encode("latin-1"))
    cases[latin] = "not UTF-8 text"
    (tmp_path / "task.yaml").write_text((REPO / "configs/classify_shapes.yaml").read_text()
                                        .replace("task: classify", "task: [classify]"))
    for path, message in cases.items():
        assert main(["train", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and len(err) < 200, (path.name, err[:300])
