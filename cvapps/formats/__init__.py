"""On-disk formats, one module each, with read and write: :mod:`coco` (datasets, results, RLE, image
ids), :mod:`coco_checks` (reading a COCO dataset with the check rules), :mod:`yolo` (txt labels +
data.yaml), :mod:`masks` (class-index PNGs), :mod:`names` (image and frame names), :mod:`merge`
(merging COCO files), the labelling tools' formats :mod:`voc`, :mod:`cvat`, :mod:`labelme` (sharing
:mod:`objects`, XML through :mod:`xml_safe`) and :mod:`layouts` (which one a folder holds). Nothing
here imports engine/, tasks/ or cli/.
"""
