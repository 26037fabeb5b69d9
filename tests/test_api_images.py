"""What notebooks hold goes into Model.predict as it is: PIL images (RGB), RGB arrays with rgb=True;
Results name their classes, plot() is BGR (rgb=True for matplotlib) and show() works without a screen."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
from PIL import Image
from tiny_checkpoints import ROOT, SHAPES, make_checkpoint

import cvapps
from cvapps.errors import CvappsError
from cvapps.results import Result
from cvapps.structures import Detections, Prediction

IMAGE = min((ROOT / "sample_data" / "shapes" / "images" / "val").glob("*.jpg"))
OPTIONS = {"conf": 0.0, "max_det": 10}  # a random model: keep every box, so the comparisons see some


@pytest.fixture(scope="module")
def yolo(tmp_path_factory: pytest.TempPathFactory) -> cvapps.Model:
    path = make_checkpoint(tmp_path_factory.mktemp("img") / "yolo.pt", "yolo_shapes.yaml", ["data.imgsz=64"], SHAPES)
    return cvapps.load(path, device="cpu")


def _same(a: Result, b: Result) -> bool:
    return np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores) and np.array_equal(a.image, b.image)


def test_pil_images_and_rgb_arrays_predict_as_the_file(yolo: cvapps.Model) -> None:
    from_file = yolo.predict(str(IMAGE), **OPTIONS)[0]
    bgr = cv2.imread(str(IMAGE))
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    assert len(from_file.boxes) > 0
    assert _same(yolo.predict(Image.fromarray(rgb), **OPTIONS)[0], from_file)
    assert _same(yolo.predict(rgb, rgb=True, **OPTIONS)[0], from_file)
    assert _same(yolo.predict([Image.fromarray(rgb), bgr], **OPTIONS)[1], from_file)  # lists of either
    # Without rgb=True an array is BGR: the swapped colours are another image.
    assert not np.array_equal(yolo.predict(rgb, **OPTIONS)[0].image, from_file.image)
    gray = yolo.predict(Image.fromarray(bgr[:, :, 0]).convert("L"), **OPTIONS)[0]  # any PIL mode
    assert gray.image.shape == bgr.shape and (gray.image[..., 0] == gray.image[..., 2]).all()


def test_bad_in_memory_sources_are_one_line_errors(yolo: cvapps.Model) -> None:
    with pytest.raises(CvappsError, match="rgb=True is for numpy arrays"):
        yolo.predict(str(IMAGE), rgb=True)
    with pytest.raises(CvappsError, match="HxWx3 RGB uint8"):
        yolo.predict(np.zeros((8, 8, 4), np.uint8), rgb=True)
    with pytest.raises(CvappsError, match="only images .* or only paths"):
        yolo.predict([Image.new("RGB", (8, 8)), str(IMAGE)])


def test_results_name_their_classes(yolo: cvapps.Model, tmp_path: Path) -> None:
    r = yolo.predict(str(IMAGE), **OPTIONS)[0]
    assert r.names == SHAPES and r.label_names == [SHAPES[k] for k in r.labels] and r.label_names
    classifier = cvapps.load(make_checkpoint(tmp_path / "cls.pt", "classify_shapes.yaml", ["data.imgsz=32"], SHAPES),
                             device="cpu")
    c = classifier.predict(str(IMAGE))[0]
    assert c.name == SHAPES[c.label]
    with pytest.raises(CvappsError, match="Result.name: only for Classification"):
        r.name  # noqa: B018 - the property raises


def _blue_result() -> Result:
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 0] = 255  # pure blue in OpenCV's BGR order
    return Result("blue", 0, 0.0, image, Prediction(detections=Detections.empty()), list(SHAPES))


def test_plot_is_bgr_and_rgb_on_request() -> None:
    r = _blue_result()
    assert r.plot()[0, 0].tolist() == [255, 0, 0]  # BGR, as cv2.imshow / cv2.imwrite want
    assert r.plot(rgb=True)[0, 0].tolist() == [0, 0, 255]  # RGB, as matplotlib / PIL want


def test_show_without_a_screen_draws_a_figure_and_says_so(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    plt.close("all")
    r = _blue_result()
    r.show()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("show: no screen") and ".save(path)" in err[0]
    shown = plt.gcf().axes[0].images[0].get_array()
    assert np.array_equal(np.asarray(shown), r.plot(rgb=True))
    plt.close("all")


def test_show_in_a_notebook_displays_the_rgb_image_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list = []
    kernel = type("ZMQInteractiveShell", (), {})()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    monkeypatch.setitem(sys.modules, "IPython.display", types.SimpleNamespace(display=shown.append))
    r = _blue_result()
    r.show()
    assert len(shown) == 1 and isinstance(shown[0], Image.Image)
    assert np.array_equal(np.asarray(shown[0]), r.plot(rgb=True))
