"""Show one image to a person, wherever the code runs (:meth:`cvapps.results.Result.show`).

In order: inline in a Jupyter notebook (IPython's ``display``); an OpenCV window where one can open
(:func:`cvapps.io.preview.display_available`: calling ``imshow`` without a display aborts the process
inside Qt/GTK); else a matplotlib figure, which on a non-interactive backend (Agg, headless machines)
only draws it, and a one-line note says how to see it (``save()``). Never a traceback for lack of a screen.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import cv2
import numpy as np

from cvapps.io.preview import display_available

NO_SCREEN = "show: no screen to show {title!r} on ({why}); write it with .save(path) instead"


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython imported and running a ZMQ kernel shell)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def show_image(image_bgr: np.ndarray, title: str, *, wait: bool = True) -> str:
    """Show an HxWx3 BGR uint8 image; returns where it went: "notebook", "window" or "matplotlib".

    wait: in a window, block until a key is pressed (then close it); else return at once.
    """
    rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
    if in_notebook():
        display = importlib.import_module("IPython.display")  # only inside a kernel, where IPython is loaded
        pil = importlib.import_module("PIL.Image")
        display.display(pil.fromarray(rgb))
        return "notebook"
    ok, why = display_available()
    if ok:
        cv2.imshow(title, image_bgr)
        cv2.waitKey(0 if wait else 1)
        if wait:
            cv2.destroyWindow(title)
        return "window"
    _figure(rgb, title, why)
    return "matplotlib"


def _figure(rgb: np.ndarray, title: str, why: str) -> Any:
    """A matplotlib figure of ``rgb``; shown where the backend is interactive, else a one-line note."""
    # pyplot is imported here, not at the top: it costs ~0.6 s and only this fallback needs it.
    plt = importlib.import_module("matplotlib.pyplot")
    fig, ax = plt.subplots()
    ax.imshow(rgb)
    ax.set_title(title)
    ax.axis("off")
    backend = str(plt.get_backend()).lower()
    if backend in {"agg", "pdf", "ps", "svg", "cairo", "template"}:
        print(NO_SCREEN.format(title=title, why=f"{why}; matplotlib backend {backend}"), file=sys.stderr)
    else:
        plt.show()
    return fig
