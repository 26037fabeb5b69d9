"""Shared backbones: one contract (:class:`Backbone`), one registry, one builder."""

from cvapps.backbones.base import Backbone, FeatureInfo, check_backbone, conv_output_size
from cvapps.backbones.registry import BACKBONES, build_backbone, register_backbone

__all__ = ["BACKBONES", "Backbone", "FeatureInfo", "build_backbone", "check_backbone",
           "conv_output_size", "register_backbone", "available_backbones"]


def available_backbones() -> list[str]:
    from cvapps.backbones import course, tiny, torchvision_nets  # noqa: F401

    return sorted(BACKBONES)
