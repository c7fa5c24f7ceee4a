"""Checkpoints for the ``hysts`` backend, built from anime-face-detector 0.1.0's own model classes, so no
weights are ever downloaded (its pretrained ones live on the Hugging Face Hub).

* ``probe_yolov3`` — the package's ``YOLOv3FaceDetector`` with weights set so that it finds *red*: every
  convolution on the way to the stride-32 head copies the three input channels (R, G, B) at its centre tap,
  Darknet's residual branches add nothing, so each stride-32 cell sees the input pixel at its top-left
  corner. The head scores a cell ``sigmoid(20·(R − G − B) − 10)`` for its first anchor (≈1 on pure red, ≈0
  on grey, white or black; the other anchors and scales never score) with class score ≈1, and its box is
  the ``PROBE_SIZE`` square centred on the cell. A red patch around one sampled pixel therefore comes back
  as one known box, and a red patch read as blue (a swapped channel order) as none.
* ``random_hrnetv2`` / ``random_faster_rcnn`` — the package's landmark model and Faster R-CNN with
  PyTorch's default random initialisation (seeded): right architecture and keys, meaningless output.

Needs torch and anime_face_detector; imported only by tests that have them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from anime_face_detector._face import FasterRCNNFaceDetector, YOLOv3FaceDetector, _rescale_size
from anime_face_detector._landmark import LandmarkModel
from anime_face_detector._vendor.mmdet.darknet import ResBlock
from safetensors.torch import save_file
from torch import nn

PROBE_SIZE = 96.0  # side of the probe's boxes, in model-input pixels
PROBE_STRIDE = 32  # the head level that fires
PROBE_INPUT = YOLOv3FaceDetector.IMG_SCALE  # (max long edge, max short edge) of the package's resize
FIRST_ANCHOR_WH = (116.0, 90.0)  # the package's first stride-32 anchor (YOLOv3FaceDetector)
NUM_ATTRIB = 6  # tx, ty, tw, th, objectness, one class
OBJ_GAIN, OBJ_BIAS, CLASS_LOGIT, NEVER = 20.0, -10.0, 10.0, -30.0
PROBE_SCORE = 1.0 / (1.0 + math.exp(-(OBJ_GAIN + OBJ_BIAS))) / (1.0 + math.exp(-CLASS_LOGIT))


def _copy_rgb(conv: nn.Conv2d) -> None:
    conv.weight.zero_()
    if conv.bias is not None:
        conv.bias.zero_()
    kh, kw = conv.kernel_size
    for c in range(3):
        conv.weight[c, c, kh // 2, kw // 2] = 1.0


def probe_yolov3() -> YOLOv3FaceDetector:
    model = YOLOv3FaceDetector().eval()
    residual = {id(m) for block in model.modules() if isinstance(block, ResBlock) for m in block.modules()}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()  # weight 1, bias 0, running mean 0, var 1: y = x / sqrt(1 + eps)
            elif isinstance(module, nn.Conv2d):
                if id(module) in residual:
                    module.weight.zero_()  # the residual branch adds 0: Darknet's blocks pass x on
                else:
                    _copy_rgb(module)
        for level, pred in enumerate(model.bbox_head.convs_pred):
            pred.weight.zero_()
            bias = torch.zeros(pred.out_channels)
            bias[4::NUM_ATTRIB] = NEVER  # objectness of every anchor ...
            bias[5::NUM_ATTRIB] = CLASS_LOGIT
            if level == 0:  # ... but the first anchor of the stride-32 level, which reads R - G - B
                bias[2] = math.log(PROBE_SIZE / FIRST_ANCHOR_WH[0])
                bias[3] = math.log(PROBE_SIZE / FIRST_ANCHOR_WH[1])
                bias[4] = OBJ_BIAS
                pred.weight[4, :3, 0, 0] = torch.tensor([OBJ_GAIN, -OBJ_GAIN, -OBJ_GAIN])
            pred.bias.copy_(bias)
    return model


def random_hrnetv2(seed: int = 0) -> LandmarkModel:
    torch.manual_seed(seed)
    return LandmarkModel().eval()


def random_faster_rcnn(seed: int = 0) -> FasterRCNNFaceDetector:
    torch.manual_seed(seed)
    return FasterRCNNFaceDetector().eval()


def save(model: nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def input_scale(width: int, height: int) -> tuple[float, float]:
    """(sx, sy): the resize the package's face model applies to a width x height picture."""
    new_w, new_h = _rescale_size(width, height, *PROBE_INPUT)
    return new_w / width, new_h / height


def probe_box(width: int, height: int, row: int, col: int) -> tuple[float, float, float, float]:
    """The probe's box, in the picture's pixels, for a red patch over stride-32 cell (row, col)."""
    sx, sy = input_scale(width, height)
    cx, cy = (col + 0.5) * PROBE_STRIDE, (row + 0.5) * PROBE_STRIDE
    half = PROBE_SIZE / 2
    return (cx - half) / sx, (cy - half) / sy, (cx + half) / sx, (cy + half) / sy


def red_patch_image(width: int, height: int, cells: list[tuple[int, int]], radius_in: float = 8.0) -> np.ndarray:
    """A grey RGB picture with a red patch over the input pixel each cell (row, col) samples: ``radius_in``
    model-input pixels around it, so resizing keeps that pixel pure red and leaves its neighbours grey."""
    sx, sy = input_scale(width, height)
    rgb = np.full((height, width, 3), 128, dtype=np.uint8)
    for row, col in cells:
        x, y = (col * PROBE_STRIDE + 0.5) / sx - 0.5, (row * PROBE_STRIDE + 0.5) / sy - 0.5
        rx, ry = radius_in / sx, radius_in / sy
        x0, x1 = max(0, math.floor(x - rx)), min(width, math.ceil(x + rx) + 1)
        y0, y1 = max(0, math.floor(y - ry)), min(height, math.ceil(y + ry) + 1)
        rgb[y0:y1, x0:x1] = (255, 0, 0)
    return rgb
