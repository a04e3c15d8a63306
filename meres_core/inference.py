"""Inference API: an RGB image and one or many sentences -> masks, scores, boxes, centroids.

One vision-encoder pass per image is shared by all sentences (the extractor and decoder
run batched over sentences), and language features are cached per sentence (LRU), so a
new frame with the same sentence never re-runs the language encoder.

Presence score: the mean foreground probability over the predicted mask ("maskness",
as in SOLO / Mask2Former mask scoring), 0 for an empty mask. The model is trained with
no-target sentences (empty masks) on the synthetic scenes, so an absent object yields an
empty or low-confidence mask and `found` is False.

"Which one?": when the sentence fits two objects ("the red mug" with two red mugs in view)
the mask has two separated parts of comparable probability mass. `candidate_parts` holds
the rule; the result is then `ambiguous` and lists every comparable part in `candidates`,
so a dialogue system can ask instead of the robot guessing.
"""
from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import build_from_checkpoint
from .config import BACKENDS, InferenceConfig, MeresConfig, load_config
from .data.transforms import preprocess_image
from .device import autocast, select_device, select_dtype
from .model.meres import MERES


@dataclass(frozen=True)
class Candidate:
    """One connected part of a mask: where it is and how probable it is."""

    bbox: tuple[int, int, int, int]  # (x_min, y_min, x_max, y_max), inclusive
    centroid: tuple[float, float]  # (u, v) pixels
    score: float  # mean probability over the part, as the presence score over the mask
    mass: float  # summed probability over the part: what ranks the parts

    def summary(self) -> dict:
        return {"bbox": self.bbox, "centroid": [round(c, 2) for c in self.centroid], "score": round(self.score, 4)}


@dataclass
class SegmentationResult:
    expression: str
    found: bool
    score: float  # presence score in [0, 1]
    mask: np.ndarray  # bool (H, W) at the input resolution
    probability: np.ndarray  # float32 (H, W)
    # Of the mask's most probable connected part (`part`, see candidate_parts); None when not found.
    bbox: Optional[tuple[int, int, int, int]]  # (x_min, y_min, x_max, y_max), inclusive
    centroid: Optional[tuple[float, float]]  # (u, v) pixels
    part: Optional[np.ndarray] = None  # bool (H, W): the connected part bbox / centroid describe
    timings_ms: dict[str, float] = field(default_factory=dict)
    # The parts of comparable mass (candidate_parts), most probable first: candidates[0] is `part`.
    # Empty when not found; more than one makes the result ambiguous.
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def ambiguous(self) -> bool:
        """The sentence fits more than one separated part: ask which one instead of guessing."""
        return len(self.candidates) > 1

    def summary(self) -> dict:
        """JSON-ready fields (no arrays)."""
        return {"expression": self.expression, "found": self.found, "score": round(self.score, 4),
                "bbox": self.bbox, "centroid": None if self.centroid is None else [round(c, 2) for c in self.centroid],
                "ambiguous": self.ambiguous, "candidates": [c.summary() for c in self.candidates],
                "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()}}


@dataclass(frozen=True)
class Decision:
    """How a probability map becomes a mask and a found / not found: the decision settings.

    Their defaults live in one place, a model's InferenceConfig; a caller that wants
    others (a node parameter, an evaluation sweep) passes its own Decision per call
    instead of changing a Segmenter that another thread may be using.
    """

    mask_threshold: float  # a pixel belongs to the mask above this probability
    presence_threshold: float  # the target is found when the presence score reaches this
    # A part holding at least this fraction of the top part's mass is a candidate too (candidate_parts).
    ambiguity_ratio: float = InferenceConfig.ambiguity_ratio

    @classmethod
    def from_config(cls, inference: InferenceConfig) -> "Decision":
        return cls(mask_threshold=inference.mask_threshold, presence_threshold=inference.presence_threshold,
                   ambiguity_ratio=inference.ambiguity_ratio)


def normalize_expression(text: str) -> str:
    return " ".join(str(text).split())


class Segmenter:
    def __init__(self, model: MERES, cfg: MeresConfig, metadata: dict | None = None,
                 device: str | None = None, precision: str | None = None,
                 backend: str | None = None, onnx_path: str | Path | None = None):
        """device / precision / backend / onnx_path: None takes the config's (`cfg.inference`).

        backend "onnx" runs the image path from `onnx_path` with onnxruntime in fp32 (the
        language encoder stays in PyTorch, cached); without a path it is exported at start-up.
        backend "compiled" runs it as an AOTInductor package at this precision, compiled on
        the first start for this model and machine and cached (meres_core/compiled.py).
        backend "auto" (CPU) runs that package when it is cached, else eager while a background
        process compiles it (compiled.BackgroundCompile); on CUDA it is eager.
        """
        inf = cfg.inference
        self.cfg = cfg
        self.metadata = metadata or {}
        self.device = select_device(device or inf.device)
        self.dtype = select_dtype(precision or inf.precision, self.device)
        if self.dtype == torch.bfloat16 and self.device.type == "cpu":
            # bf16 weights, on a copy (the caller's model keeps its dtype): autocast alone would cast
            # every fp32 weight to bf16 again on each call (no weight cache under inference_mode).
            model = copy.deepcopy(model).to(torch.bfloat16)
        self.model = model.to(self.device).eval()
        self.backend = backend or inf.backend
        self._image_path = None  # vision, extractor and decoder in one graph (onnx / compiled), else eager
        self._background = None  # backend auto: the compiled graph once it is in the cache (compiled.BackgroundCompile)
        if self.backend == "onnx":
            from .export_onnx import OnnxImagePath, temporary_export

            path = onnx_path or inf.onnx_path or temporary_export(self.model)
            self._image_path = OnnxImagePath(path, self.model, self.device)
        elif self.backend == "compiled":
            from .compiled import CompiledImagePath

            self._image_path = CompiledImagePath(self.model, self.dtype, self.device)
        elif self.backend == "auto" and self.device.type == "cpu":  # on CUDA auto is eager (compiling for it is unmeasured)
            from .compiled import BackgroundCompile

            self._background = BackgroundCompile(self.model, cfg, self.dtype, self.device)
        elif self.backend not in ("torch", "auto"):
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        # The model's own decision settings; a call may pass others.
        self.decision = Decision.from_config(inf)
        self.cache_size = inf.text_cache_size
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @property
    def image_path_state(self) -> str:
        """What runs the image path now: torch, onnx, compiled, or auto's state (compiled.BackgroundCompile.state)."""
        return self._background.state if self._background else self.backend

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> "Segmenter":
        """`path` may be `demo` for the shipped demo model. Raises CheckpointError."""
        model, cfg, metadata = build_from_checkpoint(path)
        return cls(model, cfg, metadata, **kwargs)

    @classmethod
    def from_preset(cls, name: str, seed: int = 0, **kwargs) -> "Segmenter":
        """A model with the preset's initial weights (pretrained where configured, else random)."""
        cfg = load_config(name)
        torch.manual_seed(seed)
        return cls(MERES(cfg.model), cfg, {"preset": name, "seed": seed}, **kwargs)

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _text_features(self, expressions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached Q_l per sentence, padded into one batch: (E, T, D_t) and validity (E, T)."""
        missing = list(dict.fromkeys(e for e in expressions if e not in self._text_cache))
        if missing:
            ids, attention = self.model.tokenize(missing)
            text, valid = self.model.encode_text(ids, attention)
            for i, expression in enumerate(missing):
                n = int(valid[i].sum())
                self._text_cache[expression] = (text[i, :n].float(), valid[i, :n])
        for expression in expressions:
            self._text_cache.move_to_end(expression)
        while len(self._text_cache) > self.cache_size:
            self._text_cache.popitem(last=False)
        entries = [self._text_cache[e] for e in expressions]
        length = max(t.shape[0] for t, _ in entries)
        text = torch.zeros(len(entries), length, entries[0][0].shape[1], device=self.device)
        valid = torch.zeros(len(entries), length, dtype=torch.bool, device=self.device)
        for i, (t, v) in enumerate(entries):
            text[i, : t.shape[0]], valid[i, : v.shape[0]] = t, v
        return text, valid

    @torch.inference_mode()
    def segment(self, image: np.ndarray, expressions: str | list[str],
                decision: Decision | None = None) -> list[SegmentationResult]:
        """image: RGB uint8 (H, W, 3). Returns one result per expression, in order.

        `decision`: thresholds for this call; None: the model's own (`self.decision`).
        """
        if isinstance(expressions, str):
            expressions = [expressions]
        expressions = [normalize_expression(e) for e in expressions]
        if not expressions or any(not e for e in expressions):
            raise ValueError("expressions must be non-empty strings")
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be an RGB uint8 array (H, W, 3), got "
                             f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
        if min(image.shape[:2]) < 1:
            raise ValueError(f"image is empty: shape {image.shape}")
        height, width = image.shape[:2]

        t0 = self._sync()
        rows = self.model.landmark_rows(expressions)  # the landmark phrases they name: rows of their own
        landmark_index = rows.landmark_index.to(self.device)
        with autocast(self.dtype, self.device):
            text, valid = self._text_features(rows.sentences)
            t1 = self._sync()
            pixels = preprocess_image(image, self.cfg.model.vision.img_size)[None].to(self.device)
            image_path = self._image_path or (self._background.runner() if self._background else None)
            if image_path is not None:  # vision, extractor and decoder in one graph: timed as "vision"
                logits = image_path(pixels, text, valid, landmark_index)
                t2 = t3 = self._sync()
            else:
                features = self.model.encode_image(pixels)
                t2 = self._sync()
                logits = self.model.decode(features, text, valid, landmark_index).logits  # (E + P, 1, h, w)
                t3 = self._sync()
            logits = logits[: len(expressions)]
            if self._background:
                self._background.record(image_path is not None, t3 - t1)
        probability = torch.sigmoid(F.interpolate(logits.float(), size=(height, width), mode="bilinear",
                                                  align_corners=False)[:, 0]).cpu().numpy()
        decision = decision or self.decision
        results = [self.decide(e, p, decision) for e, p in zip(expressions, probability)]
        t4 = self._sync()
        timings = {"text": t1 - t0, "vision": t2 - t1, "decode": t3 - t2, "post": t4 - t3, "total": t4 - t0}
        for r in results:
            r.timings_ms = {k: v * 1000.0 for k, v in timings.items()}
        return results

    def decide(self, expression: str, probability: np.ndarray, decision: Decision | None = None) -> SegmentationResult:
        """Threshold a probability map into mask, presence, bbox, centroid and candidates (also used by evaluation).

        `decision`: None uses the model's own thresholds (`self.decision`).
        """
        decision = decision or self.decision
        mask = probability > decision.mask_threshold
        score = float(probability[mask].mean()) if mask.any() else 0.0
        found = bool(mask.any()) and score >= decision.presence_threshold
        if not found:
            return SegmentationResult(expression, found, score, mask, probability, None, None)
        part, candidates = candidate_parts(mask, probability, decision.ambiguity_ratio)
        return SegmentationResult(expression, found, score, mask, probability, candidates[0].bbox,
                                  candidates[0].centroid, part, candidates=candidates)


def candidate_parts(mask: np.ndarray, probability: np.ndarray,
                    ambiguity_ratio: float) -> tuple[np.ndarray, list[Candidate]]:
    """The mask's most probable connected part, and the parts of comparable mass: the one rule for "which one?".

    A part's mass is its summed probability (8-connected parts of `mask`). The target is
    the part of largest mass: a mask that spills onto a second object would otherwise put
    the grasp point (and the depth read for it) between them. Every part whose mass is at
    least `ambiguity_ratio` x the target's is a candidate, most massive first; two or more
    candidates make the result ambiguous. Mass rather than area or peak probability, so a
    large faint smear or a small confident speck does not count as a second object.

    Returns (the target part as a bool mask, the candidates); `mask` must not be empty.
    """
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    mass = np.bincount(labels.ravel(), weights=probability.ravel(), minlength=count)[1:]  # label 0: background
    order = np.argsort(-mass, kind="stable")
    kept = [int(i) for i in order if mass[i] >= ambiguity_ratio * mass[order[0]]]
    candidates = []
    for index in kept:
        ys, xs = np.nonzero(labels == index + 1)
        candidates.append(Candidate(bbox=(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
                                    centroid=(float(xs.mean()), float(ys.mean())),
                                    score=float(probability[ys, xs].mean()), mass=float(mass[index])))
    return labels == kept[0] + 1, candidates
