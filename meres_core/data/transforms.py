"""Image / mask transforms shared by training, evaluation and inference.

Images are resized to the square model input without keeping the aspect ratio
and normalized with ImageNet statistics, as LAVT and CGFormer do. No horizontal
flip: it would break "left" / "right" in the sentences (LAVT and CGFormer also
train without it).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess_image(rgb: np.ndarray, size: int) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalized float tensor (3, size, size)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 array of shape (H, W, 3), got {rgb.dtype} {rgb.shape}")
    resized = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
    normalized = (resized.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(normalized.transpose(2, 0, 1)))


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """Binary (H, W) mask -> float tensor (size, size) of 0 / 1 (nearest neighbour)."""
    resized = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy(resized.astype(np.float32))


# Centroids per sample, NaN-padded to a fixed count so batches stack: meres-synth ranks at most 7 objects.
MAX_CENTROIDS = 8


def mask_centroids(masks: list[np.ndarray], rows: int = MAX_CENTROIDS) -> torch.Tensor:
    """Binary (H, W) masks -> (rows, 2) float: the visible centroid of each non-empty mask as
    x, y in [-1, 1] of the image (cell centres, as model/coordinates.py), NaN rows after them. The
    resize to the model input keeps these coordinates (no aspect ratio kept)."""
    out = torch.full((rows, 2), float("nan"))
    row = 0
    for mask in masks:
        ys, xs = np.nonzero(mask)
        if len(xs) and row < rows:
            height, width = mask.shape
            out[row] = torch.tensor([(xs.mean() + 0.5) / width * 2 - 1, (ys.mean() + 0.5) / height * 2 - 1])
            row += 1
    return out
