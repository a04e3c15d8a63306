"""Referring-expression datasets in the REFER format, as distributed.

    <data_root>/<dataset>/refs(<split_by>).p   pickled list of refs, one per referred object
    <data_root>/<dataset>/instances.json       COCO images, annotations, categories
    <image_root>/<file_name>                   `file_name` of the instances.json image

Datasets: refcoco and refcoco+ (split_by "unc"), refcocog ("umd" or "google"),
and synth ("synth", written by `meres-synth`). The default `image_root` is the
REFER layout `<data_root>/images/mscoco/images/train2014` (COCO_train2014_*.jpg),
or `<data_root>/images` for synth.

One sample per sentence. A ref with `no_target: True` or `ann_id == -1`
(gRefCOCO convention) refers to nothing: its mask is empty. A list of `ann_id`s
refers to the union of their masks.
"""
from __future__ import annotations

import json
import logging
import pickle
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Union

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from meres_core.data.transforms import mask_centroids, preprocess_image, resize_mask

COCO_IMAGE_ROOT = Path("images/mscoco/images/train2014")
IMAGE_ROOTS = {"synth": Path("images")}  # relative to data_root; other datasets use COCO_IMAGE_ROOT

# Everything a refs(*.p) file needs: containers and scalars, nothing that runs code.
_SAFE_GLOBALS = {(module, name) for module in ("builtins", "__builtin__")
                 for name in ("set", "frozenset", "list", "dict", "tuple", "bytearray", "complex")}

log = logging.getLogger(__name__)


class BrokenSampleError(ValueError):
    """A sample that cannot be used, in a dataset built with skip_broken=False (evaluation)."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a class or function outside the builtin containers."""


class ReferFilesNotFoundError(FileNotFoundError):
    """Some of the files a REFER dataset needs are missing; `missing` lists them all."""

    def __init__(self, description: str, missing: list[Path]):
        self.missing = missing
        super().__init__(f"{description}: missing " + "".join(f"\n  {p}" for p in missing))


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to unpickle {module}.{name}: refs files may only hold builtin "
                                "containers and scalars")


def load_refs(path: Union[str, Path]) -> list[dict]:
    """Read a refs(*.p) file without executing code from it."""
    with open(path, "rb") as f:
        try:
            # latin1 decodes the Python 2 str objects of the original files without failing.
            refs = _RestrictedUnpickler(f, encoding="latin1").load()
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{path}: {err}") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ValueError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}")
    return refs


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """Every segmentation form of COCO / REFER -> bool (height, width) mask, the union of its parts.

    Forms: a list of polygons; one RLE (compressed: `counts` str or bytes; uncompressed:
    `counts` a list of run lengths); a list of RLEs, which refer.py decodes with
    `mask.decode` and sums over parts (a pixel counts when any part covers it).
    """
    parts = segmentation if isinstance(segmentation, list) else [segmentation]
    rles = []
    for part in parts:
        if isinstance(part, dict):  # frPyObjects compresses an uncompressed RLE; a compressed one is used as is
            rles.append(mask_utils.frPyObjects(part, height, width) if isinstance(part["counts"], list) else part)
        elif len(part) >= 6:  # a polygon; frPyObjects would read 4 numbers as a box (no area as a polygon)
            rles.extend(mask_utils.frPyObjects([part], height, width))
    if not rles:
        return np.zeros((height, width), bool)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def refer_paths(data_root: Union[str, Path], dataset: str, split_by: str,
                image_root: Union[str, Path, None] = None) -> dict[str, Path]:
    """The files and folder a dataset needs: keys refs, instances, images."""
    root = Path(data_root)
    return {
        "refs": root / dataset / f"refs({split_by}).p",
        "instances": root / dataset / "instances.json",
        "images": Path(image_root) if image_root is not None else root / IMAGE_ROOTS.get(dataset, COCO_IMAGE_ROOT),
    }


def _ann_ids(ref: dict) -> list[int]:
    ids = ref["ann_id"] if isinstance(ref["ann_id"], (list, tuple)) else [ref["ann_id"]]
    return [int(i) for i in ids if int(i) != -1]


class ReferDataset(Dataset):
    """One sample per sentence of the refs of `split`.

    A sample is a dict: image FloatTensor[3, S, S] (normalized), mask FloatTensor[S, S]
    of 0/1, ranked_mask (the same for the objects a sentence's `ranked_ann_ids` name, else
    the mask), ranked_centres (their centroids, transforms.mask_centroids), landmark_mask and
    landmark_centre (2,) of the object a relation sentence's `landmark_ann_id` names (empty and NaN
    for other sentences) and its `relation` ("" for others), sentence, ref_id,
    sent_id, image_id, kind (the sentence's `kind`, else the dataset name), no_target, plus
    orig_image (uint8 HxWx3) and orig_mask (bool HxW) when `keep_original`. A broken sample (unreadable image, empty sentence, empty
    mask of a ref that has a target) is None and counted in `skipped` by reason;
    with DataLoader workers each worker process keeps its own count. With
    `skip_broken=False` it raises BrokenSampleError instead (evaluation of official splits).
    """

    def __init__(self, data_root, dataset: str = "refcoco", split_by: str = "unc", split: str = "train",
                 image_root=None, img_size: int = 480, categories: Optional[Iterable[Union[str, int]]] = None,
                 keep_original: bool = False, skip_broken: bool = True):
        if img_size < 1:
            raise ValueError("img_size must be positive")
        self.paths = refer_paths(data_root, dataset, split_by, image_root)
        missing = [p for p in self.paths.values() if not p.exists()]
        if missing:
            raise ReferFilesNotFoundError(f"dataset {dataset!r} (split_by {split_by!r})", missing)
        self.dataset, self.split, self.img_size, self.keep_original = dataset, split, img_size, keep_original
        self.skip_broken = skip_broken

        refs = load_refs(self.paths["refs"])
        available = sorted({str(r["split"]) for r in refs})
        if split not in available:
            raise ValueError(f"split {split!r} not in {self.paths['refs']}; available: {', '.join(available)}")
        instances = json.loads(self.paths["instances"].read_text())
        self.category_names = {int(c["id"]): c["name"] for c in instances["categories"]}
        wanted = self._category_ids(categories)
        self.refs = [r for r in refs if r["split"] == split and (wanted is None or r["category_id"] in wanted)]

        needed_images = {r["image_id"] for r in self.refs}
        needed_anns = {i for r in self.refs for i in _ann_ids(r)}
        needed_anns |= {i for r in self.refs for s in r["sentences"] for i in s.get("ranked_ann_ids") or ()}
        needed_anns |= {s["landmark_ann_id"] for r in self.refs for s in r["sentences"] if "landmark_ann_id" in s}
        self.images = {im["id"]: im for im in instances["images"] if im["id"] in needed_images}
        self.annotations = {a["id"]: a for a in instances["annotations"] if a["id"] in needed_anns}
        self.samples = [(r, s) for r in self.refs for s in r["sentences"]]
        self.skipped: Counter = Counter()
        # The last image read, decoded and resized: consecutive sentences about one image (training's
        # sentences_per_image, evaluation's ref order) read it once.
        self._last_image: Optional[tuple[int, Optional[np.ndarray], Optional[torch.Tensor]]] = None

    def _category_ids(self, categories) -> Optional[set[int]]:
        """Category names or ids -> ids (the generalization setting of paper Table 2)."""
        if categories is None:
            return None
        by_name = {name: i for i, name in self.category_names.items()}
        ids, unknown = set(), []
        for c in categories:
            if isinstance(c, (int, np.integer)) and int(c) in self.category_names:
                ids.add(int(c))
            elif isinstance(c, str) and c in by_name:
                ids.add(by_name[c])
            else:
                unknown.append(c)
        if unknown:
            raise ValueError(f"unknown categories {unknown}; available: {', '.join(sorted(by_name))}")
        return ids

    def __len__(self) -> int:
        return len(self.samples)

    def sentences_by_ref(self) -> list[list[int]]:
        """Sample indices grouped by ref, in ref order (samples are stored ref by ref)."""
        groups, start = [], 0
        for ref in self.refs:
            groups.append(list(range(start, start + len(ref["sentences"]))))
            start += len(ref["sentences"])
        return [g for g in groups if g]

    def sentences_by_kind(self) -> Counter:
        return Counter(sentence.get("kind", self.dataset) for _, sentence in self.samples)

    def _image(self, image_id: int) -> tuple[Optional[np.ndarray], Optional[torch.Tensor]]:
        """(RGB image, model input) of `image_id`, (None, None) when unreadable."""
        if self._last_image is None or self._last_image[0] != image_id:
            image = self.read_image(image_id)
            pixels = None if image is None else preprocess_image(image, self.img_size)
            self._last_image = (image_id, image, pixels)
        return self._last_image[1], self._last_image[2]

    def read_image(self, image_id: int) -> Optional[np.ndarray]:
        """RGB uint8 image, or None when it is missing or unreadable."""
        bgr = cv2.imread(str(self.paths["images"] / self.images[image_id]["file_name"]), cv2.IMREAD_COLOR)
        return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def ref_mask(self, ref: dict, height: int, width: int) -> np.ndarray:
        """Union of the masks of the ref's annotations (empty for a no-target ref)."""
        mask = np.zeros((height, width), bool)
        for ann_id in _ann_ids(ref):
            mask |= decode_segmentation(self.annotations[ann_id]["segmentation"], height, width)
        return mask

    def _skip(self, reason: str, ref: dict, sentence: dict) -> None:  # returns the None that marks a broken sample
        if not self.skip_broken:
            raise BrokenSampleError(f"{self.dataset} {self.split}: ref {ref['ref_id']} sent {sentence.get('sent_id')} "
                                    f"is broken ({reason}); evaluation does not drop samples")
        self.skipped[reason] += 1
        # Logged here because DataLoader workers keep their own `skipped` counters.
        log.warning("skipping a broken sample (%s); skipped so far in this process: %s",
                    reason, dict(self.skipped))
        return None

    def __getitem__(self, index: int) -> Optional[dict]:
        ref, sentence = self.samples[index]
        text = str(sentence.get("sent") or sentence.get("raw") or "").strip()
        if not text:
            return self._skip("empty_sentence", ref, sentence)
        if ref["image_id"] not in self.images or any(i not in self.annotations for i in _ann_ids(ref)):
            return self._skip("missing_annotation", ref, sentence)
        image, pixels = self._image(ref["image_id"])
        if image is None:
            return self._skip("unreadable_image", ref, sentence)
        info = self.images[ref["image_id"]]
        if image.shape[:2] != (info["height"], info["width"]):
            return self._skip("image_size_mismatch", ref, sentence)
        no_target = bool(ref.get("no_target", False)) or not _ann_ids(ref)
        ranked = sentence.get("ranked_ann_ids")
        landmark = sentence.get("landmark_ann_id")
        if (ranked and any(i not in self.annotations for i in ranked)) or (landmark is not None and landmark not in self.annotations):
            return self._skip("missing_annotation", ref, sentence)
        # What the sentence's qualifier ranks (meres-synth's `ranked_ann_ids`), else the target itself.
        ranked = [int(i) for i in ranked] if ranked else _ann_ids(ref)
        ann_masks = {i: decode_segmentation(self.annotations[i]["segmentation"], *image.shape[:2])
                     for i in set(_ann_ids(ref)) | set(ranked) | ({landmark} - {None})}
        mask = np.zeros(image.shape[:2], bool)
        for i in _ann_ids(ref):
            mask |= ann_masks[i]
        if not no_target and not mask.any():
            return self._skip("empty_mask", ref, sentence)
        ranked_mask = np.zeros(image.shape[:2], bool)
        for i in ranked:
            ranked_mask |= ann_masks[i]
        landmark_mask = ann_masks[landmark] if landmark is not None else np.zeros(image.shape[:2], bool)
        sample = {
            "image": pixels,
            "mask": resize_mask(mask, self.img_size),
            "ranked_mask": resize_mask(ranked_mask, self.img_size),
            "ranked_centres": mask_centroids([ann_masks[i] for i in ranked]),
            "landmark_mask": resize_mask(landmark_mask, self.img_size),
            "landmark_centre": mask_centroids([landmark_mask], rows=1)[0],
            "relation": str(sentence.get("relation") or ""),
            "sentence": text,
            "ref_id": int(ref["ref_id"]),
            "sent_id": int(sentence["sent_id"]),
            "image_id": int(ref["image_id"]),
            "kind": str(sentence.get("kind", self.dataset)),
            "no_target": no_target,
        }
        if self.keep_original:
            sample["orig_image"], sample["orig_mask"] = image, mask
        return sample


def collate_samples(batch: list[Optional[dict]]) -> Optional[dict]:
    """Drop None samples; stack tensors, turn numbers into tensors, keep strings and arrays as lists."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    out = {}
    for key, first in batch[0].items():
        values = [b[key] for b in batch]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, (bool, int, float)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out
