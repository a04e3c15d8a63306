"""Datasets and samplers shared by train.py, evaluate.py and ablate.py."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Optional

import torch

from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from meres_core.data.refer import ReferDataset, collate_samples
from meres_core.data.synthetic import generate

from .config import DataConfig

log = logging.getLogger(__name__)


def ensure_synthetic(data: DataConfig) -> None:
    """Generate the configured synthetic dataset under `data.root` unless it is already there.

    Call on one process only (rank 0, before the others read it).
    """
    if data.synthetic is None:
        return
    refs = Path(data.root) / data.dataset / f"refs({data.split_by}).p"
    if refs.is_file():
        return
    workers = os.cpu_count() or 1  # the scenes do not depend on the number of processes
    log.info("generating %d synthetic images under %s (%d processes)", data.synthetic.num_images, data.root, workers)
    generate(data.root, **dataclasses.asdict(data.synthetic), workers=workers)


# The published benchmarks: evaluating on them must score every sample, never skip one.
OFFICIAL_DATASETS = ("refcoco", "refcoco+", "refcocog")


def make_dataset(data: DataConfig, split: str, img_size: int, keep_original: bool = False,
                 limit: Optional[int] = None, categories: Optional[list[str]] = None,
                 evaluation: bool = False) -> Dataset:
    """A REFER split; `limit` keeps the first N samples (fixed, so periodic validation is comparable).

    `evaluation` on an official dataset: a broken sample raises (BrokenSampleError) instead of
    being skipped, so reported numbers are over the whole split. Elsewhere skips are counted
    and evaluate_model reports them.
    """
    dataset = ReferDataset(data.root, dataset=data.dataset, split_by=data.split_by, split=split,
                           image_root=data.image_root, img_size=img_size, categories=categories,
                           keep_original=keep_original,
                           skip_broken=not (evaluation and data.dataset in OFFICIAL_DATASETS))
    if limit is not None and limit < len(dataset):
        return Subset(dataset, range(limit))
    return dataset


def make_eval_loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_samples)


def kind_balancing_weights(kinds: list[str], shares: Optional[dict[str, float]] = None) -> torch.Tensor:
    """Per-sample weights share(kind) / count(kind): every kind's expected share of draws is
    proportional to its `shares` entry (1.0 where absent), equal when `shares` is None."""
    counts, shares = Counter(kinds), shares or {}
    if unknown := sorted(set(shares) - set(counts)):
        raise ValueError(f"data.kind_shares names kinds the training sentences do not have: {unknown} "
                         f"(they have {sorted(counts)})")
    return torch.tensor([shares.get(k, 1.0) / counts[k] for k in kinds], dtype=torch.double)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start part-way into an epoch, optionally drawing by weight
    or one sample per group.

    The order of an epoch depends only on (seed, epoch), as in DistributedSampler; skipping
    the first `start` indices of this rank's share resumes exactly where a run stopped,
    without loading the skipped samples. With `weights`, an epoch is len(dataset) draws
    with replacement (torch.multinomial), split across ranks like DistributedSampler's order.
    With `groups` (sample indices per ref), an epoch is one shuffled pass over the groups,
    taking one sample of each at random (data.epoch "ref", as LAVT / CGFormer).

    With `sentences_per_image` k > 1 (`image_ids`: each sample's image), each sample of that
    order, an anchor, comes with k - 1 other sentences of its image drawn after it (by weight,
    without replacement while the image has enough): the trainer encodes the image once for the
    run, and a batch holds several sentences about one scene with different targets. The epoch
    keeps its length in samples (num_samples // k anchors per rank).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int,
                 weights: Optional[torch.Tensor] = None, groups: Optional[list[list[int]]] = None,
                 sentences_per_image: int = 1, image_ids: Optional[list[int]] = None):
        if weights is not None and groups is not None:
            raise ValueError("sampling weights and groups exclude each other: weights draw samples, groups refs")
        units = dataset if groups is None else range(len(groups))  # what one epoch passes over
        super().__init__(units, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        if weights is not None and len(weights) != len(dataset):
            raise ValueError(f"{len(weights)} sampling weights for {len(dataset)} samples")
        if sentences_per_image < 1:
            raise ValueError(f"sentences_per_image must be >= 1, got {sentences_per_image}")
        self.weights, self.groups = weights, groups
        self.per_image = sentences_per_image
        self.samples_of_image: dict[int, list[int]] = {}
        if sentences_per_image > 1:
            if image_ids is None or len(image_ids) != len(dataset):
                raise ValueError("sentences_per_image > 1 needs the image id of every sample")
            self.image_ids = image_ids
            for index, image_id in enumerate(image_ids):
                self.samples_of_image.setdefault(image_id, []).append(index)
            self.num_samples -= self.num_samples % sentences_per_image
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def _weighted_order(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)
        return iter(draws[self.rank: self.total_size: self.num_replicas].tolist())

    def _one_per_group_order(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        groups = torch.randperm(len(self.groups), generator=generator)[: self.total_size]  # DistributedSampler's
        draws = torch.rand(len(self.groups), generator=generator)  # which sample of each group, this epoch
        mine = groups[self.rank: self.total_size: self.num_replicas].tolist()
        return iter(self.groups[g][int(draws[g] * len(self.groups[g]))] for g in mine)

    def _with_companions(self, anchors):
        """Each anchor, then k - 1 other samples of its image (fixed per (seed, epoch, rank))."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch + 1_000_003 * (self.rank + 1))
        for anchor in itertools.islice(anchors, self.num_samples // self.per_image):
            yield anchor
            others = [i for i in self.samples_of_image[self.image_ids[anchor]] if i != anchor] or [anchor]
            weights = (self.weights[others] if self.weights is not None
                       else torch.ones(len(others), dtype=torch.double))
            picks = torch.multinomial(weights, self.per_image - 1, replacement=len(others) < self.per_image - 1,
                                      generator=generator)
            yield from (others[i] for i in picks.tolist())

    def __iter__(self):
        if self.groups is not None:
            order = self._one_per_group_order()
        elif self.weights is not None:
            order = self._weighted_order()
        else:
            order = super().__iter__()
        if self.per_image > 1:
            order = self._with_companions(order)
        return itertools.islice(order, self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start
