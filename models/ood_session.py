"""Turn a session file into an out-of-distribution one: same ECG, non-cardiac video.

Usage::

    python models/ood_session.py --in scan.mcap --out noise.mcap --kind noise --seed 1

Every ``/video`` frame keeps its size, format, time and sequence number but its pixels are
replaced: ``noise`` (uniform random grey levels, a fresh draw per frame: a disconnected or
noisy video input) or ``stripes`` (a drifting grating: periodic interference). The ECG,
R-peak truth, metadata and everything else are copied unchanged, so the daemon still cuts
heartbeats and must answer each with ``unknown``. ``/truth/view`` is dropped: the video no
longer shows that view, and ``echoview replay`` then scores no accuracy for the session.

This is how ``build_demo.py`` checks the calibrated reject threshold end to end through the
real Rust pipeline (crop, resize, gating), which synthetic clips alone cannot do.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np
from mcap.reader import make_reader
from mcap.writer import CompressionType, Writer

#: Topics dropped from the output (see the module doc).
DROPPED_TOPICS = ("/truth/view",)


def pixel_bytes(payload: bytes, topic: str, log_time: int) -> int:
    """Length of the pixel data that ends a ``sensor_msgs/Image`` CDR payload.

    Parses the fields up to ``data`` (layout in ``src/session/cdr.rs``) so a payload in any
    other shape is refused rather than overwritten in the wrong place.
    """
    body = payload[4:]
    pos = 8  # stamp.sec, stamp.nanosec

    def string() -> None:
        nonlocal pos
        (n,) = struct.unpack_from("<I", body, pos)
        pos += 4 + n

    def u32() -> int:
        nonlocal pos
        pos = (pos + 3) & ~3
        (v,) = struct.unpack_from("<I", body, pos)
        pos += 4
        return v

    string()  # frame_id
    height, _width = u32(), u32()
    string()  # encoding
    pos += 1  # is_bigendian
    step = u32()
    length = u32()
    if length != step * height or pos + length != len(body):
        raise SystemExit(
            f"{topic} message at {log_time} ns: image data of {length} bytes does not end the "
            f"payload as step x height = {step} x {height}; not an echoview session frame"
        )
    return length


def encoding_of(payload: bytes) -> str:
    """The ``encoding`` string of an Image payload (``mono8`` or ``yuv422_yuy2``)."""
    body = payload[4:]
    (n,) = struct.unpack_from("<I", body, 8)
    pos = (8 + 4 + n + 3) & ~3
    pos += 8  # height, width
    (m,) = struct.unpack_from("<I", body, pos)
    return body[pos + 4 : pos + 4 + m - 1].decode()


def new_pixels(
    kind: str, n: int, encoding: str, frame: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` bytes of replacement pixels for frame number ``frame``."""
    luma = n if encoding == "mono8" else n // 2
    if kind == "noise":
        y = rng.integers(0, 256, luma, dtype=np.uint8)
    else:
        x = np.arange(luma)
        y = (127 + 100 * np.sin(2 * np.pi * (x % 331) / 23.0 + 0.3 * frame)).astype(np.uint8)
    if encoding == "mono8":
        return y
    out = np.full(n, 128, dtype=np.uint8)  # YUYV: Y0 U Y1 V, neutral chroma
    out[0::2] = y
    return out


def main(argv: list[str]) -> int:
    """Rewrite the session; returns the process exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--in", dest="source", type=Path, required=True, help="session (MCAP)")
    p.add_argument("--out", type=Path, required=True, help="session to write")
    p.add_argument("--kind", choices=("noise", "stripes"), default="noise")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    with args.source.open("rb") as src, args.out.open("wb") as dst:
        reader = make_reader(src)
        header = reader.get_header()
        writer = Writer(dst, compression=CompressionType.ZSTD)
        writer.start(profile=header.profile, library=f"{header.library}; models/ood_session.py")
        for record in reader.iter_metadata():
            writer.add_metadata(record.name, dict(record.metadata))
        writer.add_metadata("echoview", {"ood_video": f"{args.kind} seed={args.seed}"})
        schemas: dict[int, int] = {}
        channels: dict[int, int] = {}
        frames = 0
        for schema, channel, message in reader.iter_messages(log_time_order=False):
            if channel.topic in DROPPED_TOPICS:
                continue
            if channel.id not in channels:
                if schema is not None and schema.id not in schemas:
                    schemas[schema.id] = writer.register_schema(
                        schema.name, schema.encoding, schema.data
                    )
                channels[channel.id] = writer.register_channel(
                    channel.topic,
                    channel.message_encoding,
                    schemas[schema.id] if schema is not None else 0,
                    dict(channel.metadata),
                )
            data = message.data
            if channel.topic == "/video":
                n = pixel_bytes(data, channel.topic, message.log_time)
                pixels = new_pixels(args.kind, n, encoding_of(data), frames, rng)
                data = data[: len(data) - n] + pixels.tobytes()
                frames += 1
            writer.add_message(
                channels[channel.id],
                message.log_time,
                data,
                message.publish_time,
                message.sequence,
            )
        writer.finish()
    print(f"wrote {args.out}: {frames} frames of {args.kind}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
