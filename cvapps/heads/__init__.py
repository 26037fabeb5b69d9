"""Task heads that sit on the shared backbone (classifier, FCN, YOLO)."""
