"""The CPU inference form's second step (engine/packed_conv.py): convolutions prepacked for oneDNN with
their activation fused in give the model's own numbers, in both memory layouts and for input sizes other
than the one they were packed for, and fuse an activation only where the model's forward allows it."""

from __future__ import annotations

import copy
import pickle

import cv2
import pytest
import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from test_fuse import CONFIGS, _flat, _trained_like
from tiny_checkpoints import ROOT

from cvapps.backbones.course import lenet
from cvapps.engine.inference_form import inference_form, needs_inference_form
from cvapps.engine.load import load_model
from cvapps.engine.packed_conv import AVAILABLE, PackedConv2d, pack_convolutions
from cvapps.engine.predict import PredictOptions, Predictor

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="this torch build has no oneDNN convolution kernels")
CPU = torch.device("cpu")


def _packed(model: nn.Module) -> list[PackedConv2d]:
    return [m for m in model.modules() if isinstance(m, PackedConv2d)]


def _assert_same_outputs(model: nn.Module, form: nn.Module, shapes: list[tuple[int, ...]]) -> None:
    for i, shape in enumerate(shapes):
        x = torch.rand(*shape)
        if i % 2:  # both layouts: the packed kernel keeps the input's
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ref, out = _flat(model(x)), _flat(form(x))
        assert len(ref) == len(out) > 0
        for a, b in zip(ref, out):
            assert a.shape == b.shape
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (shape, (a - b).abs().max())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_task_model_gives_its_own_numbers(name: str) -> None:
    overrides = ("model.backbone=resnet18", "model.norm=frozen") if name == "faster_rcnn" else ()
    model = _trained_like(name, overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    form = inference_form(model, CPU)
    assert form is not model and not _packed(model), "the trained model itself is left as it is"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    packed = _packed(form)
    assert packed and not any(type(m) is nn.Conv2d for m in form.modules()), "every convolution is packed"
    if name != "faster_rcnn":  # the cvapps blocks are conv + BN + SiLU: the activation joins the kernel
        assert sum(m.attr == "swish" for m in packed) >= len(packed) // 2
    assert not needs_inference_form(form, CPU), "a second pass finds nothing to do"
    shapes = [(2, 3, 64, 64), (1, 3, 96, 64), (3, 3, 64, 96)] if name != "faster_rcnn" else [(1, 3, 64, 64)]
    _assert_same_outputs(model, form, shapes)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_large"])
def test_torchvision_backbones(backbone: str) -> None:
    """ResNet blocks apply their shared ReLU after the residual sum: their convolutions are packed alone;
    mobilenet's Conv-BN-Hardswish/ReLU blocks take the activation."""
    model = _trained_like("segment", (f"model.backbone={backbone}",))
    form = inference_form(model, CPU)
    attrs = {m.attr for m in _packed(form)}
    assert ("hardswish" in attrs) if backbone.startswith("mobilenet") else ("relu" in attrs)
    _assert_same_outputs(model, form, [(2, 3, 64, 64), (1, 3, 64, 96)])


def test_course_nets_with_tanh_and_relu() -> None:
    torch.manual_seed(0)
    model = lenet(1).eval()
    form = inference_form(model, CPU)
    assert {m.attr for m in _packed(form)} == {"tanh"}
    _assert_same_outputs(model, form, [(4, 1, 28, 28), (2, 1, 32, 32)])


def test_ultralytics_model_fuses_silu_into_its_conv_blocks() -> None:
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml").model.fuse().eval()  # ultralytics' own folding: Conv runs forward_fuse
    form = inference_form(model, CPU)
    packed = _packed(form)
    assert sum(m.attr == "swish" for m in packed) >= 50 and sum(m.attr == "none" for m in packed) >= 1
    _assert_same_outputs(model, form, [(2, 3, 160, 160), (1, 3, 128, 96)])


def test_an_activation_joins_only_a_convolution_it_directly_follows() -> None:
    torch.manual_seed(0)
    # conv1's output is returned before its ReLU: it must be packed without the activation
    body = nn.Sequential()
    body.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
    body.add_module("relu1", nn.ReLU())
    body.add_module("pool", nn.MaxPool2d(2))
    body.add_module("conv2", nn.Conv2d(4, 4, 3, padding=1))
    body.add_module("act2", nn.SiLU())
    getter = IntermediateLayerGetter(body, {"conv1": "pre_activation", "act2": "out"}).eval()
    form = inference_form(getter, CPU)
    assert form.conv1.attr == "none" and isinstance(form.relu1, nn.ReLU)
    assert form.conv2.attr == "swish" and isinstance(form.act2, nn.Identity)
    _assert_same_outputs(getter, form, [(1, 3, 16, 16), (2, 3, 12, 20)])

    class ResidualAfterAct(nn.Module):  # act is applied to a sum, not to the conv alone
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.act = nn.Conv2d(4, 4, 1), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(x) + x)

    block = ResidualAfterAct().eval()
    form = inference_form(block, CPU)
    assert form.conv.attr == "none" and isinstance(form.act, nn.ReLU)
    _assert_same_outputs(block, form, [(2, 4, 8, 8)])


def test_packed_module_falls_back_outside_the_kernel_and_survives_copies() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 2, 1)).eval()
    form = inference_form(model, CPU)
    x = torch.rand(2, 3, 10, 10)
    with torch.inference_mode():
        ref = model(x)
        out = form(x)
    assert torch.allclose(ref, out, atol=1e-5)
    # autograd: the reference conv2d runs, gradients reach the input
    xg = x.clone().requires_grad_(True)
    form(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    # copies and pickles drop the packed weights and repack on their first call
    for clone in (copy.deepcopy(form), pickle.loads(pickle.dumps(form))):
        with torch.inference_mode():
            assert torch.allclose(clone(x), ref, atol=1e-5)
    # new weights loaded after packing are used (repacked), not the stale packed copy
    other = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 2, 1)).eval()
    form.load_state_dict(other.state_dict())
    with torch.inference_mode():
        assert torch.allclose(form(x), other(x), atol=1e-5)
    assert set(form.state_dict()) == set(model.state_dict()), "same state-dict keys as the model"



class _BrokenOps:
    """Stands for a torch whose private oneDNN ops changed: every call fails."""

    def __getattr__(self, name: str):
        def fail(*args, **kwargs):
            raise RuntimeError(f"mkldnn::{name} has no kernel for these arguments")
        return fail


def test_failing_private_ops_fall_back_to_plain_convolutions_with_one_warning(monkeypatch) -> None:
    import cvapps.engine.packed_conv as packed_conv

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 2, 1), nn.ReLU()).eval()
    form = inference_form(model, CPU)
    assert len(_packed(form)) == 2
    monkeypatch.setattr(packed_conv, "_ops", _BrokenOps())
    monkeypatch.setattr(packed_conv, "_failed", False)
    monkeypatch.setattr(packed_conv, "AVAILABLE", True)
    x = torch.rand(2, 3, 12, 12)
    with pytest.warns(RuntimeWarning, match="running plain convolutions") as caught:
        with torch.inference_mode():
            outs = [form(x) for _ in range(3)]
            ref = model(x)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1, "one warning, not one per call"
    for out in outs:
        assert torch.allclose(out, ref, atol=1e-5)
    assert not packed_conv.AVAILABLE and pack_convolutions(nn.Sequential(nn.Conv2d(3, 4, 3))) == 0, \
        "later models are not packed once the ops failed"

def test_pack_convolutions_counts_what_it_packed() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, padding_mode="reflect", padding=1),
                          nn.Conv2d(4, 4, 3, padding="same"))
    assert pack_convolutions(model) == 1, "reflect padding and string padding stay plain convolutions"
    assert isinstance(model[0], PackedConv2d) and model[0].attr == "relu"


def test_a_loaded_checkpoint_is_packed_in_place_and_predicts_as_before() -> None:
    path = ROOT / "sample_data" / "models" / "detect.pt"
    trained = load_model(path, device="cpu")
    reference = Predictor(trained.task, trained.model, trained.class_names, trained.preprocessing,
                          PredictOptions(device="cpu", fuse=False))
    assert not _packed(reference.model), "fuse=False: the model as trained"
    loaded = load_model(path, device="cpu")
    predictor = loaded.predictor()
    assert predictor.model is loaded.model and _packed(loaded.model), "no copy: the loaded model only predicts"
    folder = ROOT / "sample_data" / "shapes" / "images" / "val"
    for file in sorted(folder.iterdir())[:3]:
        image = cv2.imread(str(file))
        a, b = reference(image).detections, predictor(image).detections
        assert len(a.boxes) == len(b.boxes) > 0
        assert torch.allclose(a.boxes, b.boxes, atol=1e-2) and torch.allclose(a.scores, b.scores, atol=1e-4)


@pytest.mark.parametrize(("activation", "attr"), [(nn.ReLU(), "relu"), (nn.SiLU(), "swish"), (nn.Hardswish(), "hardswish"),
                                                  (nn.Sigmoid(), "sigmoid"), (nn.Tanh(), "tanh"),
                                                  (nn.LeakyReLU(0.1), "leaky_relu"), (nn.ReLU6(), "hardtanh")])
def test_each_supported_activation_is_fused_with_its_own_numbers(activation: nn.Module, attr: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), activation).eval()
    form = inference_form(model, CPU)
    assert form[0].attr == attr and isinstance(form[1], nn.Identity)
    x = 4 * torch.randn(2, 3, 9, 11)  # both sides of every activation's knees (ReLU6's 6, LeakyReLU's 0)
    with torch.inference_mode():
        assert torch.allclose(model(x), form(x), atol=1e-5)
