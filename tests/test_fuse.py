"""The inference form of a model: BatchNorm folding (engine/fuse.py) and the FCN's x8 transposed
convolution computed as convolution + pixel shuffle (heads/fcn.py) give the numbers of the model
as trained, and leave the trained model itself untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from tiny_checkpoints import ROOT

from cvapps.engine.fuse import fusable, fuse_batchnorm
from cvapps.engine.load import load_model
from cvapps.engine.predict import PredictOptions, Predictor
from cvapps.heads.fcn import FCN8sHead, bilinear_upsampler, transposed_conv_as_subpixel
from cvapps.tasks import get_task, load_config

NAMES = ["circle", "square", "triangle"]
CONFIGS = {"classify": "classify_shapes.yaml", "segment": "segment_shapes.yaml", "yolo": "yolo_shapes.yaml",
           "multitask": "multitask_shapes.yaml", "faster_rcnn": "faster_rcnn_shapes.yaml"}
FOLDED = ("classify", "segment", "yolo", "multitask")


def _trained_like(name: str, overrides: tuple[str, ...] = ()) -> nn.Module:
    """A model of the shipped config with BatchNorm statistics and affine terms away from their
    initial values (so folding has something to fold)."""
    cfg = load_config(ROOT / "configs" / CONFIGS[name], ["train.device=cpu", "data.imgsz=64", *overrides])
    torch.manual_seed(0)
    model = get_task(cfg.task).build_model(cfg, ["background", *NAMES] if name == "segment" else NAMES)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.modules())


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_large"])
def test_torchvision_backbones_are_folded_too(backbone: str) -> None:
    model = _trained_like("segment", (f"model.backbone={backbone}",))
    fused = fuse_batchnorm(model)
    assert _batchnorms(fused) == 0, "ResNet stem and blocks, mobilenet's Conv-BN-activation blocks: all folded"
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model(x), fused(x), rtol=1e-4, atol=1e-4)


def test_faster_rcnn_frozen_batchnorms_are_folded() -> None:
    model = _trained_like("faster_rcnn", ("model.backbone=resnet18", "model.norm=frozen"))
    body = model.backbone.body
    assert _batchnorms(body) > 0
    fused = fuse_batchnorm(model)
    assert _batchnorms(fused.backbone.body) == 0
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        ref, out = body(x), fused.backbone.body(x)
    assert ref.keys() == out.keys()
    for key in ref:
        assert torch.allclose(ref[key], out[key], rtol=1e-4, atol=1e-4), key


def _flat(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat(v)]
    return []


@pytest.mark.parametrize("name", FOLDED)
def test_folded_model_gives_the_same_outputs_and_leaves_the_original(name: str) -> None:
    model = _trained_like(name)
    assert fusable(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fused = fuse_batchnorm(model)
    assert fused is not model
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) < bns
    assert not fusable(fused), "every Conv2d -> BatchNorm2d pair is folded"
    # the trained model is untouched: same BatchNorms, same tensors
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bns
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ref, out = _flat(model(x)), _flat(fused(x))
    assert len(ref) == len(out) > 0
    for a, b in zip(ref, out):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (a - b).abs().max()


def test_predictor_runs_the_folded_copy_only_when_it_owns_the_model() -> None:
    model = _trained_like("yolo")
    task = get_task("yolo")
    owned = Predictor(task, model, NAMES, {"imgsz": 64}, PredictOptions(device="cpu"))
    assert owned.model is not model and not fusable(owned.model)
    training = Predictor(task, model, NAMES, {"imgsz": 64}, PredictOptions(device="cpu", channels_last=False, fuse=False))
    assert training.model is model, "a model under training is run as it is"
    nchw = Predictor(task, model, NAMES, {"imgsz": 64}, PredictOptions(device="cpu", channels_last=False))
    assert nchw.model is not model and not fusable(nchw.model), "the layout choice does not turn folding off"
    assert nchw.memory_format == torch.contiguous_format
    as_is = Predictor(task, model, NAMES, {"imgsz": 64}, PredictOptions(device="cpu", fuse=False))
    assert as_is.model is model and as_is.memory_format == torch.channels_last, "nor folding the layout choice"


@pytest.mark.parametrize(("channels_in", "channels_out", "factor", "size"),
                         [(4, 4, 8, (20, 20)), (3, 5, 2, (5, 7)), (21, 21, 8, (3, 9)), (2, 2, 4, (6, 1))])
def test_transposed_conv_as_subpixel_equals_the_transposed_conv(channels_in: int, channels_out: int, factor: int,
                                                                 size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(channels_in, channels_out, 2 * factor, stride=factor, bias=False)
    x = torch.randn(2, channels_in, *size)
    with torch.no_grad():
        ref = conv(x)
        out = transposed_conv_as_subpixel(conv, x)
    assert out.shape == ref.shape == (2, channels_out, (size[0] + 1) * factor, (size[1] + 1) * factor)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_fcn_head_inference_path_matches_training_path() -> None:
    torch.manual_seed(0)
    head = FCN8sHead((8, 16, 32), 4).eval()
    with torch.no_grad():  # learned, not bilinear, upsamplers
        for up in (head.up32, head.up16, head.up8):
            up.weight.add_(0.05 * torch.randn_like(up.weight))
        for score in (head.score8, head.score16):
            score.weight.normal_(0, 0.1)
    feats = (torch.randn(2, 8, 12, 10), torch.randn(2, 16, 6, 5), torch.randn(2, 32, 3, 3))
    with torch.enable_grad():
        ref = head(feats, (90, 77))  # grad mode: the ConvTranspose2d modules themselves
    with torch.inference_mode():
        out = head(feats, (90, 77))  # CPU inference: convolution + pixel shuffle for x8
    assert out.shape == ref.shape == (2, 4, 90, 77)
    assert torch.allclose(out, ref.detach(), atol=1e-5)
    assert isinstance(bilinear_upsampler(4, 8), nn.ConvTranspose2d), "the learned layer stays a transposed conv"


def test_a_loaded_model_is_folded_in_place_by_its_predictor() -> None:
    loaded = load_model(ROOT / "sample_data" / "models" / "detect.pt", device="cpu")
    assert fusable(loaded.model)
    predictor = loaded.predictor()
    assert predictor.model is loaded.model and not fusable(loaded.model), "no copy: the loaded model only predicts"
