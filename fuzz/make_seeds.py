#!/usr/bin/env python3
"""Regenerates the binary seed corpora of the fuzz targets in seeds/.

JSON and MQTT seeds are committed as written (the seed documents' literal
examples and the unit tests' bodies); this script makes the binary ones:
protobuf record values from seeds/textproto/*.txtpb (encoded with protoc,
$PROTOC or the copy vendored in the cargo registry by protoc-bin-vendored),
and JPEGs of several encodings (baseline, progressive, restart markers,
grayscale, 4:2:0 / 4:4:4, arithmetic coding) made with libjpeg-turbo's
cjpeg (Debian: libjpeg-turbo-progs). Output names are content hashes, so a
rerun rewrites the same files.
"""

import glob
import hashlib
import os
import shutil
import subprocess
import sys

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
SEEDS = os.path.join(FUZZ, "seeds")

# target -> (message type, text proto, takes a flag byte)
PROTO = {
    "proto_telemetry": ("TelemetryBatch", "telemetry", True),
    "proto_detections": ("DetectionBatch", "detections", True),
    "proto_frames": ("Frame", "frames", True),
    "proto_incidents": ("IncidentEvent", "incidents", False),
    "proto_commands": ("Command", "commands", False),
    "proto_command_status": ("CommandStatus", "command_status", False),
}


def write(target, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def protoc():
    if os.environ.get("PROTOC"):
        return os.environ["PROTOC"]
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    found = sorted(glob.glob(os.path.join(
        home, "registry/src/*/protoc-bin-vendored-linux-x86_64-*/bin/protoc")))
    if found:
        return found[-1]
    return shutil.which("protoc") or sys.exit("no protoc: set PROTOC")


def encode(message, text):
    protos = sorted(glob.glob(os.path.join(ROOT, "proto/fleetwatch/v1/*.proto")))
    return subprocess.run(
        [protoc(), f"--encode=fleetwatch.v1.{message}", "-I", os.path.join(ROOT, "proto"), *protos],
        input=text, check=True, capture_output=True).stdout


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def ppm(w, h, gray=False):
    px = bytearray()
    for y in range(h):
        for x in range(w):
            v = (x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x ^ y) * 16 % 256)
            px.extend(v[:1] if gray else v)
    return f"{'P5' if gray else 'P6'}\n{w} {h}\n255\n".encode() + bytes(px)


def jpegs():
    if not shutil.which("cjpeg"):
        sys.exit("no cjpeg: apt-get install libjpeg-turbo-progs")
    variants = [
        (16, 8, False, ["-quality", "90"]),
        (3, 2, False, []),
        (1, 1, False, []),
        (33, 17, False, ["-sample", "2x2", "-optimize"]),
        (24, 24, False, ["-sample", "1x1"]),
        (20, 12, False, ["-progressive"]),
        (32, 16, False, ["-restart", "1"]),
        (17, 9, True, ["-grayscale"]),
        (16, 16, False, ["-arithmetic"]),
        (40, 8, False, ["-quality", "10", "-dct", "fast"]),
    ]
    out = []
    for w, h, gray, args in variants:
        r = subprocess.run(["cjpeg", *args], input=ppm(w, h, gray), capture_output=True)
        if r.returncode == 0:
            out.append(r.stdout)
    return out


def main():
    images = jpegs()
    for img in images:
        write("jpeg_header", img)
        write("jpeg_decode", img)
        for ts in [b"", b"2025-09-24T09:10:15Z", b" 2025-09-24T09:10:14.250+02:00 "]:
            write("frame_http", bytes([len(ts)]) + ts + img)
    for target, (message, name, flagged) in PROTO.items():
        with open(os.path.join(SEEDS, "textproto", f"{name}.txtpb"), "rb") as f:
            value = encode(message, f.read())
        values = [value]
        if target == "proto_frames":
            # Field 5 (data), length-delimited: the frame's JPEG.
            values = [value + b"\x2a" + varint(len(img)) + img for img in images[:3]]
        for v in values:
            for prefix in ([b"\x00", b"\x01"] if flagged else [b""]):
                write(target, prefix + v)


if __name__ == "__main__":
    main()
