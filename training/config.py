"""Training configuration: dataclasses loaded from YAML, with `--set key=value` overrides
(built with meres_core.config's toolkit: `from_dict`, `override`, `parse_overrides`).

A training YAML names a model preset (`meres_core/presets/*.yaml`) and overrides of its
`model` section, plus data, optimizer, schedule and run settings:

    preset: demo
    model: {contrastive_weight: 0.1}      # merged into the preset's `model:` section
    data: {root: /data/refer, dataset: refcoco, split_by: unc}
    optim: {lr: 3.0e-5}
    epochs: 40
    base: paper_refcoco.yaml              # optional: start from another YAML (relative path)

`batch_size` is the global batch of one optimizer step (all ranks x accumulation), so a
recipe means the same thing on 1 or 8 GPUs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

# The one config toolkit (builder, override, merge, `--set` parser) serves training configs too.
from meres_core.config import MeresConfig, from_dict, load_config, merge


@dataclass
class SyntheticConfig:
    """Generate the synthetic dataset under `data.root` when it is missing (see meres_core.data.synthetic)."""

    num_images: int = 1000
    seed: int = 0
    height: int = 480
    width: int = 640
    depth: bool = False  # training reads RGB only
    absent_fraction: float = 0.08  # share of no-target ("absent") sentences
    sentences_per_object: int = 3
    appearance: Literal["muted", "varied", "shaded"] = "muted"  # meres_core/data/synthetic/scene.py
    same_colour_neighbours: float = 0.0  # share of shapes placed next to another that take its colour


@dataclass
class DataConfig:
    root: str = "data/refer"  # holds <dataset>/refs(<split_by>).p and <dataset>/instances.json
    dataset: str = "refcoco"
    split_by: str = "unc"
    image_root: Optional[str] = None  # default <root>/images (REFER layout: COCO train2014)
    train_split: str = "train"
    val_split: str = "val"
    # Table 2 generalization setting: train only on these (seen) categories; None = all.
    categories: Optional[list[str]] = None
    # Periodic validation on the first N val samples (None: all). Final numbers come from evaluate.py.
    val_limit: Optional[int] = None
    num_workers: int = 2
    # What one epoch is. "ref": every referred object once, with one of its sentences drawn at
    # random (fixed per (seed, epoch)), as LAVT and CGFormer iterate RefCOCO; the paper's "40 epochs"
    # are these. "sentence": every sentence once (about 2.8x the steps on RefCOCO's train split).
    epoch: Literal["ref", "sentence"] = "ref"
    # Draw training sentences so that every sentence `kind` has the same share (with replacement,
    # a fixed order per (seed, epoch)). Kinds belong to sentences, not refs: needs epoch "sentence".
    balance_kinds: bool = False
    # With balance_kinds: each listed kind's share relative to the others (unlisted kinds: 1.0),
    # e.g. {ordinal: 2.0} draws ordinal sentences twice as often as each other kind.
    kind_shares: Optional[dict[str, float]] = None
    # Training draws runs of this many sentences about one image (training/data.py ResumableSampler):
    # the image is encoded once per run, and the batch contrasts sentences of one scene. The
    # per-rank batch must be a multiple of it.
    sentences_per_image: int = 1
    synthetic: Optional[SyntheticConfig] = None


@dataclass
class OptimConfig:
    """AdamW with polynomial decay, as LAVT / CGFormer and the paper (App. C).

    Parameter groups: `backbone_lr_mult` scales the lr of the pretrained encoders (Swin,
    BERT/CLIP) and `head_lr_mult` that of the randomly initialised parts (projections,
    enhancer, extractor, decoder). LAVT and CGFormer train every part with the same lr
    (both multipliers 1), which the paper's single "initial learning rate of 3e-5" matches.
    Weight decay is not applied to biases, norms, Swin's relative-position tables and the
    temperature tau, as in Swin / LAVT.
    """

    lr: float = 3.0e-5
    weight_decay: float = 0.01  # LAVT / CGFormer
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_mult: float = 1.0
    head_lr_mult: float = 1.0
    poly_power: float = 0.9  # lr = base * (1 - step / total) ** power
    warmup_steps: int = 0  # linear warmup, useful when training from scratch
    clip_grad_norm: Optional[float] = None  # max global L2 norm; None: no clipping
    # Parameter-name prefixes that train; every other parameter is frozen (None: all train). Fits a new
    # head on a trained model's fixed outputs at the cost of a forward pass, e.g. [candidate_rank.].
    train_only: Optional[list[str]] = None


@dataclass
class EvalConfig:
    every_steps: Optional[int] = None  # validate every N steps (None: at epoch ends); always at the end
    resolution: Literal["original", "input"] = "input"  # periodic validation; evaluate.py defaults to original
    overlays: int = 4  # overlay images written to TensorBoard per validation
    batch_size: int = 16


@dataclass
class TrainConfig:
    preset: str = "paper"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's `model:` section
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    epochs: int = 40
    # Step budget: the schedule (poly decay) ends after this many optimizer steps, even
    # mid-epoch. None: epochs x steps per epoch.
    max_steps: Optional[int] = None
    # Seconds of training steps (train_seconds, summed over resumes) the run may take, e.g. a GPU
    # lease: once the step rate is measured (after warmup), the step budget shrinks to what fits,
    # so the poly decay still ends at the last step. None: no time limit.
    time_budget_s: Optional[float] = None
    batch_size: int = 16  # global, per optimizer step
    accumulation: int = 1  # micro-batches per optimizer step (per rank: batch_size / world / accumulation)
    # fp16: autocast + GradScaler, CUDA only (elsewhere fp32 with a warning: meres_core/device.py)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    seed: int = 0
    checkpoint_every: int = 1000  # optimizer steps; also at every epoch end
    out_dir: str = "runs/meres"
    device: str = "auto"  # auto | cpu | cuda (the local rank's GPU under torchrun)
    # Initial weights from another checkpoint (a fine-tuning start; `--resume` takes precedence).
    # Tensors that gained input channels (e.g. model.coord_features switched on) keep the old
    # weights and start the new channels at zero, so training starts from the old model's function.
    init_from: Optional[str] = None
    # torch intra-op threads per process (None: torch's default, one per core). On a shared
    # CPU, 1 avoids OpenMP threads stalling on cores that other processes hold.
    cpu_threads: Optional[int] = None
    # DDP: required while some parameters get no gradient (today extractor.mhsa.norm_kv in every
    # variant, and more in some ablations); costs one autograd-graph walk per step.
    find_unused_parameters: bool = True

    def model_config(self) -> MeresConfig:
        return load_config(self.preset, overrides={"model": self.model})


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A training YAML; `base: other.yaml` (relative to this file) is read first and overridden."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    base = data.pop("base", None)
    return merge(read_yaml(path.parent / base), data) if base else data


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (or the defaults) + nested overrides -> validated TrainConfig."""
    cfg = from_dict(TrainConfig, merge(read_yaml(path) if path else {}, overrides or {}))
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> TrainConfig:
    """Checks across fields; the field types themselves are checked when building (`override`)."""
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.accumulation < 1:
        raise ValueError("epochs, batch_size and accumulation must be >= 1")
    if cfg.data.balance_kinds and cfg.data.epoch != "sentence":
        raise ValueError("data.balance_kinds weights sentences by their kind, so it draws sentences, not refs: "
                         "set data.epoch: sentence with it")
    if cfg.data.kind_shares is not None:
        if not cfg.data.balance_kinds:
            raise ValueError("data.kind_shares weights the kind-balanced draw: set data.balance_kinds: true with it")
        if any(share <= 0 for share in cfg.data.kind_shares.values()):
            raise ValueError(f"data.kind_shares must be > 0, got {cfg.data.kind_shares}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError("max_steps must be >= 1")
    if cfg.time_budget_s is not None and cfg.time_budget_s <= 0:
        raise ValueError("time_budget_s must be > 0")
    if cfg.checkpoint_every < 1:
        raise ValueError("checkpoint_every must be >= 1")
    cfg.model_config()  # raises on a bad preset name or model override
    return cfg


def per_rank_batch(cfg: TrainConfig, world_size: int) -> int:
    """Micro-batch size of one rank; the global batch must split evenly."""
    parts = world_size * cfg.accumulation
    if cfg.batch_size % parts:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by world_size x accumulation = {parts}")
    return cfg.batch_size // parts
