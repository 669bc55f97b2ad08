"""Writes the JPEG fixtures of tests/pixel_formats.rs (run with Pillow 10+ and NumPy).

Each image is a baseline JPEG coded with the standard Huffman tables of ITU-T T.81 Annex K.3
(libjpeg's defaults: optimize=False), as a UVC grabber codes Motion-JPEG:

* colour_422_45x29.jpg: YCbCr 4:2:2 (the sampling UVC grabbers use), odd width and height;
* grey_33x17.jpg: one component (greyscale);
* *_nodht.jpg: the same files with every DHT segment removed, as grabbers send them;
* *.luma.pgm: the luma plane libjpeg decodes from the original (binary PGM), the reference the
  Rust decoder is compared with.

Run from this folder: python make.py
"""

import io
import struct

import numpy as np
from PIL import Image


def pattern(w, h):
    """A sector-like bright wedge on a dark gradient, a colour patch and sharp text-like edges."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 20 + 60 * x / w + 30 * y / h
    cx, cy = w / 2, -h / 4
    angle = np.degrees(np.arctan2(x - cx, y - cy))
    r = np.hypot(x - cx, y - cy)
    sector = (np.abs(angle) < 35) & (r < 1.3 * h)
    grey = np.where(sector, 120 + 100 * np.sin(r / 2.5) ** 2, base)
    grey[2:5, 2 : w // 3] = 250
    rgb = np.stack([grey, grey, grey], axis=-1)
    rgb[h - 8 : h - 3, w - 12 : w - 4] = [230, 40, 30]
    return np.clip(rgb.round(), 0, 255).astype(np.uint8)


def strip_dht(data):
    """The JPEG without its DHT segments (headers end at SOS; the scan is copied as is)."""
    out, pos = bytearray(data[:2]), 2
    while True:
        marker = data[pos + 1]
        if marker == 0xDA:
            return bytes(out + data[pos:])
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker != 0xC4:
            out += data[pos : pos + 2 + length]
        pos += 2 + length


def luma(data):
    """libjpeg's Y plane: draft mode skips the colour conversion of YCbCr images."""
    im = Image.open(io.BytesIO(data))
    if im.mode != "L":
        im.draft("YCbCr", im.size)
    im.load()
    if im.mode == "YCbCr":
        im = im.getchannel(0)
    return np.asarray(im)


def write(name, image, **options):
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, optimize=False, progressive=False, **options)
    data = buf.getvalue()
    stripped = strip_dht(data)
    assert b"\xff\xc4" not in stripped[: stripped.index(b"\xff\xda")]
    with open(f"{name}.jpg", "wb") as f:
        f.write(data)
    with open(f"{name}_nodht.jpg", "wb") as f:
        f.write(stripped)
    y = luma(data)
    with open(f"{name}.luma.pgm", "wb") as f:
        f.write(b"P5\n%d %d\n255\n" % (y.shape[1], y.shape[0]) + y.tobytes())
    print(name, image.size, len(data), "bytes,", len(data) - len(stripped), "bytes of DHT")


write("colour_422_45x29", Image.fromarray(pattern(45, 29), "RGB"), subsampling="4:2:2")
write("grey_33x17", Image.fromarray(pattern(33, 17)[:, :, 0], "L"))
