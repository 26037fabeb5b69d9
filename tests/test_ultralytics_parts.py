"""The wall around ultralytics (cvapps/ultralytics_parts.py): the only module that imports it, each part
loaded on first use after the version check, and the folding of ultralytics' Conv blocks falling back
to their own forward when ``forward_fuse`` fails (forced here), with one warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_fuse import _flat, _trained_like
from torch import nn

from cvapps import ultralytics_parts
from cvapps.engine.fuse import fuse_batchnorm
from cvapps.engine.inference_form import inference_form
from cvapps.engine.packed_conv import AVAILABLE, PackedConv2d
from cvapps.errors import CvappsError

ROOT = Path(__file__).resolve().parents[1]
IMPORTS_ULTRALYTICS = re.compile(r"^\s*(from\s+ultralytics[\s.]|import\s+ultralytics\b)", re.MULTILINE)


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ in ultralytics_parts.FOLDABLE_BLOCKS]


def test_no_other_cvapps_module_imports_ultralytics() -> None:
    wall = ROOT / "cvapps" / "ultralytics_parts.py"
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "cvapps").rglob("*.py"))
                 if p != wall and IMPORTS_ULTRALYTICS.search(p.read_text(encoding="utf-8"))]
    assert offenders == [], "ultralytics is imported through cvapps.ultralytics_parts only"


def test_parts_load_on_first_use_only() -> None:
    code = ("import sys, cvapps.ultralytics_parts as parts, cvapps.engine.inference_form, cvapps.nms, "
            "cvapps.analytics.tracking\n"
            "assert 'ultralytics' not in sys.modules, 'imported before any part was used'\n"
            "parts.TorchNMS\n"
            "assert 'ultralytics.utils.nms' in sys.modules and 'TorchNMS' in vars(parts)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "YOLO_OFFLINE": "1"},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_part_resolves_and_is_exported() -> None:
    for name in ultralytics_parts.PARTS:
        assert getattr(ultralytics_parts, name) is not None, name
    assert set(ultralytics_parts.PARTS) <= set(ultralytics_parts.__all__)
    assert ultralytics_parts.nn_tasks.DetectionModel is not None and callable(ultralytics_parts.ops.process_mask)
    assert len(ultralytics_parts.coco_class_names()) == 80
    with pytest.raises(AttributeError, match="no attribute 'Segment'"):
        ultralytics_parts.Segment  # noqa: B018 - not a part: an AttributeError, as for any module


@pytest.mark.parametrize("version", ["8.3.200", "8.5.0", "9.0.1", "", None])
def test_an_unsupported_ultralytics_is_a_one_line_error_naming_both_versions(version, monkeypatch) -> None:
    monkeypatch.setattr(ultralytics_parts, "installed_version", lambda: version)
    with pytest.raises(CvappsError) as caught:
        ultralytics_parts.check_version()
    message = str(caught.value)
    assert "\n" not in message and ultralytics_parts.SUPPORTED_TEXT in message
    assert (f"ultralytics {version} is installed" if version else "ultralytics is not installed") in message
    with pytest.raises(CvappsError, match="ultralytics internals"):  # a part not loaded yet: the same error
        ultralytics_parts.__getattr__("TorchNMS")


def test_supported_versions() -> None:
    assert ultralytics_parts.check_version() == ultralytics_parts.installed_version()
    assert all(ultralytics_parts.supported(v) for v in ("8.4.0", "8.4.190", "8.4.7.dev0"))
    assert not any(ultralytics_parts.supported(v) for v in ("8.3.9", "8.40.0", "8.5.0", "80.4.0", "x", None))


def test_folding_an_ultralytics_block_runs_forward_fuse() -> None:
    model = _trained_like("yolo")
    fused = fuse_batchnorm(model)
    blocks = _blocks(fused)
    assert blocks and all(isinstance(b.bn, nn.Identity) for b in blocks)
    assert all(ultralytics_parts.runs_act_of_conv(b) for b in blocks)
    assert not any(ultralytics_parts.runs_act_of_conv(b) for b in _blocks(model)), "the model keeps its BN"


@pytest.mark.parametrize("packed", [False, True])
def test_a_failing_forward_fuse_falls_back_to_the_blocks_own_forward_with_one_warning(packed, monkeypatch) -> None:
    if packed and not AVAILABLE:
        pytest.skip("this torch build has no oneDNN convolution kernels")
    model = _trained_like("yolo")
    form = inference_form(model, torch.device("cpu")) if packed else fuse_batchnorm(model)
    assert packed == any(isinstance(m, PackedConv2d) for m in form.modules())
    monkeypatch.setattr(ultralytics_parts, "_fold_failed", False)

    def changed(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward_fuse changed")

    monkeypatch.setattr(ultralytics_parts.Conv, "forward_fuse", changed)  # DWConv inherits it
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ref = _flat(model(x))
        with pytest.warns(RuntimeWarning, match="forward_fuse failed") as caught:
            outs = [_flat(form(x)) for _ in range(3)]
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1, "one warning, not one per call"
    for out in outs:
        assert len(out) == len(ref) > 0
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(ref, out))
    later = fuse_batchnorm(model)
    assert all(isinstance(b.bn, nn.BatchNorm2d) for b in _blocks(later)), "later folds leave the blocks as they are"


def test_on_an_unsupported_ultralytics_the_blocks_are_left_unfolded(monkeypatch) -> None:
    monkeypatch.setattr(ultralytics_parts, "installed_version", lambda: "8.5.0")
    model = _trained_like("yolo")
    fused = fuse_batchnorm(model)
    assert all(isinstance(b.bn, nn.BatchNorm2d) and "forward" not in vars(b) for b in _blocks(fused))
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(_flat(model(x)), _flat(fused(x))))


def test_a_bad_input_is_not_taken_for_a_failing_forward_fuse(monkeypatch) -> None:
    monkeypatch.setattr(ultralytics_parts, "_fold_failed", False)
    block = ultralytics_parts.Conv(3, 8, 3).eval()
    fused = fuse_batchnorm(block)
    assert fused.forward is not block.forward and isinstance(fused.bn, nn.Identity)
    with pytest.raises(RuntimeError), torch.inference_mode():
        fused(torch.rand(1, 5, 16, 16))  # wrong channel count: the block's own error, forward_fuse kept
    assert not ultralytics_parts._fold_failed
