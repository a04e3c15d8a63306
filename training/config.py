"""Training configuration: dataclasses loaded from YAML, with `--set key=value` overrides.

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

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
import typing
from typing import Any, Literal, Optional

import yaml

from meres_core.config import MeresConfig, load_config, merge


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
    # Draw training sentences so that every sentence `kind` has the same share (with replacement,
    # a fixed order per (seed, epoch)); else one pass over the sentences per epoch.
    balance_kinds: bool = False
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
    batch_size: int = 16  # global, per optimizer step
    accumulation: int = 1  # micro-batches per optimizer step (per rank: batch_size / world / accumulation)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # fp16: autocast + GradScaler (CUDA only)
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


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    data = dataclasses.asdict(cfg)
    data["optim"]["betas"] = list(cfg.optim.betas)  # YAML / JSON friendly
    return data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['optim.lr=1e-4', 'model.guidance=le'] -> nested dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _dataclass_of(annotation) -> Optional[type]:
    """The dataclass in `X` or `Optional[X]`, else None."""
    candidates = typing.get_args(annotation) or (annotation,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def _build(cls, data: dict[str, Any]):
    """Recursively build dataclass `cls` from a dict, rejecting unknown keys (typos fail loudly)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_of(hints[name])
        if sub and isinstance(value, dict):
            value = _build(sub, value)
        elif float in (typing.get_args(hints[name]) or (hints[name],)) and isinstance(value, (int, str)):
            value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        kwargs[name] = value
    return cls(**kwargs)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A training YAML; `base: other.yaml` (relative to this file) is read first and overridden."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    base = data.pop("base", None)
    return merge(read_yaml(path.parent / base), data) if base else data


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (or the defaults) + nested overrides -> validated TrainConfig."""
    data = merge(read_yaml(path) if path else {}, overrides or {})
    if data.get("optim", {}).get("betas") is not None:
        data["optim"]["betas"] = tuple(data["optim"]["betas"])
    cfg = _build(TrainConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.accumulation < 1:
        raise ValueError("epochs, batch_size and accumulation must be >= 1")
    if cfg.precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be fp32, fp16 or bf16, got {cfg.precision!r}")
    if cfg.eval.resolution not in ("original", "input"):
        raise ValueError("eval.resolution must be original or input")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError("max_steps must be >= 1")
    if cfg.checkpoint_every < 1:
        raise ValueError("checkpoint_every must be >= 1")
    cfg.model_config()  # raises on a bad preset name or model override


def per_rank_batch(cfg: TrainConfig, world_size: int) -> int:
    """Micro-batch size of one rank; the global batch must split evenly."""
    parts = world_size * cfg.accumulation
    if cfg.batch_size % parts:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by world_size x accumulation = {parts}")
    return cfg.batch_size // parts
