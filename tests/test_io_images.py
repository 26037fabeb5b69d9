"""Tests for cvapps.io.images: robust reading of good and broken files, EXIF, bit depth, writing."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from fault_corpus import (
    EXPECTED_REASONS,
    exif_base,
    exif_expected,
    sixteen_bit_values,
    tree_digest,
)
from PIL import Image

from cvapps.errors import CvappsError, ImageReadError
from cvapps.io.headers import jpeg_truncated
from cvapps.io.images import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    VIDEO_EXTENSIONS,
    read_image,
    read_image_rgb,
    write_image,
)

# read_image filters this warning itself, but pytest resets warning filters for every test.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")






def test_constants() -> None:
    assert MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"} == IMAGE_EXTENSIONS
    assert ".mp4" in VIDEO_EXTENSIONS and ".ts" in VIDEO_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)


def test_corpus_readable_status_and_reasons(corpus: tuple[Path, dict[str, bool]]) -> None:
    root, expected = corpus
    assert set(EXPECTED_REASONS) == {k for k, ok in expected.items() if not ok}
    for name, readable in expected.items():
        path = root / name
        if readable:
            img = read_image(path)
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
            assert img.flags["C_CONTIGUOUS"], name
        else:
            with pytest.raises(ImageReadError) as info:
                read_image(path)
            assert EXPECTED_REASONS[name] in info.value.reason, (name, info.value.reason)
            assert info.value.path == str(path)
            assert str(info.value) == f"{path}: {info.value.reason}"


def test_reading_never_modifies_files(corpus: tuple[Path, dict[str, bool]]) -> None:
    root, expected = corpus
    before = tree_digest(root)
    for name in expected:
        try:
            read_image(root / name)
            read_image_rgb(root / name)
        except ImageReadError:
            pass
    assert tree_digest(root) == before


def test_missing_file() -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        read_image("/no/such/dir/picture.jpg")


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not a file"):
        read_image(tmp_path)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(corpus: tuple[Path, dict[str, bool]], orientation: int) -> None:
    root, _ = corpus
    got = read_image_rgb(root / f"exif_{orientation}.jpg")
    want = exif_expected(orientation, exif_base())
    assert got.shape == want.shape
    # Quality-100 4:4:4 JPEG of solid 8x8 blocks: only rounding noise is allowed.
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 8


@pytest.mark.parametrize("fmt", ["png", "tiff", "webp"])
def test_exif_orientation_other_formats(tmp_path: Path, fmt: str) -> None:
    base = exif_base()
    for orientation in (3, 6, 7):
        img = Image.fromarray(base)
        exif = img.getexif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.{fmt}"
        img.save(path, exif=exif.tobytes(), **({"lossless": True} if fmt == "webp" else {}))
        got = read_image_rgb(path)
        np.testing.assert_array_equal(got, exif_expected(orientation, base))


def test_sixteen_bit_png_scaled_not_clipped(corpus: tuple[Path, dict[str, bool]]) -> None:
    root, _ = corpus
    got = read_image(root / "sixteen_bit.png")
    want = (sixteen_bit_values() >> 8).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(got[:, :, c], want)
    assert got.min() == 0 and got.max() == 255


def test_sixteen_bit_tiff_and_rgb(tmp_path: Path) -> None:
    ramp = sixteen_bit_values()
    cv2.imwrite(str(tmp_path / "g16.tif"), ramp)
    np.testing.assert_array_equal(read_image(tmp_path / "g16.tif")[:, :, 1], ramp >> 8)
    bgr16 = np.dstack([ramp, ramp[::-1], np.full_like(ramp, 40000)])
    cv2.imwrite(str(tmp_path / "c16.png"), bgr16)
    np.testing.assert_array_equal(read_image(tmp_path / "c16.png"), (bgr16 >> 8).astype(np.uint8))


def test_colour_modes(corpus: tuple[Path, dict[str, bool]]) -> None:
    root, _ = corpus
    good = read_image(root / "good.png")
    gray = read_image(root / "gray.png")
    assert (gray[:, :, 0] == gray[:, :, 1]).all() and (gray[:, :, 1] == gray[:, :, 2]).all()
    np.testing.assert_array_equal(gray[:, :, 0], good[:, :, 2])  # gray.png was the red channel
    # RGBA: alpha dropped, colour kept where opaque (composite over black would also pass here).
    rgba = np.asarray(Image.open(root / "rgba.png"))
    got = read_image_rgb(root / "rgba.png")
    opaque = rgba[:, :, 3] == 254  # last column
    np.testing.assert_array_equal(got[opaque], rgba[:, :, :3][opaque])
    pal = np.asarray(Image.open(root / "palette.png").convert("RGB"))
    np.testing.assert_array_equal(read_image_rgb(root / "palette.png"), pal)
    cmyk = np.asarray(Image.open(root / "cmyk.jpg").convert("RGB")).astype(int)
    assert np.abs(read_image_rgb(root / "cmyk.jpg").astype(int) - cmyk).max() <= 3
    one = read_image_rgb(root / "one_pixel.png")
    assert one.shape == (1, 1, 3) and one[0, 0].tolist() == [10, 200, 30]
    assert read_image(root / "nested" / "inner.jpg").shape == (32, 48, 3)


def test_good_jpeg_matches_pil(corpus: tuple[Path, dict[str, bool]]) -> None:
    root, _ = corpus
    pil = np.asarray(Image.open(root / "good.jpg").convert("RGB")).astype(int)
    assert np.abs(read_image_rgb(root / "good.jpg").astype(int) - pil).max() <= 3


def test_la_png_and_pil_fallback_format(tmp_path: Path) -> None:
    gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (16, 1))
    Image.fromarray(gray).convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[:, :, 0], gray)
    # ICO: OpenCV cannot decode it, PIL can -> the fallback path returns the same layout.
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:8, :8] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "icon.ico", sizes=[(16, 16)])
    got = read_image_rgb(tmp_path / "icon.ico")
    assert got.shape == (16, 16, 3)
    assert got[0, 0].tolist() == [255, 0, 0] and got[15, 15].tolist() == [0, 0, 0]


def test_truncated_jpeg_variants(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (5, 5), 1.0)
    for progressive in (False, True):
        Image.fromarray(img).save(tmp_path / "full.jpg", quality=90, progressive=progressive)
        data = (tmp_path / "full.jpg").read_bytes()
        for cut in (len(data) // 10, len(data) // 2, len(data) - 2):
            (tmp_path / "cut.jpg").write_bytes(data[:cut])
            with pytest.raises(ImageReadError, match="truncated or corrupt image data"):
                read_image(tmp_path / "cut.jpg")
        # Bytes after the EOI (camera trailers) are fine.
        (tmp_path / "trailer.jpg").write_bytes(data + b"\x00" * 100 + b"TRAILER" * 20)
        assert read_image(tmp_path / "trailer.jpg").shape == (120, 160, 3)


def test_jpeg_truncation_check_ignores_thumbnail_eoi() -> None:
    # SOI, an APP1 holding a whole thumbnail (with its own SOS and EOI), then the main scan.
    thumb = b"\xff\xd8\xff\xda\x00\x02" + b"\x11" * 10 + b"\xff\xd9"
    head = b"\xff\xd8\xff\xe1" + thumb
    main = b"\xff\xda\x00\x02" + b"\x22" * 50
    assert jpeg_truncated(head + main)
    assert not jpeg_truncated(head + main + b"\xff\xd9")
    assert jpeg_truncated(b"\xff\xd8\xff\xe0\x00\x10JFIF")  # cut before any scan


def test_bomb_refused_from_header_quickly(corpus: tuple[Path, dict[str, bool]]) -> None:
    import time

    root, _ = corpus
    assert (root / "bomb.png").stat().st_size < 1_000_000
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError, match=r"image too large \(10000 x 9000 pixels > 89478485\)"):
        read_image(root / "bomb.png")
    assert time.perf_counter() - t0 < 0.5  # no 90-Mpx decode happened


def test_huge_bomb_over_pil_hard_limit(tmp_path: Path) -> None:
    # Just a PNG header claiming 20000x10000 (over 2x the limit, where PIL raises in open()).
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 20000, 10000, 1, 0, 0, 0, 0)
    iend = b"IEND"
    png = b"\x89PNG\r\n\x1a\n"
    for chunk in (ihdr, iend):
        png += struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk))
    (tmp_path / "huge.png").write_bytes(png)
    # the PNG header is parsed by cvapps (no PIL open), so the message names both sides
    with pytest.raises(ImageReadError, match=r"image too large \(20000 x 10000 pixels > 89478485\)"):
        read_image(tmp_path / "huge.png")


def test_write_image_roundtrip_atomic(tmp_path: Path) -> None:
    img = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = tmp_path / "a" / "b" / "out.png"
    write_image(out, img)
    np.testing.assert_array_equal(read_image(out), img)
    write_image(out, img[::-1])  # overwrite in place
    np.testing.assert_array_equal(read_image(out), img[::-1])
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.png"]  # no temp files left
    mode = stat.S_IMODE(out.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    write_image(tmp_path / "x.JPG", img)
    assert read_image(tmp_path / "x.JPG").shape == (20, 30, 3)
    write_image(tmp_path / "g.bmp", img[:, :, 0])
    assert read_image(tmp_path / "g.bmp").shape == (20, 30, 3)


def test_write_image_errors(tmp_path: Path) -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(CvappsError, match="unknown image extension '.gif'"):
        write_image(tmp_path / "x.gif", img)
    with pytest.raises(CvappsError, match="unknown image extension"):
        write_image(tmp_path / "noext", img)
    with pytest.raises(CvappsError, match="expected HxW or HxWx3"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 2), np.uint8))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Hostile files (issue 17): only regular files, a size cap, a header check for every format
# --------------------------------------------------------------------------------------------
def _bounded_read(path: Path) -> str:
    """read_image in a thread (a FIFO read would block forever); the skip reason it raised."""
    import threading

    box: dict[str, object] = {}

    def target() -> None:
        try:
            read_image(path)
            box["reason"] = "read"
        except ImageReadError as e:
            box["reason"] = e.reason

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), f"reading {path.name} hung"
    return str(box["reason"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_named_jpg_is_skipped_unopened(tmp_path: Path) -> None:
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    assert "not a regular file" in _bounded_read(fifo)
    # No reader holds it open: a non-blocking writer finds nobody at the other end.
    with pytest.raises(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_symlink_to_dev_zero_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "z.png").symlink_to("/dev/zero")
    assert "not a regular file" in _bounded_read(tmp_path / "z.png")


def test_size_cap_checked_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cvapps.io.images import MAX_FILE_MB_ENV, max_file_bytes, set_max_file_mb

    big = tmp_path / "big.bmp"
    cv2.imwrite(str(big), np.zeros((800, 800, 3), np.uint8))  # 1.9 MB
    assert max_file_bytes() == 256 << 20  # the default
    try:
        set_max_file_mb(1)
        with pytest.raises(ImageReadError, match=r"file too large \(1.8 MiB > cap 1 MiB"):
            read_image(big)
        set_max_file_mb(None)
        monkeypatch.setenv(MAX_FILE_MB_ENV, "1.5")
        with pytest.raises(ImageReadError, match="file too large"):
            read_image(big)
        monkeypatch.setenv(MAX_FILE_MB_ENV, "4")
        assert read_image(big).shape == (800, 800, 3)
        monkeypatch.setenv(MAX_FILE_MB_ENV, "lots")
        with pytest.raises(CvappsError, match="CVAPPS_MAX_FILE_MB must be a number"):
            read_image(big)
    finally:
        set_max_file_mb(None)


def test_radiance_hdr_bomb_named_png_refused_from_header(tmp_path: Path) -> None:
    """A Radiance HDR (which Pillow does not read) named .png claiming 12000 x 12000 = 144 Mpx."""
    hdr = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 12000 +X 12000\n" + b"\x02\x02\x2e\xe0" * 4096
    (tmp_path / "photo.png").write_bytes(hdr)
    with pytest.raises(ImageReadError, match=r"image too large \(12000 x 12000 pixels > 89478485\)"):
        read_image(tmp_path / "photo.png")


def _exr_header(width: int, height: int) -> bytes:
    """The start of an OpenEXR file: magic, version, a channel list and the dataWindow attribute."""
    def attr(name: bytes, kind: bytes, value: bytes) -> bytes:
        return name + b"\0" + kind + b"\0" + struct.pack("<i", len(value)) + value
    return (b"\x76\x2f\x31\x01" + struct.pack("<i", 2) + attr(b"channels", b"chlist", b"R\0" + bytes(16) + b"\0")
            + attr(b"dataWindow", b"box2i", struct.pack("<4i", 0, 0, width - 1, height - 1)) + b"\0")


BOMB_HEADERS = {  # formats OpenCV decodes, each claiming 12000 x 12000 pixels
    "hdr": b"#?RGBE\n\n+X 12000 -Y 12000\n",
    "pfm": b"PF\n12000 12000\n-1.0\n",
    "ppm": b"P6\n# comment\n12000 12000\n255\n",
    "pam": b"P7\nWIDTH 12000\nHEIGHT 12000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n",
    "ras": b"\x59\xa6\x6a\x95" + struct.pack(">7I", 12000, 12000, 24, 0, 1, 0, 0),
    "exr": _exr_header(12000, 12000),
}


@pytest.mark.parametrize("fmt", sorted(BOMB_HEADERS))
def test_bomb_headers_of_every_opencv_format(tmp_path: Path, fmt: str) -> None:
    from cvapps.io.headers import header_size

    data = BOMB_HEADERS[fmt] + bytes(4096)
    assert header_size(data) == (12000, 12000)
    (tmp_path / "x.jpg").write_bytes(data)  # the extension is no guide
    assert "image too large" in _bounded_read(tmp_path / "x.jpg")


@pytest.mark.parametrize("ext", [".hdr", ".pic", ".pfm", ".ppm", ".pgm", ".pam", ".ras"])
def test_small_opencv_formats_still_read(tmp_path: Path, ext: str) -> None:
    from cvapps.io.headers import header_size
    from cvapps.io.images import image_size

    img = np.zeros((30, 50, 3), np.uint8)
    img[:, :25] = 200
    data = img.astype(np.float32) / 255 if ext in (".hdr", ".pic", ".pfm") else img
    data = data[:, :, 0] if ext == ".pgm" else data
    ok, encoded = cv2.imencode(".hdr" if ext == ".pic" else ext, data)
    assert ok
    path = tmp_path / f"x{ext}"
    path.write_bytes(encoded.tobytes())
    assert header_size(encoded.tobytes()) in (None, (50, 30))  # None: a format Pillow identifies
    assert read_image(path).shape == (30, 50, 3)
    assert image_size(path) == (50, 30)  # (w, h)


def test_exr_header_parser_size() -> None:
    from cvapps.io.headers import header_size

    assert header_size(_exr_header(640, 480)) == (640, 480)
    assert header_size(b"\x76\x2f\x31\x01" + bytes(8)) == (0, 0)  # damaged: refused as corrupt


def test_decoder_error_is_a_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))

    def explode(*args: object) -> None:
        raise cv2.error("OpenCV(5.0.0) loadsave.cpp:1: error: (-215:Assertion failed) size check")

    monkeypatch.setattr(cv2, "imdecode", explode)
    with pytest.raises(ImageReadError, match=r"could not decode \(.*size check\)"):
        read_image(tmp_path / "a.png")


def test_image_size_is_width_height_after_exif(tmp_path: Path) -> None:
    from cvapps.io.images import image_size

    img = Image.fromarray(np.zeros((30, 50, 3), np.uint8))
    img.save(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: read_image returns it 50 high, 30 wide
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert image_size(tmp_path / "plain.png") == (50, 30)
    assert image_size(tmp_path / "rotated.jpg") == (30, 50)
    assert read_image(tmp_path / "rotated.jpg").shape[:2] == (50, 30)
    with pytest.raises(ImageReadError, match="not an image"):
        (tmp_path / "t.png").write_text("hello")
        image_size(tmp_path / "t.png")


def test_jpeg_png_decoded_once_without_pil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JPEG (baseline, progressive) and PNG sizes come from cvapps' header parser; PIL is not opened."""
    from cvapps.io import images as images_mod
    from cvapps.io.headers import jpeg_png_size

    img = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    files = {"a.jpg": cv2.imencode(".jpg", img)[1], "p.jpg": cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1],
             "a.png": cv2.imencode(".png", img)[1]}
    for name, enc in files.items():
        (tmp_path / name).write_bytes(enc.tobytes())
        assert jpeg_png_size(enc.tobytes())[1] == (50, 30)

    def no_pil(_fp):
        raise AssertionError("PIL opened a JPEG/PNG")

    monkeypatch.setattr(images_mod, "_pil_open", no_pil)
    for name in files:
        assert read_image(tmp_path / name).shape == (30, 50, 3)
    assert jpeg_png_size(b"\xff\xd8\xff\xda" + bytes(10)) is None  # scan before any frame header
    assert jpeg_png_size(b"GIF89a") is None


def test_file_longer_than_its_stat_is_read_whole_and_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that grew after its stat (or reports size 0, like /proc files) is still read to its
    end, and the size cap holds for the bytes actually read, not only for the size the stat gave."""
    import cvapps.io.images as images

    path = tmp_path / "grown.bmp"
    image = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image)  # ~1.03 MiB
    real_stat, real_fstat = os.stat, os.fstat

    def as_if_10_bytes(st: os.stat_result) -> os.stat_result:
        fields = list(st)
        fields[stat.ST_SIZE] = 10
        return os.stat_result(fields)

    monkeypatch.setattr(images.os, "stat", lambda p, *a, **k: as_if_10_bytes(real_stat(p, *a, **k)))
    monkeypatch.setattr(images.os, "fstat", lambda fd: as_if_10_bytes(real_fstat(fd)))
    assert np.array_equal(read_image(path), image)
    try:
        images.set_max_file_mb(1)  # under the real size: the stats pass, the bytes read do not
        with pytest.raises(ImageReadError, match="file too large"):
            read_image(path)
    finally:
        images.set_max_file_mb(None)
