"""How a source is read: one frozen options object shared by every source kind."""

from __future__ import annotations

from dataclasses import dataclass

from cvapps.errors import CvappsError
from cvapps.io.sources.base import check_shard, parse_shard


@dataclass(frozen=True)
class SourceOptions:
    """How a source is read. Every field has the CLI's default and is checked when made (a bad value
    is a one-line CvappsError).

    vid_stride: use every N-th frame of a video or stream (frame numbers divisible by N).
    shard: ``(i, n)`` or ``"i/n"``: keep items i, i+n, ... (0-based; files, or video frames after
      ``vid_stride``), so n processes split one source; kept as ``(i, n)``, ``(0, 1)`` meaning all.
    buffer: live sources keep every frame (True) instead of only the newest (None/False); files
      never drop frames.
    reconnect_s: seconds a live source keeps reconnecting a stalled stream before it ends; also
      FFmpeg's open and read timeouts, so a frozen server cannot hold it longer.
    queue_size: frames decoded ahead of the model at most.
    max_file_mb: input files larger than this (MiB) are skipped unread; None: the process's cap
      (``$CVAPPS_MAX_FILE_MB``, else 256). Applied by :func:`~cvapps.engine.runner.run_source` and
      Ray's read tasks (``open_source`` alone reads under the process's cap).
    """

    vid_stride: int = 1
    shard: tuple[int, int] | str | None = None
    buffer: bool | None = None
    reconnect_s: float = 10.0
    queue_size: int = 64
    max_file_mb: float | None = None

    def __post_init__(self) -> None:
        shard = parse_shard(self.shard) if isinstance(self.shard, str) else check_shard(self.shard)
        object.__setattr__(self, "shard", shard or (0, 1))  # frozen: normalised once, here
        if isinstance(self.vid_stride, bool) or not isinstance(self.vid_stride, int) or self.vid_stride < 1:
            raise CvappsError(f"vid_stride must be an integer >= 1, got {self.vid_stride!r}")
        if self.queue_size < 1:
            raise CvappsError(f"queue_size must be >= 1, got {self.queue_size!r}")
        if not self.reconnect_s >= 0:
            raise CvappsError(f"reconnect_s must be >= 0, got {self.reconnect_s!r}")
        if self.max_file_mb is not None and not self.max_file_mb > 0:
            raise CvappsError(f"--max-file-mb must be > 0, got {self.max_file_mb:g}")
