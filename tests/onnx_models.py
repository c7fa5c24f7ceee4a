"""Small ONNX graphs, built with onnx.helper, that behave like YOLO exports with a known answer.

``probe_model`` outputs two candidates *computed from the input tensor* (so letterboxing and the
mapping back can be checked exactly), then fixed candidates, then zero-score padding:

* candidate 0 — the letterboxed image content (every pixel that is not the 114 grey pad), inset by
  ``inset`` input pixels on each side. In the original image that is exactly
  ``(inset/sx, inset/sy, W - inset/sx, H - inset/sy)``: any error in pad or scale shows.
* candidate 1 — the bounding box of the bright pixels (all channels > 0.5): a white square drawn on
  a dark test image comes back where it was drawn.
* ``fixed`` — constant candidates ``(cx, cy, w, h, class_id, score)`` in input pixels (NMS, thresholds).

In the pose variant each computed candidate carries two keypoints, its top-left and bottom-right
corners, with visibility 0.9.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the builders import onnx when they run: it takes a second, in every worker's collection
    import onnx

OPSET = 17
BIG = 1.0e6
CONTENT_SCORE = 0.9
SQUARE_SCORE = 0.8
KPT_VIS = 0.9

Fixed = tuple[float, float, float, float, int, float]  # cx, cy, w, h, class_id, score


class _Graph:
    """Just enough of a builder to keep the graph code readable."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, value: np.ndarray | float | Sequence[float], dtype: type = np.float32) -> str:
        from onnx import numpy_helper

        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: object) -> str:
        from onnx import helper

        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def scalar1(self, x: str) -> str:
        return self.op("Reshape", x, self.const([1], np.int64))


def _extent(g: _Graph, mask: str, idx: str, axes: list[int]) -> tuple[str, str]:
    """First and one-past-last index where ``mask`` (1,1,H,W) is set along the remaining axis."""
    line = g.op("ReduceMax", mask, axes=axes, keepdims=0)
    one = g.const(1.0)
    lo = g.op("ReduceMin", g.op("Add", g.op("Mul", line, idx), g.op("Mul", g.op("Sub", one, line), g.const(BIG))), keepdims=1)
    hi = g.op("ReduceMax", g.op("Mul", line, g.op("Add", idx, one)), keepdims=1)
    return g.scalar1(lo), g.scalar1(hi)


def _box(g: _Graph, mask: str, idx_w: str, idx_h: str, inset: float) -> tuple[str, str, str, str]:
    x1, x2 = _extent(g, mask, idx_w, [0, 1, 2])
    y1, y2 = _extent(g, mask, idx_h, [0, 1, 3])
    if inset:
        d = g.const([inset])
        x1, y1, x2, y2 = g.op("Add", x1, d), g.op("Add", y1, d), g.op("Sub", x2, d), g.op("Sub", y2, d)
    return x1, y1, x2, y2


def probe_model(
    path: Path,
    *,
    layout: str = "v8",
    input_hw: tuple[int, int] | None = (320, 320),
    num_classes: int = 1,
    fixed: Sequence[Fixed] = (),
    inset: float = 2.0,
    computed: bool = True,
    keypoints: bool = False,
    candidates: int = 64,
    metadata: dict[str, str] | None = None,
    fp16: bool = False,
    v5_objectness: float = 1.0,
) -> Path:
    """Write a YOLO-like model to ``path``. ``layout``: "v8" (1, 4+nc[+K*3], N) or "v5" (1, N, 5+nc).

    ``input_hw=None`` makes height and width dynamic. In v5 the computed candidates get objectness
    ``v5_objectness`` and class score CONTENT/SQUARE_SCORE; fixed ones objectness 1.
    """
    from onnx import TensorProto, helper

    assert layout in ("v8", "v5")
    assert not (keypoints and layout == "v5")
    g = _Graph()
    x = "images"
    xf = g.op("Cast", x, to=TensorProto.FLOAT) if fp16 else x
    shape = g.op("Shape", xf)
    zero, one = g.const(0.0), g.const(1.0)

    def dim(i: int) -> str:
        d = g.op("Gather", shape, g.const(i, np.int64), axis=0)
        return g.op("Range", zero, g.op("Cast", d, to=TensorProto.FLOAT), one)

    idx_h, idx_w = dim(2), dim(3)
    grey = g.op("ReduceMax", g.op("Abs", g.op("Sub", xf, g.const(114.0 / 255.0))), axes=[1], keepdims=1)
    content = g.op("Cast", g.op("Greater", grey, g.const(1e-3)), to=TensorProto.FLOAT)
    bright = g.op("Cast", g.op("Greater", g.op("ReduceMin", xf, axes=[1], keepdims=1), g.const(0.5)), to=TensorProto.FLOAT)

    k = 2 if keypoints else 0
    attrs = (4 if layout == "v8" else 5) + num_classes + 3 * k
    columns: list[str] = []

    def column(box: tuple[str, str, str, str], cls: int, score: float, with_kpts: bool) -> str:
        x1, y1, x2, y2 = box
        half = g.const([0.5])
        cx = g.op("Mul", g.op("Add", x1, x2), half)
        cy = g.op("Mul", g.op("Add", y1, y2), half)
        w, h = g.op("Sub", x2, x1), g.op("Sub", y2, y1)
        parts = [cx, cy, w, h]
        scores = np.zeros(num_classes, dtype=np.float32)
        if layout == "v5":
            parts.append(g.const([v5_objectness]))
        scores[cls] = score
        parts.append(g.const(scores))
        if k:
            vis = g.const([KPT_VIS])
            parts += [x1, y1, vis, x2, y2, vis] if with_kpts else [g.const(np.zeros(3 * k))]
        return g.op("Unsqueeze", g.op("Concat", *parts, axis=0), g.const([1], np.int64))

    if computed:
        columns.append(column(_box(g, content, idx_w, idx_h, inset), 0, CONTENT_SCORE, True))
        columns.append(column(_box(g, bright, idx_w, idx_h, 0.0), 0, SQUARE_SCORE, True))
    rest = np.zeros((attrs, max(0, candidates - len(columns))), dtype=np.float32)
    for j, (cx, cy, w, h, cls, score) in enumerate(fixed):
        rest[:4, j] = (cx, cy, w, h)
        if layout == "v5":
            rest[4, j] = 1.0
            rest[5 + cls, j] = score
        else:
            rest[4 + cls, j] = score
    assert len(fixed) <= rest.shape[1], "raise candidates= for that many fixed boxes"
    columns.append(g.const(rest))
    table = g.op("Concat", *columns, axis=1)  # (attrs, N)
    n = len(columns) - 1 + rest.shape[1] if computed else rest.shape[1]
    if layout == "v5":
        table = g.op("Transpose", table, perm=[1, 0])
        out_shape = [1, n, attrs]
    else:
        out_shape = [1, attrs, n]
    g.nodes.append(helper.make_node("Unsqueeze", [table, g.const([0], np.int64)], ["output0"]))

    h, w = input_hw if input_hw else ("height", "width")
    in_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes,
        "yolo_probe",
        [helper.make_tensor_value_info(x, in_type, [1, 3, h, w])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
        initializer=g.inits,
    )
    return _save(graph, path, metadata)


def constant_model(
    path: Path,
    output: np.ndarray,
    *,
    input_shape: Sequence[int | str] = (1, 3, 64, 64),
    extra_input: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """A model whose single output is ``output`` whatever the input (shape tests, bad layouts)."""
    from onnx import TensorProto, helper

    g = _Graph()
    # Keep the input in the graph's dataflow: output = const + 0 * mean(input).
    mean = g.op("ReduceMean", "images", keepdims=0)
    zeroed = g.op("Mul", mean, g.const(0.0))
    g.nodes.append(helper.make_node("Add", [g.const(output.astype(np.float32)), zeroed], ["output0"]))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(input_shape))]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(
        g.nodes,
        "yolo_constant",
        inputs,
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=g.inits,
    )
    return _save(graph, path, metadata)


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str] | None) -> Path:
    from onnx import checker, helper, save

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime we support
    if metadata:
        helper.set_model_props(model, metadata)
    checker.check_model(model, full_check=True)
    path = Path(path)
    save(model, path)
    return path
