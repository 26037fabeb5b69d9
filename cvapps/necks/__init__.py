"""Necks between backbone and heads: FPN (torchvision) and PAN (YOLO)."""
