"""Builds the DICOM test fixtures and the reference pixels the Rust tests compare against.

Run from the repository root with a venv holding pydicom 3, numpy, pylibjpeg,
pylibjpeg-libjpeg and pylibjpeg-openjpeg:

    python tests/data/dicom/make_fixtures.py /work/shared/data/dicom

It (1) copies the real exports from the shared folder (pydicom's test files, MIT licence,
see ATTRIBUTION.md), (2) writes small synthetic files for the encodings those lack, and
(3) decodes every image with pydicom into ref/NAME.json (frame count, size, format, per-frame
channel means) plus ref/NAME.fI.bin (every STEP-th pixel of frame I, row-major, RGB or grey
bytes). Colour references are pydicom's RGB (YBR converted by pydicom or the JPEG codec);
palette images go through pydicom's apply_color_lut, 16-bit entries reduced to their high
byte; greyscale deeper than 8 bits is scaled over its stored range as echoview does.
Synthetic files are deterministic (fixed seed), so rerunning gives the same bytes.

With REF_DIR=DIR and FULL=1 in the environment it writes references of every pixel of every
frame into DIR instead (megabytes, not committed), for measuring the whole-image error:
ECHOVIEW_DICOM_REF=DIR cargo test --release --test dicom every_image -- --nocapture
"""

import json
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEGLosslessSV1,
    RLELossless,
)

HERE = Path(__file__).resolve().parent
REF = Path(os.environ.get("REF_DIR", HERE / "ref"))
FULL = os.environ.get("FULL") == "1"
REAL = [
    "examples_ybr_color.dcm",
    "examples_rgb_color.dcm",
    "examples_palette.dcm",
    "examples_jpeg2k.dcm",
    "ExplVR_BigEnd.dcm",
    "waveform_ecg.dcm",
]
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
RNG = np.random.default_rng(6)


def base(rows, cols, frames, sop_class=US_MULTIFRAME):
    ds = Dataset()
    ds.SOPClassUID = sop_class
    # Fixed UIDs keep the files byte-identical across runs.
    ds.SOPInstanceUID = "2.25.1234567890" + str(rows * 1000 + cols * 10 + frames)
    ds.Modality = "US"
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelRepresentation = 0
    return ds


def file_meta(ds, ts):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "2.25.42"
    ds.file_meta = meta
    return ds


def moving_picture(frames, rows, cols, channels):
    """A bright disc moving over a gradient: content that changes, with colour if asked."""
    y, x = np.mgrid[0:rows, 0:cols]
    out = np.zeros((frames, rows, cols, channels), dtype=np.float64)
    for f in range(frames):
        cx = cols / 2 + cols / 4 * np.sin(2 * np.pi * f / max(frames, 8))
        disc = ((x - cx) ** 2 + (y - rows / 2) ** 2) < (min(rows, cols) / 4) ** 2
        for c in range(channels):
            out[f, ..., c] = 40 + 60 * c + x * 100 / cols + disc * (80 - 30 * c)
    return np.clip(out + RNG.normal(0, 3, out.shape), 0, 255).astype(np.uint8)


def ecg_trace(fs, seconds, rr_s, offset_s=0.1):
    """Lead II-like ECG in microvolts: P, QRS and T waves as Gaussians, every rr_s seconds."""
    t = np.arange(int(fs * seconds)) / fs
    v = np.zeros_like(t)
    for beat in np.arange(offset_s, seconds + rr_s, rr_s):
        for dt, amp, width in [(-0.16, 150, 0.025), (-0.03, -120, 0.008), (0.0, 1200, 0.010),
                               (0.03, -250, 0.008), (0.25, 300, 0.045)]:
            v += amp * np.exp(-0.5 * ((t - beat - dt) / width) ** 2)
    return v + RNG.normal(0, 10, v.shape)


def jpeg_lossless(frame):
    """A JPEG lossless (process 14, selection value 1) codestream of an 8-bit grey image,
    with the standard luminance DC Huffman table; pydicom has no encoder for it."""
    bits_table = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    values = list(range(12))
    codes, code, k = {}, 0, 0
    for length, count in enumerate(bits_table, start=1):
        for _ in range(count):
            codes[values[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    rows, cols = frame.shape
    img = frame.astype(np.int32)
    out_bits = []

    def put(value, length):
        for i in range(length - 1, -1, -1):
            out_bits.append((value >> i) & 1)

    for r in range(rows):
        for c in range(cols):
            if r == 0 and c == 0:
                pred = 128
            elif r == 0:
                pred = img[r, c - 1]
            elif c == 0:
                pred = img[r - 1, c]
            else:
                pred = img[r, c - 1]
            diff = int(img[r, c] - pred)
            ssss = 0 if diff == 0 else int(abs(diff)).bit_length()
            put(*codes[ssss])
            if ssss:
                put(diff if diff > 0 else diff + (1 << ssss) - 1, ssss)
    while len(out_bits) % 8:
        out_bits.append(1)
    scan = bytearray()
    for i in range(0, len(out_bits), 8):
        byte = int("".join(map(str, out_bits[i:i + 8])), 2)
        scan.append(byte)
        if byte == 0xFF:
            scan.append(0)
    seg = lambda marker, body: marker + struct.pack(">H", len(body) + 2) + body  # noqa: E731
    sof = struct.pack(">BHHB", 8, rows, cols, 1) + bytes([1, 0x11, 0])
    dht = bytes([0x00]) + bytes(bits_table) + bytes(values)
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # Ns, Cs1, Td/Ta, Ss=predictor 1, Se, Ah/Al
    return (b"\xff\xd8" + seg(b"\xff\xc3", sof) + seg(b"\xff\xc4", dht)
            + seg(b"\xff\xda", sos) + bytes(scan) + b"\xff\xd9")


def synthetic():
    made = []

    # Explicit VR Big Endian, 12-bit greyscale in 16 bits, Frame Time Vector.
    ds = base(12, 16, 4)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.FrameTimeVector = [0, 20, 25, 30]
    ds.FrameIncrementPointer = 0x00181065
    arr = (np.arange(4 * 12 * 16).reshape(4, 12, 16) * 21 % 4096).astype(">u2")
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OW"
    made.append(("be_mono12_ftv.dcm", file_meta(ds, ExplicitVRBigEndian)))

    # RLE, YBR_FULL, R-wave times: 60 frames at 20 ms with R waves every 500 ms.
    ds = base(16, 20, 60)
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 3, 8, 8, 7
    ds.PlanarConfiguration = 0
    ds.FrameTime = 20
    ds.FrameIncrementPointer = 0x00181063
    ds.RWaveTimeVector = [0.0, 500.0, 1000.0]
    pix = moving_picture(60, 16, 20, 3)
    ds.compress(RLELossless, pix, encoding_plugin="pydicom", generate_instance_uid=False)
    made.append(("rle_ybr_full_rwave.dcm", ds))

    # Native YBR_FULL_422 (Y0 Y1 Cb Cr per pixel pair), Cine Rate.
    ds = base(8, 10, 3)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 3, 8, 8, 7
    ds.PlanarConfiguration = 0
    ds.CineRate = 25
    raw = RNG.integers(0, 256, size=3 * 8 * 10 * 2, dtype=np.uint8)
    ds.PixelData = raw.tobytes()
    ds["PixelData"].VR = "OB"
    made.append(("ybr_full_422_native.dcm", file_meta(ds, ExplicitVRLittleEndian)))

    # Implicit VR, PALETTE COLOR with 8-bit entries (stored one per 16-bit word).
    ds = base(10, 12, 1, US_IMAGE)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 8, 8, 7
    ds.RedPaletteColorLookupTableDescriptor = [256, 0, 8]
    ds.GreenPaletteColorLookupTableDescriptor = [256, 0, 8]
    ds.BluePaletteColorLookupTableDescriptor = [256, 0, 8]
    lut = np.arange(256)
    ds.RedPaletteColorLookupTableData = lut.astype("<u2").tobytes()
    ds.GreenPaletteColorLookupTableData = (255 - lut).astype("<u2").tobytes()
    ds.BluePaletteColorLookupTableData = (lut * 7 % 256).astype("<u2").tobytes()
    ds.PixelData = RNG.integers(0, 256, size=120, dtype=np.uint8).tobytes()
    made.append(("palette8_implicit.dcm", file_meta(ds, ImplicitVRLittleEndian)))

    # 16-bit palette indices into 16-bit entries, first mapped value 100 (values below
    # take the first entry, above the last).
    ds = base(10, 12, 1, US_IMAGE)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
    for c in "Red", "Green", "Blue":
        setattr(ds, f"{c}PaletteColorLookupTableDescriptor", [1024, 100, 16])
    ramp = np.linspace(0, 65535, 1024)
    ds.RedPaletteColorLookupTableData = ramp.astype("<u2").tobytes()
    ds.GreenPaletteColorLookupTableData = ramp[::-1].astype("<u2").tobytes()
    ds.BluePaletteColorLookupTableData = (ramp * 3 % 65536).astype("<u2").tobytes()
    ds.PixelData = RNG.integers(0, 1300, size=120).astype("<u2").tobytes()
    made.append(("palette16.dcm", file_meta(ds, ExplicitVRLittleEndian)))

    # A cine with its ECG: MONOCHROME2, 100 frames at 50 ms, lead II at 500 Hz starting
    # 200 ms before the first frame, R waves every 800 ms.
    ds = base(24, 24, 100)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 8, 8, 7
    ds.FrameTime = 50
    ds.FrameIncrementPointer = 0x00181063
    ds.PixelData = moving_picture(100, 24, 24, 1).tobytes()
    wf = Dataset()
    wf.MultiplexGroupTimeOffset = -200.0
    wf.WaveformOriginality = "ORIGINAL"
    wf.NumberOfWaveformChannels = 2
    fs, seconds = 500, 5.4
    trace = ecg_trace(fs, seconds, 0.8)
    wf.NumberOfWaveformSamples = len(trace)
    wf.SamplingFrequency = fs
    wf.MultiplexGroupLabel = "ECG"
    chans = []
    for name, code in [("Lead I", "5.6.3-9-1"), ("Lead II", "5.6.3-9-2")]:
        ch = Dataset()
        src = Dataset()
        src.CodeValue, src.CodingSchemeDesignator, src.CodeMeaning = code, "SCPECG", name
        ch.ChannelSourceSequence = Sequence([src])
        ch.ChannelSensitivity = 5.0
        unit = Dataset()
        unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "uV", "UCUM", "microvolt"
        ch.ChannelSensitivityUnitsSequence = Sequence([unit])
        ch.ChannelSensitivityCorrectionFactor = 1.0
        ch.ChannelBaseline = 0
        ch.WaveformBitsStored = 16
        chans.append(ch)
    wf.ChannelDefinitionSequence = Sequence(chans)
    wf.WaveformBitsAllocated = 16
    wf.WaveformSampleInterpretation = "SS"
    lead_i = np.round(trace * 0.3 / 5.0)
    lead_ii = np.round(trace / 5.0)
    wf.WaveformData = np.stack([lead_i, lead_ii], axis=1).astype("<i2").tobytes()
    ds.WaveformSequence = Sequence([wf])
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 2, 3
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 19, 22
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    made.append(("ecg_waveform_cine.dcm", file_meta(ds, ExplicitVRLittleEndian)))

    # JPEG lossless (process 14, SV1), 8-bit greyscale, 2 frames.
    ds = base(20, 24, 2)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 8, 8, 7
    ds.FrameTime = 40
    frames = moving_picture(2, 20, 24, 1)[..., 0]
    ds.PixelData = pydicom.encaps.encapsulate([jpeg_lossless(f) for f in frames])
    ds["PixelData"].VR = "OB"
    made.append(("jpeg_lossless_mono.dcm", file_meta(ds, JPEGLosslessSV1)))

    # JPEG 2000 lossy with the irreversible colour transform (YBR_ICT).
    ds = base(32, 40, 1, US_IMAGE)
    # The array is RGB; naming YBR_ICT makes the encoder apply the colour transform.
    ds.PhotometricInterpretation = "YBR_ICT"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 3, 8, 8, 7
    ds.PlanarConfiguration = 0
    ds.compress(JPEG2000, moving_picture(1, 32, 40, 3)[0], j2k_cr=[4],
                encoding_plugin="pylibjpeg", generate_instance_uid=False)
    made.append(("jpeg2k_ybr_ict.dcm", ds))

    # A bare dataset (no preamble, no DICM, no file meta), MONOCHROME1, no extension.
    ds = base(6, 8, 1, US_IMAGE)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 8, 8, 7
    ds.PixelData = np.arange(48, dtype=np.uint8).tobytes()
    made.append(("bare_dataset_mono1", ds))

    for name, ds in made:
        path = HERE / name
        if name.startswith("bare_dataset"):
            with open(path, "wb") as f:
                fp = pydicom.filebase.DicomFileLike(f)
                fp.is_implicit_VR, fp.is_little_endian = True, True
                pydicom.filewriter.write_dataset(fp, ds)
        else:
            ds.save_as(path, enforce_file_format=True)
    return [name for name, _ in made]


def reference(name):
    path = HERE / name
    ds = pydicom.dcmread(path, force=True)
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    pi = ds.PhotometricInterpretation
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        arr = arr[None]
    if pi == "PALETTE COLOR":
        depth = ds.RedPaletteColorLookupTableDescriptor[2]
        arr = apply_color_lut(arr, ds)
        arr = (arr >> 8 if depth == 16 else np.minimum(arr, 255)).astype(np.uint8)
    elif pi in ("MONOCHROME1", "MONOCHROME2"):
        bits = ds.BitsStored
        if bits > 8:
            span = (1 << bits) - 1
            arr = (arr.astype(np.int64) * 255 + span // 2) // span
        arr = arr.astype(np.uint8)
        if pi == "MONOCHROME1":
            arr = 255 - arr
        arr = arr[..., None]
    arr = np.ascontiguousarray(arr.astype(np.uint8))
    f, rows, cols, ch = arr.shape
    assert f == frames, (name, f, frames)
    step = 1 if FULL else max(1, int(np.ceil(np.sqrt(rows * cols / 12000))))
    checked = list(range(frames)) if FULL else sorted({0, frames // 2, frames - 1})
    for i in checked:
        (REF / f"{path.name}.f{i}.bin").write_bytes(arr[i, ::step, ::step].tobytes())
    ts = str(ds.file_meta.TransferSyntaxUID)
    lossy = ts in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91")
    meta = {
        "file": path.name,
        "frames": frames,
        "rows": rows,
        "columns": cols,
        "format": "Rgb24" if ch == 3 else "Grey8",
        "step": step,
        "checked_frames": checked,
        "lossy": lossy,
        "means": [[round(float(m), 4) for m in arr[i].reshape(-1, ch).mean(axis=0)]
                  for i in range(frames)],
    }
    (REF / f"{path.name}.json").write_text(json.dumps(meta, indent=1) + "\n")


def main():
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data/dicom")
    REF.mkdir(exist_ok=True)
    for name in REAL:
        shutil.copyfile(shared / name, HERE / name)
        (HERE / name).chmod(0o644)
    names = synthetic()
    for name in [n for n in REAL if n != "waveform_ecg.dcm"] + names:
        reference(name)
        print("reference", name)


if __name__ == "__main__":
    main()
