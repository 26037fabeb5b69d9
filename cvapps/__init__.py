"""cvapps: computer-vision applications on one shared CNN backbone.

Four tasks (classification, FCN segmentation, Faster R-CNN and YOLO detection) share one
backbone contract (:mod:`cvapps.backbones`), one augmentation builder (:mod:`cvapps.data.augment`),
one training loop (:mod:`cvapps.engine.train`) and one predictor (:mod:`cvapps.engine.predict`).
"""

__version__ = "0.1.0"
