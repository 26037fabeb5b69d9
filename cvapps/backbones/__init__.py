"""Shared backbones: one contract (:class:`Backbone`), one registry, one builder.

Backbone modules (``tiny``, ``course``, ``torchvision_nets``) are imported by the registry when a
backbone of theirs is first built, not here.
"""

from cvapps.backbones.base import (
                                       Backbone,
                                       FeatureInfo,
                                       check_backbone,
                                       conv_output_size,
)
from cvapps.backbones.registry import (
                                       BACKBONE_MODULES,
                                       BACKBONES,
                                       available_backbones,
                                       backbone_builder,
                                       build_backbone,
                                       register_backbone,
)

__all__ = ["BACKBONES", "BACKBONE_MODULES", "Backbone", "FeatureInfo", "available_backbones", "backbone_builder",
           "build_backbone", "check_backbone", "conv_output_size", "register_backbone"]
