"""Live previews: a local window (``--show``) and a small web page (``--serve HOST:PORT``).

Both are sinks (``write(frame, prediction)``, ``close()``) fed by the runner's writer thread.

* :class:`PreviewWindow` uses OpenCV highgui and refuses, with a clear message, when there is no
  display (no ``DISPLAY``/``WAYLAND_DISPLAY`` on Linux, or an OpenCV built without a GUI): calling
  ``imshow`` there would abort the whole process inside Qt/GTK.
* :class:`MJPEGServer` runs a :class:`~http.server.ThreadingHTTPServer` for headless machines:
  ``/`` an HTML page, ``/stream.mjpg`` the latest annotated frame as ``multipart/x-mixed-replace``
  MJPEG, ``/snapshot.jpg`` one JPEG, ``/stats.json`` running fps, frames, dropped and the latest
  line/zone counts (shown on the page). The standard
  library server is enough for a few viewers and adds no dependency. A connection that sends no
  request for ``read_timeout`` seconds is closed, and at most ``max_connections`` are served at
  once (more get a short 503), so idle or stuck clients cannot use up the server's threads.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

from cvapps.errors import CvappsError
from cvapps.io.sinks import Draw
from cvapps.structures import Frame


def display_available() -> tuple[bool, str]:
    """(True, "") when a highgui window can be opened here, else (False, why not)."""
    gui = "NONE"
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            gui = line.split(":", 1)[1].strip()
            break
    if gui.upper() in ("NONE", ""):
        return False, "this OpenCV build has no GUI support (opencv-python-headless?)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY is not set)"
    return True, ""


class PreviewWindow:
    """Shows each annotated frame in an OpenCV window; 'q' or Esc stops reading (outputs stay valid)."""

    def __init__(self, draw: Draw, title: str = "cvapps") -> None:
        ok, why = display_available()
        if not ok:
            raise CvappsError(f"--show needs a display: {why}; use --serve HOST:PORT for a web preview instead")
        self.draw, self.title = draw, title
        self._source: Any = None

    def start(self, source: Any) -> None:
        self._source = source

    def write(self, frame: Frame, prediction: Any) -> None:
        cv2.imshow(self.title, self.draw(frame.image, prediction))
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27) and self._source is not None:
            self._source.request_stop()

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


def parse_host_port(spec: str | int) -> tuple[str, int]:
    """``"8080"``, ``":8080"``, ``"0.0.0.0:8080"``, ``"[::1]:8080"`` -> (host, port); default host 127.0.0.1."""
    text = str(spec).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise CvappsError(f"--serve expects [HOST:]PORT, got {spec!r}") from None
    if not 0 <= number <= 65535:
        raise CvappsError(f"--serve: port {number} is out of range 0..65535")
    return host, number


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or ``localhost``) is reachable only from this machine."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public interface


def exposure_warning(host: str, port: int) -> str | None:
    """A one-line warning when ``--serve`` binds a non-loopback host, else None."""
    if is_loopback(host):
        return None
    where = "on EVERY network interface" if host in ("0.0.0.0", "::", "") else f"on {host}"
    return (f"warning: the live preview is served {where} (port {port}) without authentication: anyone who can "
            "reach this machine can watch it; use 127.0.0.1:PORT to keep it local")


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>cvapps live</title>
<style>body{{font-family:sans-serif;background:#111;color:#eee;margin:1em}}
img{{max-width:100%;border:1px solid #444}}#stats{{margin:.5em 0}}</style></head>
<body><h3>cvapps &middot; {name}</h3>
<div id="stats">waiting for frames&hellip;</div>
<img id="stream" src="/stream.mjpg" alt="live stream">
<script>
async function poll() {{
  try {{
    const s = await (await fetch('/stats.json', {{cache: 'no-store'}})).json();
    const c = s.counts ? s.counts.lines.map((l, i) => ` | line ${{i + 1}}: in ${{l.in}} out ${{l.out}}`).join('')
      + s.counts.zones.map((z, i) => ` | zone ${{i + 1}}: ${{z.count}}`).join('') : '';
    document.getElementById('stats').textContent =
      `${{s.fps.toFixed(1)}} fps | ${{s.frames}} frames | ${{s.dropped}} dropped` + c + (s.finished ? ' | finished' : '');
  }} catch (e) {{ document.getElementById('stats').textContent = 'disconnected'; }}
}}
setInterval(poll, 1000); poll();
</script></body></html>
"""


READ_TIMEOUT_S = 10.0  # a client's request (and each later socket read/write) must come within this
MAX_CONNECTIONS = 32  # connections served at once (viewers, page and stats polls); more get a 503
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 23\r\n"
         b"Connection: close\r\nRetry-After: 5\r\n\r\ntoo many viewers, retry\n")


class _CappedServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with at most ``max_connections`` handler threads: a connection over the
    cap is answered 503 and closed at once, without a thread."""

    daemon_threads = True
    request_queue_size = 64  # listen backlog: a burst of connections is accepted (and capped), not dropped

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max(1, max_connections))
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started (none left): the slot must not leak
            self._slots.release()
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MJPEGServer:
    """Serves the latest annotated frame as MJPEG plus running stats over HTTP.

    spec: ``[HOST:]PORT`` (port 0 picks a free port; see ``url``). Frames are drawn and JPEG
    encoded only while someone is watching (or at most twice a second otherwise, so a new viewer
    sees a recent frame at once), so an idle preview costs the pipeline almost nothing.
    read_timeout: seconds a client may stay silent (or not read) before it is dropped;
    max_connections: connections served at once (see the module doc).
    """

    def __init__(self, spec: str | int, draw: Draw, quality: int = 80, name: str = "", *,
                 read_timeout: float = READ_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> None:
        self.host, port = parse_host_port(spec)
        self.read_timeout = float(read_timeout)
        self.draw, self.quality, self.name = draw, int(quality), name
        self.frames = 0
        self.viewers = 0
        self.finished = False
        self.counts: dict[str, Any] | None = None
        self._source: Any = None
        self._cond = threading.Condition()
        self._image: np.ndarray | None = None
        self._image_id = 0
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._last_draw = 0.0
        self._times: list[float] = []
        try:
            self._httpd = _CappedServer((self.host, port), self._handler_class(), max_connections)
        except OSError as exc:
            raise CvappsError(f"cannot serve on {self.host}:{port}: {exc.strerror or exc}") from None
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="cvapps-serve", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # -- sink -------------------------------------------------------------------------------
    def start(self, source: Any) -> None:
        self._source = source
        self.name = self.name or getattr(source, "name", "")

    def write(self, frame: Frame, prediction: Any) -> None:
        now = time.monotonic()
        self.frames += 1
        self._times.append(now)
        if len(self._times) > 64:
            del self._times[:-64]
        counts = getattr(prediction, "counts", None)  # line/zone counts (--count-line, --zone) for stats.json
        if counts is not None:
            self.counts = counts.to_json()
        if self.viewers == 0 and now - self._last_draw < 0.5:
            return
        self._last_draw = now
        image = self.draw(frame.image, prediction)
        with self._cond:
            self._image, self._image_id = image, self._image_id + 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.finished = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2.0)

    # -- state for the handlers -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        times = self._times[-32:]
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        src = self._source
        return {"frames": self.frames, "fps": round(fps, 2), "dropped": int(getattr(src, "dropped", 0) or 0),
                "skipped": len(getattr(src, "skipped", []) or []), "viewers": self.viewers,
                "source": self.name, "finished": self.finished, "counts": self.counts}

    def jpeg(self, after: int = 0, timeout: float = 1.0) -> tuple[int, bytes] | None:
        """The newest frame as JPEG once its id is > ``after`` (None on timeout or when finished)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._image_id > after or self.finished, timeout):
                return None
            if self._image_id <= after:
                return None
            image_id, image = self._image_id, self._image
        cached_id, data = self._jpeg
        if cached_id != image_id:  # encode once per frame, whatever the number of viewers
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:
                return None
            data = buf.tobytes()
            self._jpeg = (image_id, data)
        return image_id, data

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = server.read_timeout  # StreamRequestHandler sets it on the socket: no idle client forever

            def setup(self) -> None:
                super().setup()
                # The socket timeout bounds each read; this bounds the whole request, so a client
                # trickling a byte at a time cannot hold one of the max_connections slots either.
                self._headers_read = threading.Event()
                self._deadline = threading.Timer(server.read_timeout, self._drop_if_unread)
                self._deadline.daemon = True
                self._deadline.start()

            def _drop_if_unread(self) -> None:
                if not self._headers_read.is_set():
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

            def parse_request(self) -> bool:
                parsed = super().parse_request()  # reads the headers too
                self._headers_read.set()
                return parsed

            def finish(self) -> None:
                self._deadline.cancel()
                super().finish()

            def log_message(self, *args: Any) -> None:  # keep the progress bar readable
                pass

            def _send(self, body: bytes, content_type: str, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
                path = self.path.split("?")[0]
                if path in ("/", "/index.html"):
                    import html

                    self._send(_PAGE.format(name=html.escape(server.name)).encode(), "text/html; charset=utf-8")
                elif path == "/stats.json":
                    self._send(json.dumps(server.stats()).encode(), "application/json")
                elif path == "/snapshot.jpg":
                    got = server.jpeg(0, timeout=5.0)
                    if got is None:
                        self._send(b"no frame yet\n", "text/plain", 503)
                    else:
                        self._send(got[1], "image/jpeg")
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send(b"not found\n", "text/plain", 404)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                server.viewers += 1
                last = 0
                try:
                    while not server.finished:
                        got = server.jpeg(last, timeout=1.0)
                        if got is None:
                            continue
                        last, data = got
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
                    pass  # the viewer went away
                finally:
                    server.viewers -= 1

        return Handler
