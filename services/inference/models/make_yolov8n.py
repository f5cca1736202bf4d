#!/usr/bin/env python3
"""Writes a YOLOv8n-architecture ONNX graph with random weights, for benchmarks.

The graph follows ultralytics' yolov8n.yaml (width 0.25, depth 0.33) as its
ONNX export looks once BatchNorm is fused: Conv(+bias)+SiLU blocks, C2f,
SPPF, the upsample/concat PAN neck and the decoupled Detect head with DFL,
decoding boxes to cx,cy,w,h in input pixels:

  input  "images"  [N, 3, 640, 640]
  output "output0" [N, 84, 8400]     (80 COCO classes)

Inference time does not depend on the weight values, so random ones are
enough to measure throughput; the class-score bias is strongly negative (as in
a freshly initialised YOLOv8 head) so almost nothing passes the confidence
threshold. Needs only `onnx` and `numpy` (no torch/ultralytics).

  python3 make_yolov8n.py [out.onnx] [--size 640]
"""

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

COCO = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]


class Graph:
    def __init__(self, seed: int = 0):
        self.nodes, self.inits, self.n = [], [], 0
        self.rng = np.random.default_rng(seed)

    def name(self, p: str) -> str:
        self.n += 1
        return f"{p}_{self.n}"

    def const(self, arr: np.ndarray, p: str = "c") -> str:
        n = self.name(p)
        self.inits.append(numpy_helper.from_array(arr, n))
        return n

    def node(self, op: str, inputs, p: str = None, **attrs) -> str:
        out = self.name(p or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def conv2d(self, x: str, c1: int, c2: int, k: int = 1, s: int = 1, bias: float = None) -> str:
        w = (self.rng.standard_normal((c2, c1, k, k)) * np.sqrt(1.0 / (c1 * k * k))).astype(np.float32)
        b = np.full(c2, bias, np.float32) if bias is not None else (self.rng.standard_normal(c2) * 0.01).astype(np.float32)
        p = k // 2
        return self.node("Conv", [x, self.const(w, "w"), self.const(b, "b")], kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])

    def conv(self, x: str, c1: int, c2: int, k: int = 1, s: int = 1) -> str:
        """ultralytics Conv (Conv2d+BN fused) + SiLU, exported as x*sigmoid(x)."""
        y = self.conv2d(x, c1, c2, k, s)
        return self.node("Mul", [y, self.node("Sigmoid", [y])], "silu")

    def c2f(self, x: str, c1: int, c2: int, n: int, shortcut: bool) -> str:
        c = c2 // 2
        y = self.conv(x, c1, 2 * c, 1)
        a = self.name("split_a")
        b = self.name("split_b")
        self.nodes.append(helper.make_node("Split", [y, self.const(np.array([c, c], np.int64), "split")], [a, b], axis=1))
        ys = [a, b]
        for _ in range(n):
            h = self.conv(self.conv(ys[-1], c, c, 3), c, c, 3)
            if shortcut:
                h = self.node("Add", [ys[-1], h])
            ys.append(h)
        return self.conv(self.node("Concat", ys, axis=1), (2 + n) * c, c2, 1)

    def sppf(self, x: str, c1: int, c2: int, k: int = 5) -> str:
        c = c1 // 2
        y = [self.conv(x, c1, c, 1)]
        for _ in range(3):
            y.append(self.node("MaxPool", [y[-1]], kernel_shape=[k, k], strides=[1, 1], pads=[k // 2] * 4))
        return self.conv(self.node("Concat", y, axis=1), 4 * c, c2, 1)

    def upsample(self, x: str) -> str:
        scales = self.const(np.array([1, 1, 2, 2], np.float32), "scales")
        return self.node("Resize", [x, "", scales], mode="nearest")


def build(size: int = 640, nc: int = 80) -> onnx.ModelProto:
    g = Graph()
    x = "images"
    x = g.conv(x, 3, 16, 3, 2)  # 0 P1/2
    x = g.conv(x, 16, 32, 3, 2)  # 1 P2/4
    x = g.c2f(x, 32, 32, 1, True)  # 2
    x = g.conv(x, 32, 64, 3, 2)  # 3 P3/8
    p3 = g.c2f(x, 64, 64, 2, True)  # 4
    x = g.conv(p3, 64, 128, 3, 2)  # 5 P4/16
    p4 = g.c2f(x, 128, 128, 2, True)  # 6
    x = g.conv(p4, 128, 256, 3, 2)  # 7 P5/32
    x = g.c2f(x, 256, 256, 1, True)  # 8
    p5 = g.sppf(x, 256, 256)  # 9
    x = g.node("Concat", [g.upsample(p5), p4], axis=1)  # 10, 11
    h12 = g.c2f(x, 384, 128, 1, False)  # 12
    x = g.node("Concat", [g.upsample(h12), p3], axis=1)  # 13, 14
    o3 = g.c2f(x, 192, 64, 1, False)  # 15 (P3/8 out)
    x = g.node("Concat", [g.conv(o3, 64, 64, 3, 2), h12], axis=1)  # 16, 17
    o4 = g.c2f(x, 192, 128, 1, False)  # 18 (P4/16 out)
    x = g.node("Concat", [g.conv(o4, 128, 128, 3, 2), p5], axis=1)  # 19, 20
    o5 = g.c2f(x, 384, 256, 1, False)  # 21 (P5/32 out)

    # Detect head: decoupled box (DFL, reg_max 16) and class branches.
    reg = 16
    c2, c3 = max(16, 64 // 4, reg * 4), max(64, min(nc, 100))
    levels = []
    anchors, strides = [], []
    for feat, ch, stride in [(o3, 64, 8), (o4, 128, 16), (o5, 256, 32)]:
        box = g.conv2d(g.conv(g.conv(feat, ch, c2, 3), c2, c2, 3), c2, 4 * reg, 1)
        cls = g.conv2d(g.conv(g.conv(feat, ch, c3, 3), c3, c3, 3), c3, nc, 1, bias=-10.0)
        cat = g.node("Concat", [box, cls], axis=1)
        levels.append(g.node("Reshape", [cat, g.const(np.array([0, 4 * reg + nc, -1], np.int64), "shape")]))
        n = size // stride
        sx, sy = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
        anchors.append(np.stack([sx.ravel(), sy.ravel()]))
        strides.append(np.full(n * n, stride))
    a = sum(s.size for s in strides)
    out = g.node("Concat", levels, axis=1 + 1)  # [N, 144, A]
    boxd = g.name("box_dist")
    clsl = g.name("cls_logits")
    g.nodes.append(helper.make_node("Split", [out, g.const(np.array([4 * reg, nc], np.int64), "split")], [boxd, clsl], axis=1))
    # DFL: softmax over the 16 bins of each side, expectation via a 1x1 conv.
    d = g.node("Reshape", [boxd, g.const(np.array([0, 4, reg, a], np.int64), "shape")])
    d = g.node("Transpose", [d], perm=[0, 2, 1, 3])
    d = g.node("Softmax", [d], axis=1)
    d = g.node("Conv", [d, g.const(np.arange(reg, dtype=np.float32).reshape(1, reg, 1, 1), "dfl")])
    d = g.node("Reshape", [d, g.const(np.array([0, 4, a], np.int64), "shape")])
    lt = g.name("lt")
    rb = g.name("rb")
    g.nodes.append(helper.make_node("Split", [d, g.const(np.array([2, 2], np.int64), "split")], [lt, rb], axis=1))
    anc = g.const(np.concatenate(anchors, axis=1).astype(np.float32)[None], "anchors")  # [1, 2, A]
    x1y1 = g.node("Sub", [anc, lt])
    x2y2 = g.node("Add", [anc, rb])
    cxy = g.node("Div", [g.node("Add", [x1y1, x2y2]), g.const(np.array(2.0, np.float32))])
    wh = g.node("Sub", [x2y2, x1y1])
    dbox = g.node("Mul", [g.node("Concat", [cxy, wh], axis=1), g.const(np.concatenate(strides).astype(np.float32)[None, None], "strides")])
    scores = g.node("Sigmoid", [clsl])
    g.nodes.append(helper.make_node("Concat", [dbox, scores], ["output0"], axis=1))

    graph = helper.make_graph(
        g.nodes,
        "yolov8n-random",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + nc, a])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fleetwatch")
    model.ir_version = 8
    names = "{" + ", ".join(f"{i}: '{n}'" for i, n in enumerate(COCO[:nc])) + "}"
    for k, v in {"names": names, "imgsz": f"[{size}, {size}]", "stride": "32", "task": "detect",
                 "description": "YOLOv8n architecture, random weights (benchmark only)"}.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="yolov8n-random.onnx")
    ap.add_argument("--size", type=int, default=640)
    args = ap.parse_args()
    onnx.save(build(args.size), args.out)
    print(args.out)
