#!/usr/bin/env python3
"""Writes tiny.onnx: a 64x64 model with the YOLOv8 detection layout whose
behaviour is fixed by its weights, so tests can predict its boxes exactly.

  input  "images"  [N, 3, 64, 64] float RGB 0..1
  output "output0" [N, 4 + 4, 64]  rows cx, cy, w, h (input pixels), then the
                                   scores of the classes red, green, blue, dark

How it decides:
  * The image is cut into an 8x8 grid of 8x8-pixel cells (AveragePool k=8,
    s=8): one anchor per cell, anchor index = row * 8 + col.
  * Every anchor's box is 16x16 pixels centred on its cell's centre
    (cx = 8*col + 4, cy = 8*row + 4): twice the cell, so the boxes of
    neighbouring cells overlap (IoU 1/3 side by side), which NMS tests use.
  * Class scores are a sigmoid of a linear function of the cell's mean colour
    (a 1x1 convolution), steep enough to be ~0 or ~1 on flat colours:
        red   = sigmoid(10 * (r - g - b))
        green = sigmoid(10 * (g - r - b))
        blue  = sigmoid(10 * (b - r - g))
        dark  = sigmoid(10 - 13.333 * (r + g + b))
    A pure red cell scores 0.99995 red; white, grey (the letterbox pad, 114)
    and black-on-red mixes stay far below 0.25 for the other classes.

The graph uses only AveragePool, Conv, Sigmoid, Add, Concat and Reshape, so
both onnxruntime and tract run it. The batch dimension is symbolic.
Ultralytics-style metadata (`names`, `imgsz`, `stride`) comes with it.

  python3 make_tiny.py [out.onnx]      (needs: pip install onnx numpy)
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 64
CELL = 8
GRID = SIZE // CELL
CLASSES = ["red", "green", "blue", "dark"]
K = 10.0


def build() -> onnx.ModelProto:
    nc = len(CLASSES)
    # Class scores: a 1x1 conv over the cell means (weights per class x RGB).
    w = np.array(
        [
            [K, -K, -K],  # red
            [-K, K, -K],  # green
            [-K, -K, K],  # blue
            [-K * 4 / 3, -K * 4 / 3, -K * 4 / 3],  # dark
        ],
        dtype=np.float32,
    ).reshape(nc, 3, 1, 1)
    b = np.array([0.0, 0.0, 0.0, K], dtype=np.float32)

    # Boxes: zero conv (keeps the batch dimension) plus a constant grid.
    zero_w = np.zeros((4, 3, 1, 1), dtype=np.float32)
    grid = np.zeros((1, 4, GRID, GRID), dtype=np.float32)
    for row in range(GRID):
        for col in range(GRID):
            grid[0, :, row, col] = [CELL * col + CELL / 2, CELL * row + CELL / 2, 2 * CELL, 2 * CELL]

    inits = [
        numpy_helper.from_array(w, "cls_w"),
        numpy_helper.from_array(b, "cls_b"),
        numpy_helper.from_array(zero_w, "box_w"),
        numpy_helper.from_array(grid, "box_grid"),
        numpy_helper.from_array(np.array([0, 4 + nc, GRID * GRID], dtype=np.int64), "out_shape"),
    ]
    nodes = [
        helper.make_node("AveragePool", ["images"], ["cells"], kernel_shape=[CELL, CELL], strides=[CELL, CELL]),
        helper.make_node("Conv", ["cells", "cls_w", "cls_b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
        helper.make_node("Conv", ["cells", "box_w"], ["box_zero"]),
        helper.make_node("Add", ["box_zero", "box_grid"], ["boxes"]),
        helper.make_node("Concat", ["boxes", "scores"], ["grid_out"], axis=1),
        helper.make_node("Reshape", ["grid_out", "out_shape"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fleetwatch-tiny-yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + nc, GRID * GRID])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="fleetwatch")
    model.ir_version = 8
    names = "{" + ", ".join(f"{i}: '{n}'" for i, n in enumerate(CLASSES)) + "}"
    for k, v in {
        "names": names,
        "imgsz": f"[{SIZE}, {SIZE}]",
        "stride": str(CELL),
        "task": "detect",
        "description": "fleetwatch tiny test model (colour cells)",
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "tiny.onnx"
    onnx.save(build(), out)
    print(out)
