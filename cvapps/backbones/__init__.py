"""Shared backbones: one contract (:class:`Backbone`), one registry, one builder."""

from cvapps.backbones.base import Backbone, FeatureInfo, check_backbone, conv_output_size
from cvapps.backbones.registry import BACKBONES, build_backbone, register_backbone

# The built-in backbones register themselves on import.
from cvapps.backbones import course, tiny, torchvision_nets  # noqa: E402,F401  isort: skip

__all__ = ["BACKBONES", "Backbone", "FeatureInfo", "build_backbone", "check_backbone",
           "conv_output_size", "register_backbone", "available_backbones"]


def available_backbones() -> list[str]:
    return sorted(BACKBONES)
