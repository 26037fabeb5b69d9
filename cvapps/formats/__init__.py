"""On-disk formats, one module each, with read and write: :mod:`coco` (datasets, results, RLE, image
ids), :mod:`coco_checks` (reading a COCO dataset with the check rules), :mod:`yolo` (txt labels +
data.yaml), :mod:`masks` (class-index PNGs), :mod:`names` (image and frame names), :mod:`merge`
(merging COCO files). Nothing here imports engine/, tasks/ or cli/.
"""
