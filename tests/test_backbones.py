"""The backbone contract, parametrized over the registry; weights files; freezing."""

from __future__ import annotations

import pytest
import torch
import torchvision

from cvapps.backbones import available_backbones, build_backbone, check_backbone, conv_output_size
from cvapps.errors import CheckpointError, CvappsError

COURSE_NETS = {"lenet", "mnist_convnet"}


@pytest.mark.parametrize("name", available_backbones())
def test_backbone_contract(name: str) -> None:
    in_ch, size = (1, 28) if name in COURSE_NETS else (3, 64)
    backbone = build_backbone(name, in_channels=in_ch, check_size=size).eval()
    with torch.no_grad():
        out = backbone(torch.rand(2, in_ch, size + 32, size + 32))
    assert list(out) == [f.name for f in backbone.feature_info]
    for info in backbone.feature_info:
        assert out[info.name].shape[:2] == (2, info.channels)
        if name not in COURSE_NETS:
            assert out[info.name].shape[-1] == (size + 32) // info.stride
    if name not in COURSE_NETS:
        assert [f.stride for f in backbone.feature_info] == [4, 8, 16, 32]


def test_check_backbone_catches_wrong_declaration() -> None:
    backbone = build_backbone("tiny")
    backbone.feature_info[0] = type(backbone.feature_info[0])("c2", 999, 4)
    with pytest.raises(AssertionError, match="999"):
        check_backbone(backbone)


def test_tiny_is_small() -> None:
    assert sum(p.numel() for p in build_backbone("tiny").parameters()) < 1_000_000


def test_conv_output_size_matches_torch() -> None:
    for n, f, p, s in [(28, 3, 0, 1), (13, 3, 0, 1), (224, 7, 3, 2), (11, 2, 0, 2)]:
        conv = torch.nn.Conv2d(1, 1, f, s, p)
        assert conv(torch.zeros(1, 1, n, n)).shape[-1] == conv_output_size(n, f, p, s)


def test_torchvision_weights_file_loads(tmp_path) -> None:
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone("resnet18", weights=path)
    assert torch.equal(backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(backbone.conv1.weight, reference.conv1.weight)


def test_mismatched_weights_file_names_file_and_keys(tmp_path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"wrong\.pth.*(shape mismatch|missing|unexpected).*layer"):
        build_backbone("resnet18", weights=path)
    with pytest.raises(CheckpointError, match="not found"):
        build_backbone("resnet18", weights=tmp_path / "absent.pth")


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(CvappsError, match="unknown backbone 'resnet19'.*resnet18"):
        build_backbone("resnet19")


def test_freeze_first_stages_and_whole_backbone() -> None:
    backbone = build_backbone("resnet18", freeze=2)
    backbone.train()
    stages = backbone.stages()
    assert not any(p.requires_grad for s in stages[:2] for p in s.parameters())
    assert all(p.requires_grad for s in stages[2:] for p in s.parameters())
    assert not backbone.bn1.training and backbone.layer2[0].bn1.training
    frozen = build_backbone("tiny", freeze=-1)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_require_strides_names_the_user() -> None:
    with pytest.raises(CvappsError, match="fcn8s needs backbone features at strides"):
        build_backbone("lenet", in_channels=1, check_size=28).require_strides((8, 16, 32), "fcn8s")
