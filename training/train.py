"""Train MERES: `python -m training.train --config training/configs/X.yaml [--resume] [--set k=v ...]`.

Single process, or DDP under torchrun (one process per GPU, nccl; gloo on CPU):

    torchrun --nproc_per_node 4 -m training.train --config training/configs/paper_refcoco.yaml
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 -m training.train --config ...

Checkpoints (atomic) go to `<out_dir>/latest.pt` every `checkpoint_every` optimizer steps
and at each epoch end, and `<out_dir>/best.pt` by validation oIoU. `--resume` continues
from latest.pt with the same data order (sampler epoch and position within the epoch),
optimizer / scheduler / GradScaler state and the torch, numpy and Python RNG states of
every rank. TensorBoard logs are in `<out_dir>/tb`.

The frozen text encoder of the `demo` preset is not cached: it is ~3% of a CPU training
step at 224x224 (measured), not worth a cache's invalidation rules.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from meres_core.checkpoint import load_checkpoint, load_weights, save_checkpoint
from meres_core.config import MeresConfig, as_dict, parse_overrides
from meres_core.data.refer import collate_samples
from meres_core.device import autocast, precision_name, select_dtype
from meres_core.model.meres import MERES, count_parameters
from meres_core.model.relation_pick import relation_ids

from .config import TrainConfig, load_train_config, per_rank_batch
from .data import ResumableSampler, ensure_synthetic, kind_balancing_weights, make_dataset, make_eval_loader
from .evaluate import evaluate_model

log = logging.getLogger("training.train")

# Parameters of the (pretrained, in the paper) encoders; everything else is a randomly
# initialised head part (projections, enhancer, extractor, decoder, per-stage norms).
ENCODER_PREFIXES = ("vision.backbone.", "text.model.")
# Swin's relative-position tables are not decayed (Swin / LAVT); nor are biases, norms, tau.
NO_DECAY_SUFFIXES = ("relative_position_bias_table",)
RATE_SKIP_STEPS, RATE_STEPS = 5, 20  # time_budget_s: steps skipped, then timed, to measure the step rate


# ------------------------------------------------------------------------------ setup


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_runtime(device: str) -> Runtime:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        resolved = torch.device("cuda", local_rank)
    else:
        resolved = torch.device("cpu")
    if world_size > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=resolved if use_cuda else None)
    return Runtime(rank, world_size, resolved)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as weights_only-loadable data (numpy / Python tuples -> lists)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def gather_rng_states(rt: Runtime) -> list[dict[str, Any]]:
    """Every rank's RNG state, indexed by rank (collective: all ranks must call it)."""
    state = rng_state(rt.device)
    if not rt.distributed:
        return [state]
    states: list = [None] * rt.world_size
    dist.all_gather_object(states, state)
    return states


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: {encoder, head} x {decay, no decay}; frozen parameters are left out."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "encoder" if name.startswith(ENCODER_PREFIXES) else "head"
        decay = param.ndim > 1 and not name.endswith(NO_DECAY_SUFFIXES)
        groups.setdefault((part, decay), []).append(param)
    mult = {"encoder": cfg.optim.backbone_lr_mult, "head": cfg.optim.head_lr_mult}
    return [{"params": params, "name": f"{part}{'' if decay else '_no_decay'}",
             "lr": cfg.optim.lr * mult[part], "weight_decay": cfg.optim.weight_decay if decay else 0.0}
            for (part, decay), params in sorted(groups.items())]


def freeze_all_but(model: nn.Module, prefixes: list[str]) -> None:
    """optim.train_only: only parameters whose names start with one of `prefixes` keep training
    (autograd then records nothing upstream of them, so a step costs about one forward pass)."""
    names = [name for name, _ in model.named_parameters()]
    unknown = [prefix for prefix in prefixes if not any(name.startswith(prefix) for name in names)]
    if unknown:
        raise ValueError(f"optim.train_only: no parameter starts with {unknown}")
    for name, param in model.named_parameters():
        param.requires_grad_(param.requires_grad and name.startswith(tuple(prefixes)))


def lr_factor(step: int, total: int, warmup: int, power: float) -> float:
    """Linear warmup, then LAVT's polynomial decay (1 - step / total) ** power."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - step / total) ** power


def warm_start(model: MERES, path: str) -> None:
    """Load `path`'s weights into `model` (train config `init_from`).

    Equal shapes are copied. A tensor that gained input channels (dim 1; the coordinate maps
    are appended last) gets the old weights in its leading channels and zeros in the new
    ones. Anything else that does not fit is an error, as in `load_weights`.
    """
    payload = load_checkpoint(path)
    weights, state = payload["model"], model.state_dict()
    problems = [k for k in weights if k not in state]
    loaded = {}
    for key, value in weights.items():
        if key not in state:
            continue
        target = state[key]
        if value.shape == target.shape:
            loaded[key] = value.to(target.dtype)
        elif (value.ndim == target.ndim >= 2 and value.shape[0] == target.shape[0]
              and value.shape[2:] == target.shape[2:] and value.shape[1] < target.shape[1]):
            widened = torch.zeros_like(target)
            widened[:, : value.shape[1]] = value
            loaded[key] = widened
        else:
            problems.append(f"{key}: file {tuple(value.shape)} vs model {tuple(target.shape)}")
    if problems:
        raise ValueError(f"init_from {path}: weights do not fit the model: {'; '.join(problems[:5])}")
    model.load_state_dict(loaded, strict=False)
    log.info("initialised %d of %d tensors from %s", len(loaded), len(state), path)


class LossModel(nn.Module):
    """What DDP wraps: one forward = MERES forward + losses, so the loss is computed under DDP."""

    def __init__(self, model: MERES):
        super().__init__()
        self.model = model

    def forward(self, images, masks, input_ids, attention_mask, image_index=None, landmark_index=None,
                ranked_masks=None, ranked_centres=None, landmark_centres=None, relations=None) -> dict[str, torch.Tensor]:
        out = self.model(images, input_ids, attention_mask, image_index, landmark_index)
        return self.model.compute_loss(out, masks, ranked_masks, ranked_centres, landmark_centres, relations)


def distinct_images(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's images with consecutive repeats of one image (data.sentences_per_image) kept once,
    and each sentence's index into them."""
    ids = torch.as_tensor(batch["image_id"])
    _, image_index, counts = torch.unique_consecutive(ids, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    return batch["image"][first], image_index


def with_landmark_phrases(model: MERES, batch: dict, image_index: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The batch with a row for each landmark phrase its relation sentences name (MERES.landmark_rows), on
    the sentence's image and trained toward the landmark's mask (meres-synth 1.6's `landmark_ann_id`; a
    sentence whose data names no landmark gets no row) -> (batch, image_index, landmark_index)."""
    known = ~torch.isnan(batch["landmark_centre"][:, 0])
    rows = model.landmark_rows(batch["sentence"], image_index.tolist(), known.tolist())
    extra = rows.source[rows.batch:]  # (P,) the sentence each phrase row comes from
    ranked_centres = torch.full((len(extra),) + batch["ranked_centres"].shape[1:], float("nan"))
    ranked_centres[:, 0] = batch["landmark_centre"][extra]  # a phrase ranks nothing: its centre is its own
    added = {"mask": batch["landmark_mask"][extra], "ranked_mask": batch["landmark_mask"][extra],
             "ranked_centres": ranked_centres, "landmark_centre": torch.full((len(extra), 2), float("nan"))}
    batch = {**batch, **{key: torch.cat([batch[key], value]) for key, value in added.items()},
             "sentence": rows.sentences, "relation": list(batch["relation"]) + [""] * len(extra)}
    return batch, torch.cat([image_index, image_index[extra]]), rows.landmark_index


# ------------------------------------------------------------------------------ trainer


class Trainer:
    def __init__(self, cfg: TrainConfig, rt: Runtime, progress_bar: bool = True):
        self.cfg, self.rt = cfg, rt
        self.progress_bar = progress_bar and rt.is_main
        if cfg.cpu_threads is not None:
            torch.set_num_threads(cfg.cpu_threads)
        self.out_dir = Path(cfg.out_dir)
        self.model_cfg: MeresConfig = cfg.model_config()
        img_size = self.model_cfg.model.vision.img_size

        if rt.is_main:
            ensure_synthetic(cfg.data)
        rt.barrier()
        self.train_set = make_dataset(cfg.data, cfg.data.train_split, img_size, categories=cfg.data.categories)
        self.micro_batch = per_rank_batch(cfg, rt.world_size)
        weights = groups = None
        if cfg.data.balance_kinds:
            weights = kind_balancing_weights([str(s.get("kind", cfg.data.dataset)) for _, s in self.train_set.samples],
                                             cfg.data.kind_shares)
        if cfg.data.epoch == "ref":
            groups = self.train_set.sentences_by_ref()
        per_image = cfg.data.sentences_per_image
        if self.micro_batch % per_image:
            raise ValueError(f"per-rank batch {self.micro_batch} is not a multiple of data.sentences_per_image "
                             f"{per_image}")
        image_ids = [int(ref["image_id"]) for ref, _ in self.train_set.samples] if per_image > 1 else None
        self.sampler = ResumableSampler(self.train_set, rt.world_size, rt.rank, cfg.seed, weights, groups,
                                        per_image, image_ids)
        # The loader's own generator (worker seeds) keeps iterator creation from drawing on the
        # global torch RNG, so a resumed run's dropout stream matches an uninterrupted one.
        self.loader = DataLoader(self.train_set, batch_size=self.micro_batch, sampler=self.sampler,
                                 num_workers=cfg.data.num_workers, collate_fn=collate_samples, drop_last=True,
                                 pin_memory=rt.device.type == "cuda",
                                 generator=torch.Generator().manual_seed(cfg.seed + rt.rank))
        # Leftover micro-batches of an epoch that do not fill an optimizer step are skipped.
        self.steps_per_epoch = (self.sampler.num_samples // self.micro_batch) // cfg.accumulation
        if self.steps_per_epoch < 1:
            raise ValueError(f"train split has {len(self.sampler.dataset)} {cfg.data.epoch}s per epoch: too few "
                             f"for one step of batch {cfg.batch_size}")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        seed_everything(cfg.seed)  # identical initial weights on every rank
        # Pretrained weights that cannot be had are an error here, not a silent random init:
        # random init is what the config says (vision.pretrained: null, text.pretrained: false).
        self.model = MERES(self.model_cfg.model, pretrained_required=True).to(rt.device)
        if cfg.init_from:
            warm_start(self.model, cfg.init_from)
        if cfg.optim.train_only:
            freeze_all_but(self.model, cfg.optim.train_only)
        loss_model = LossModel(self.model)
        self.ddp = (DistributedDataParallel(loss_model, find_unused_parameters=cfg.find_unused_parameters)
                    if rt.distributed else loss_model)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, cfg), lr=cfg.optim.lr,
                                           betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
        o = cfg.optim
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, o.warmup_steps, o.poly_power))
        self.dtype = select_dtype(cfg.precision, rt.device)  # fp16 without CUDA: fp32 (meres_core/device.py)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=self.dtype == torch.float16)
        self.step, self.epoch, self.position = 0, 0, 0  # position: micro-batches done in `epoch`
        self.best_oiou = -1.0
        self.train_seconds = 0.0  # summed over resumed runs
        self.budget_applied = False  # time_budget_s has fixed total_steps
        self.validated_step = -1  # step of the last validation
        self.rate_start: Optional[tuple[int, float]] = None  # (step, train_seconds) where rate timing began
        seed_everything(cfg.seed + rt.rank)  # per-rank streams (dropout, drop path)

        self.val_loader: Optional[DataLoader] = None
        self.writer: Optional[SummaryWriter] = None
        if rt.is_main:
            val_set = make_dataset(cfg.data, cfg.data.val_split, img_size,
                                   keep_original=cfg.eval.resolution == "original", limit=cfg.data.val_limit,
                                   evaluation=True)
            self.val_loader = make_eval_loader(val_set, cfg.eval.batch_size, cfg.data.num_workers)
            self.writer = SummaryWriter(str(self.out_dir / "tb"))

    # -- checkpoints

    def save(self, names: list[str], val: Optional[dict] = None) -> None:
        """Collective: every rank calls it once (RNG states of all ranks are gathered); rank 0 writes."""
        rngs = gather_rng_states(self.rt)
        if not self.rt.is_main:
            return
        state = {
            "step": self.step, "epoch": self.epoch, "position": self.position, "world_size": self.rt.world_size,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rngs, "best_oiou": self.best_oiou,
            "train_seconds": self.train_seconds, "total_steps": self.total_steps,
            "budget_applied": self.budget_applied, "validated_step": self.validated_step,
        }
        metadata = {"train_config": as_dict(self.cfg), "step": self.step, "epoch": self.epoch,
                    "train_seconds": round(self.train_seconds, 1)}
        if val is not None:
            metadata["val"] = val
        for name in names:
            save_checkpoint(self.out_dir / name, self.model, self.model_cfg, metadata, state)
            log.info("saved %s at step %d", name, self.step)

    def resume(self) -> None:
        path = self.out_dir / "latest.pt"
        if not path.is_file():
            log.warning("--resume: %s not found, starting from scratch", path)
            return
        payload = load_checkpoint(path, map_location=self.rt.device)
        load_weights(self.model, payload, path)
        state = payload["training_state"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.best_oiou, self.train_seconds = state["best_oiou"], state["train_seconds"]
        self.validated_step = state.get("validated_step", -1)
        if state.get("budget_applied"):  # the step budget that time_budget_s fixed before the stop
            self.total_steps, self.budget_applied = state["total_steps"], True
        if state["world_size"] == self.rt.world_size:
            set_rng_state(state["rng"][self.rt.rank], self.rt.device)
        else:  # data order is still exact only if the per-rank batch is unchanged; RNG streams are not
            log.warning("resuming with %d ranks from a %d-rank checkpoint: RNG streams are reseeded",
                        self.rt.world_size, state["world_size"])
            seed_everything(self.cfg.seed + self.rt.rank + self.step)
        log.info("resumed from %s at step %d (epoch %d, micro-batch %d)", path, self.step, self.epoch, self.position)

    # -- validation

    def validate(self) -> None:
        """Rank 0 evaluates and writes best.pt; the others wait in `save`'s collective."""
        val = None
        if self.rt.is_main:
            result = evaluate_model(self.model, self.model_cfg, self.val_loader, self.rt.device,
                                    resolution=self.cfg.eval.resolution, precision=precision_name(self.dtype),
                                    overlays=self.cfg.eval.overlays, progress=False)
            self.model.train()
            val = result.summary
            for key in ("oIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9"):
                self.writer.add_scalar(f"val/{key}", val[key], self.step)
            for i, image in enumerate(result.overlays):
                self.writer.add_image(f"val/overlay_{i}", image, self.step, dataformats="HWC")
            tqdm.write(f"step {self.step}: val oIoU {val['oIoU']:.4f} mIoU {val['mIoU']:.4f}")
        improved = val is not None and val["oIoU"] > self.best_oiou  # known on rank 0 only
        if improved:
            self.best_oiou = val["oIoU"]
        self.validated_step = self.step
        self.save(["latest.pt", "best.pt"] if improved else ["latest.pt"], val)

    def after_step(self, end_of_epoch: bool) -> None:
        """Validate every `eval.every_steps` steps (default: at epoch ends); checkpoint latest.pt every
        `checkpoint_every` steps and at epoch ends. The last step is fit()'s."""
        if self.step == self.total_steps:
            return
        every = self.cfg.eval.every_steps
        if (every and self.step % every == 0) or (end_of_epoch and not every):
            self.validate()  # also writes latest.pt
        elif end_of_epoch or self.step % self.cfg.checkpoint_every == 0:
            self.save(["latest.pt"])

    # -- training

    def apply_time_budget(self, steps_this_run: int) -> None:
        """time_budget_s: once the step rate is known, shrink total_steps to what the budget leaves.

        The rate is timed from the RATE_SKIP_STEPS-th step of this process (loader workers and
        kernels warm up before) over at least RATE_STEPS steps, and not before warmup ends, so
        the poly decay is set once, before it starts to matter.
        """
        if self.cfg.time_budget_s is None or self.budget_applied:
            return
        if self.rate_start is None:
            if steps_this_run >= RATE_SKIP_STEPS:
                self.rate_start = (self.step, self.train_seconds)
            return
        start_step, start_seconds = self.rate_start
        timed_steps = self.step - start_step
        if timed_steps < RATE_STEPS or self.step < self.cfg.optim.warmup_steps:
            return
        per_step = (self.train_seconds - start_seconds) / timed_steps
        if self.rt.distributed:  # every rank must stop at the same step: the slowest rank's rate
            slowest = torch.tensor([per_step], device=self.rt.device)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            per_step = float(slowest.item())
        fits = self.step + int(max(0.0, self.cfg.time_budget_s - self.train_seconds) / per_step)
        self.total_steps = max(self.step, min(self.total_steps, fits))
        self.budget_applied = True
        if self.rt.is_main:
            log.info("time budget %.0f s at %.3f s/step: %d steps in all", self.cfg.time_budget_s, per_step,
                     self.total_steps)

    def train_step(self, batches: list[dict]) -> dict[str, float]:
        """One optimizer step over `accumulation` micro-batches (DDP syncs on the last one only)."""
        device, accumulation = self.rt.device, len(batches)
        totals: dict[str, float] = {}
        for i, batch in enumerate(batches):
            if batch is None:  # collate_samples dropped every sample as broken
                raise RuntimeError(f"every sample of a training batch was unreadable; check data.root / "
                                   f"data.image_root ({self.cfg.data.root}, {self.cfg.data.image_root})")
            sync = i == accumulation - 1 or not self.rt.distributed
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                images, image_index = distinct_images(batch)
                batch, image_index, landmark_index = with_landmark_phrases(self.model, batch, image_index)
                input_ids, attention_mask = self.model.tokenize(batch["sentence"])
                with autocast(self.dtype, device):
                    losses = self.ddp(images.to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True),
                                      input_ids, attention_mask, image_index.to(device, non_blocking=True),
                                      landmark_index.to(device, non_blocking=True),
                                      batch["ranked_mask"].to(device, non_blocking=True),
                                      batch["ranked_centres"].to(device, non_blocking=True),
                                      batch["landmark_centre"].to(device, non_blocking=True),
                                      relation_ids(batch["relation"]).to(device, non_blocking=True))
                self.scaler.scale(losses["loss"] / accumulation).backward()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value.item() / accumulation
        if self.cfg.optim.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            totals["grad_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(),
                                                                 self.cfg.optim.clip_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return totals

    def log_step(self, losses: dict[str, float]) -> None:
        """Rank 0's own losses (no cross-rank reduction: logging needs no collective per step)."""
        for key, value in losses.items():
            self.writer.add_scalar(f"train/{key}", value, self.step)
        for group in self.optimizer.param_groups:
            self.writer.add_scalar(f"lr/{group['name']}", group["lr"], self.step)

    def fit(self) -> None:
        cfg, rt = self.cfg, self.rt
        self.model.train()
        if rt.is_main:
            counts = count_parameters(self.model)
            log.info("%s: %d ranks x micro-batch %d x %d accumulation; %d steps/epoch, %d steps; params %s",
                     cfg.preset, rt.world_size, self.micro_batch, cfg.accumulation, self.steps_per_epoch,
                     self.total_steps, counts)
        # disable=None: no bar when stderr is not a terminal (nohup logs, pipes), where each redraw is text.
        bar = tqdm(total=self.total_steps, initial=self.step, disable=None if self.progress_bar else True,
                   dynamic_ncols=True)
        micro_batches_per_epoch = self.steps_per_epoch * cfg.accumulation
        first_step = self.step
        while self.step < self.total_steps:
            self.sampler.set_epoch(self.epoch, start=self.position * self.micro_batch)
            batches = iter(self.loader)
            for _ in range(self.position, micro_batches_per_epoch, cfg.accumulation):
                if self.step == self.total_steps:
                    break
                started = time.perf_counter()
                losses = self.train_step([next(batches) for _ in range(cfg.accumulation)])
                self.position += cfg.accumulation
                self.train_seconds += time.perf_counter() - started
                if rt.is_main:
                    self.log_step(losses)
                    bar.set_postfix(epoch=self.epoch, loss=f"{losses['loss']:.4f}")
                    bar.update()
                end_of_epoch = self.position == micro_batches_per_epoch
                if end_of_epoch:  # before any checkpoint, so a resume starts the next epoch
                    self.epoch, self.position = self.epoch + 1, 0
                self.apply_time_budget(self.step - first_step)
                bar.total = self.total_steps
                self.after_step(end_of_epoch)
        bar.close()
        # The last step is validated (and best.pt written) here, also when a resumed run had
        # nothing left to train: a checkpoint taken mid-run, resumed with max_steps at its step.
        if self.validated_step != self.step:
            self.validate()
        if rt.is_main:
            self.writer.close()
            log.info("done: %d steps in %.0f s of training; best val oIoU %.4f; checkpoints in %s",
                     self.step, self.train_seconds, self.best_oiou, self.out_dir)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training YAML (training/configs/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from <out_dir>/latest.pt")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=1e-4 --set model.guidance=le")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    cfg = load_train_config(args.config, parse_overrides(args.set))
    rt = setup_runtime(cfg.device)
    if not rt.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    trainer = Trainer(cfg, rt)
    if args.resume:
        trainer.resume()
    trainer.fit()
    if rt.distributed:
        # Every rank is done (rank 0 writes the last checkpoint) before the group goes: a rank that
        # tore down while rank 0 still worked was seen to abort in C++ teardown. Only on success, as
        # torchtitan does: a collective teardown beside a failed rank would hang instead of failing.
        rt.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
