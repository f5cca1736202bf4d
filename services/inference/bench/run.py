#!/usr/bin/env python3
"""End-to-end detection throughput (JPEG in -> detections out) on this machine,
three pipelines in one run on the same model and the same frames:

  python-ort   a Python pipeline as a user would write it (PIL decode,
               letterbox like ultralytics, numpy normalisation, onnxruntime,
               numpy per-class NMS), frame after frame
  rust-ort     fleetwatch-inference's pipeline with onnxruntime
  rust-tract   fleetwatch-inference's pipeline with tract

The model is a YOLOv8n-architecture graph with random weights at 640x640
(models/make_yolov8n.py; speed does not depend on weight values), generated
here, not committed. Frames are synthetic 1280x720 JPEGs (quality 85).

  .fleetwatch/venv/bin/python services/inference/bench/run.py [--count 60] [--rounds 3] [--tract-count 10]

python-ort and rust-ort alternate for --rounds rounds, so each round's ratio
compares two runs made seconds apart on a machine whose load drifts.

Needs the venv scripts/test makes (onnxruntime numpy onnx pillow) and builds
the bench binary in release. Prints a Markdown table and writes it to
.fleetwatch/bench/results.md.
"""

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
OUT = ROOT / ".fleetwatch" / "bench"
CONF, IOU, MAX_DET, MAX_WH = 0.25, 0.45, 300, 7680


# ------------------------------------------------------------------ python
def letterbox(img: Image.Image, size: int) -> np.ndarray:
    w, h = img.size
    r = min(size / w, size / h)
    nw, nh = round(w * r), round(h * r)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
    x = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    return np.ascontiguousarray(x), r, (size - nw) // 2, (size - nh) // 2


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list:
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size and len(keep) < MAX_DET:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0, xx2 - xx1) * np.maximum(0, yy2 - yy1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][ovr <= iou]
    return keep


def postprocess(out: np.ndarray, r: float, px: int, py: int, w: int, h: int) -> list:
    pred = out.T  # (anchors, 4 + classes)
    scores = pred[:, 4:].max(1)
    mask = scores >= CONF
    pred, scores = pred[mask], scores[mask]
    if not len(pred):
        return []
    cls = pred[:, 4:].argmax(1)
    xy, wh = pred[:, :2], pred[:, 2:4]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    keep = nms(boxes + cls[:, None] * MAX_WH, scores, IOU)  # per class, as ultralytics
    b = boxes[keep]
    b[:, [0, 2]] = ((b[:, [0, 2]] - px) / r / w).clip(0, 1)
    b[:, [1, 3]] = ((b[:, [1, 3]] - py) / r / h).clip(0, 1)
    return [(int(c), float(s), *bb) for c, s, bb in zip(cls[keep], scores[keep], b)]


def python_pipeline(model: Path, jpegs: list, count: int, warmup: int, threads: int) -> dict:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    size = sess.get_inputs()[0].shape[2]

    def one(data: bytes) -> list:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        x, r, px, py = letterbox(img, size)
        out = sess.run(None, {name: x})[0]
        return postprocess(out[0], r, px, py, *img.size)

    for i in range(warmup):
        one(jpegs[i % len(jpegs)])
    t = time.perf_counter()
    dets = sum(len(one(jpegs[(warmup + i) % len(jpegs)])) for i in range(count))
    secs = time.perf_counter() - t
    return {"pipeline": "python-ort", "frames": count, "seconds": secs, "fps": count / secs,
            "detections": dets, "intra_threads": threads}


def ort_ceiling(model: Path, sessions: int, seconds: float) -> float:
    """Model runs/s with nothing else: `sessions` single-threaded onnxruntime
    sessions running side by side on one fixed input (onnxruntime releases the
    GIL while it runs). No pipeline using these kernels on these cores can
    exceed it, whatever its decoding, batching or language."""
    import threading

    def mk():
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])

    sess = [mk() for _ in range(sessions)]
    name = sess[0].get_inputs()[0].name
    size = sess[0].get_inputs()[0].shape[2]
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    for s in sess:
        s.run(None, {name: x})
    counts = [0] * sessions
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            sess[i].run(None, {name: x})
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(sessions)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(counts) / (time.perf_counter() - t)


# -------------------------------------------------------------------- setup
def make_frames(n: int, w: int, h: int) -> Path:
    d = OUT / f"frames-{w}x{h}"
    if d.is_dir() and len(list(d.glob("*.jpg"))) >= n:
        return d
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        # Smooth terrain with texture and a few objects: JPEG-realistic content.
        coarse = rng.random((h // 40 + 2, w // 40 + 2, 3)) * 200 + 30
        img = Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BICUBIC)
        a = np.asarray(img, dtype=np.int16) + rng.integers(-12, 12, (h, w, 3))
        for _ in range(4):
            x0, y0 = rng.integers(0, w - 120), rng.integers(0, h - 80)
            a[y0:y0 + rng.integers(20, 80), x0:x0 + rng.integers(20, 120)] = rng.integers(0, 255, 3)
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(d / f"{i:03d}.jpg", quality=85)
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=60, help="frames measured per pipeline and round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="python-ort and rust-ort alternate this many times (the machine's load drifts; "
                         "each round's ratio compares runs seconds apart)")
    ap.add_argument("--tract-count", type=int, default=10, help="frames for rust-tract (once; 0 = skip)")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2,
                    help="python-ort: onnxruntime intra-op threads (its default is one per core)")
    ap.add_argument("--sessions", type=int, default=0,
                    help="rust: model instances (model.sessions; 0 = the service's default)")
    ap.add_argument("--intra-threads", type=int, default=0,
                    help="rust: intra-op threads per instance (model.intra_threads; 0 = the service's default)")
    ap.add_argument("--max-batch", type=int, default=1)
    ap.add_argument("--in-flight", type=int, default=4)
    ap.add_argument("--frame-size", default="1280x720")
    ap.add_argument("--ceiling-secs", type=float, default=8,
                    help="also measure onnxruntime alone (no decode/NMS) with as many single-threaded "
                         "sessions as rust-ort uses: the most any pipeline can reach here (0 = skip)")
    ap.add_argument("--busy", type=int, default=0,
                    help="run this many busy-loop neighbour processes during the measurement (a loaded node)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--bench-bin", type=Path, default=ROOT / "target/release/fleetwatch-inference-bench")
    args = ap.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    model = OUT / "yolov8n-random.onnx"
    if not model.exists():
        subprocess.run([sys.executable, str(ROOT / "services/inference/models/make_yolov8n.py"), str(model)], check=True)
    w, h = map(int, args.frame_size.split("x"))
    frames = make_frames(32, w, h)
    jpegs = [p.read_bytes() for p in sorted(frames.glob("*.jpg"))]

    bench = args.bench_bin
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "fleetwatch-inference",
                        "--bin", "fleetwatch-inference-bench"], cwd=ROOT, check=True)
    env = dict(os.environ)
    env.setdefault("ORT_DYLIB_PATH", str(next(Path(ort.__file__).parent.glob("capi/libonnxruntime.so*"))))

    def rust(runtime: str, count: int) -> dict:
        cmd = [str(bench), "--model", str(model), "--frames", str(frames), "--runtime", runtime,
               "--count", str(count), "--warmup", str(args.warmup if runtime == "ort" else 1),
               "--max-batch", str(args.max_batch), "--in-flight", str(args.in_flight),
               "--sessions", str(args.sessions), "--intra-threads", str(args.intra_threads)]
        r = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        return json.loads(r.stdout.strip().splitlines()[-1])

    neighbours = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        measure(args, model, jpegs, frames, rust, w, h)
    finally:
        for n in neighbours:
            n.kill()


def measure(args, model: Path, jpegs: list, frames: Path, rust, w: int, h: int) -> None:
    load_before = os.getloadavg()[0]
    rounds = []
    for i in range(args.rounds):
        load = os.getloadavg()[0]
        py = python_pipeline(model, jpegs, args.count, args.warmup, args.threads)
        rs = rust("ort", args.count)
        rounds.append((load, py, rs))
        print(f"round {i + 1}: load {load:.2f}, python-ort {py['fps']:.2f} f/s, rust-ort {rs['fps']:.2f} f/s, "
              f"{rs['fps'] / py['fps']:.2f}x", file=sys.stderr, flush=True)
    tract = rust("tract", args.tract_count) if args.tract_count > 0 else None
    rs0 = rounds[0][2]
    ratios = sorted(rs["fps"] / py["fps"] for _, py, rs in rounds)
    py_total = sum(py["frames"] for _, py, _ in rounds) / sum(py["seconds"] for _, py, _ in rounds)
    rs_total = sum(rs["frames"] for _, _, rs in rounds) / sum(rs["seconds"] for _, _, rs in rounds)
    lines = [
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{cpu_model()}, load average {load_before:.2f} before the run",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; onnxruntime {ort.__version__}",
        f"- model: YOLOv8n architecture, random weights, 640x640, output [1,84,8400]; frames: 32 synthetic {w}x{h} JPEGs (q85)",
        f"- python-ort: one session, intra-op threads {args.threads}, graph optimisation all (onnxruntime's defaults)",
        f"- rust-ort: {rs0['sessions']} model instance(s) x {rs0['intra_threads']} intra-op thread(s), "
        f"max batch {args.max_batch}, frames in flight {args.in_flight}",
        f"- {args.rounds} rounds of {args.count} frames, python-ort then rust-ort in each"
        + (f"; {args.busy} busy-loop neighbour process(es) running" if args.busy else ""),
        "",
        "| round | load | python-ort f/s | rust-ort f/s | rust-ort / python-ort | rust decode+letterbox ms/frame | rust model run ms/batch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (load, py, rs) in enumerate(rounds):
        lines.append(f"| {i + 1} | {load:.2f} | {py['fps']:.2f} | {rs['fps']:.2f} | {rs['fps'] / py['fps']:.2f}x "
                     f"| {rs.get('decode_letterbox_ms', 0):.1f} | {rs.get('model_run_ms', 0):.0f} |")
    lines.append(f"| all | | {py_total:.2f} | {rs_total:.2f} | {rs_total / py_total:.2f}x "
                 f"(rounds: min {ratios[0]:.2f}x, median {ratios[len(ratios) // 2]:.2f}x) | | |")
    if tract:
        lines += ["", f"rust-tract: {tract['frames']} frames in {tract['seconds']:.2f} s, {tract['fps']:.2f} f/s "
                      f"({tract['fps'] / rounds[-1][1]['fps']:.2f}x the last python-ort round)"]
    if args.ceiling_secs > 0:
        sessions = rs0["sessions"]
        ceiling = ort_ceiling(model, sessions, args.ceiling_secs)
        lines += ["", f"onnxruntime alone, {sessions} single-threaded session(s) side by side, no decode or NMS: "
                      f"{ceiling:.2f} runs/s = {ceiling / py_total:.2f}x python-ort, the ceiling for any "
                      f"pipeline on these kernels and cores (rust-ort reached {rs_total / ceiling:.0%} of it)"]
    table = "\n".join(lines)
    print(table)
    (OUT / "results.md").write_text(table + "\n")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


if __name__ == "__main__":
    main()
