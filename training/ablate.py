"""Ablations of the paper's Tables 3 and 4 on synthetic scenes, N seeds each.

    python -m training.ablate --config training/configs/ablation_synth.yaml --seeds 3 \\
        --out training/results/ablation_synth

Every variant is a model-config switch (meres_core/config.py) applied to the same
training recipe; the full model (Enhanced LE + VE, top-k selection, both cues,
refinement, relationship, contrastive loss, top-k mask in the softmax, Eq. 6 and 7 as
written) is shared by all tables. Table `eq67` holds readings of Eq. 6 / 7 that are not
the paper's (a softmax temperature, no 1/K). Each (variant, seed) trains from scratch, and
its final weights are evaluated on the test split. Writes `<out>.json` (every run, plus
mean / std per variant) and `<out>.md` (the tables, with the change of the mean relative
to the full model, and whether the full model reached `--min-full-miou`: below it, gaps
between variants of an untrained model say little).
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from meres_core.config import as_dict, override, parse_overrides

from .config import TrainConfig, load_train_config, validate
from .data import ensure_synthetic, make_dataset, make_eval_loader
from .evaluate import evaluate_model, json_safe
from .train import Runtime, Trainer

log = logging.getLogger("training.ablate")

FULL = "Enhanced LE + VE (full)"
# Table 3: guidance set elements.
TABLE3 = {
    "LE": {"guidance": "le"},
    "Enhanced LE": {"guidance": "enhanced_le"},
    "VE": {"guidance": "ve"},
    "Enhanced LE + All pixels": {"guidance": "enhanced_le_all_pixels"},
    FULL: {},
}
# Table 4: the visual expression extractor's design, (a)-(f).
TABLE4 = {
    "(a) w/o selection": {"extractor": {"selection": "none"}},
    "(a) sigmoid (> 0.5)": {"extractor": {"selection": "sigmoid"}},
    "(b) global cue only": {"extractor": {"use_local_cue": False}},
    "(b) local cues only": {"extractor": {"use_global_cue": False}},
    "(c) w/o semantic refinement": {"extractor": {"refinement": False}},
    "(d) w/o visual relationship": {"extractor": {"relationship": False}},
    "(e) w/o contrastive loss": {"contrastive_loss": False},
    "(f) w/o top-k mask in normalization": {"extractor": {"topk_mask_in_norm": False}},
    FULL: {},
}
# Not in the paper: Eq. 6 with a temperature (tau's initial value, 0.07), Eq. 7 without the 1/K.
TABLE_EQ67 = {
    "Eq. 6 with temperature 0.07": {"extractor": {"softmax_temperature": 0.07}},
    "Eq. 7 without 1/K": {"extractor": {"divide_by_k": False}},
    "Eq. 6 with temperature 0.07, Eq. 7 without 1/K": {"extractor": {"softmax_temperature": 0.07,
                                                                     "divide_by_k": False}},
    FULL: {},
}
TABLES = {"3": ("Table 3: guidance set elements", TABLE3), "4": ("Table 4: visual expression extractor", TABLE4),
          "eq67": ("Eq. 6 / 7 readings (not in the paper; the full model is the literal reading)", TABLE_EQ67)}
METRICS = ("mIoU", "oIoU", "P@0.5", "P@0.7", "P@0.9", "auc_pr")


def variants(tables: list[str]) -> dict[str, dict]:
    """Variant name -> model overrides, over the chosen tables (the full model once)."""
    return {name: overrides for key in tables for name, overrides in TABLES[key][1].items()}


def variant_config(base: TrainConfig, model_overrides: dict, seed: int, out_dir: Path) -> TrainConfig:
    return validate(override(base, {"model": model_overrides, "seed": seed, "out_dir": str(out_dir)}))


def run_variant(base: TrainConfig, name: str, model_overrides: dict, seed: int, work_dir: Path) -> dict:
    """Train one variant with one seed and evaluate its final weights on the test split."""
    cfg = variant_config(base, model_overrides, seed, work_dir / f"{name}_{seed}")
    rt = Runtime(rank=0, world_size=1, device=torch.device(cfg.device if cfg.device != "auto" else "cpu"))
    started = time.perf_counter()
    trainer = Trainer(cfg, rt, progress_bar=False)
    trainer.fit()
    test_set = make_dataset(cfg.data, "test", trainer.model_cfg.model.vision.img_size,
                            keep_original=cfg.eval.resolution == "original", evaluation=True)
    loader = make_eval_loader(test_set, cfg.eval.batch_size, cfg.data.num_workers)
    result = evaluate_model(trainer.model, trainer.model_cfg, loader, rt.device, cfg.eval.resolution,
                            cfg.precision, pr_curve=True, progress=False)
    metrics = {k: result.summary[k] for k in METRICS}
    log.info("%s seed %d: %s (%.0f s)", name, seed, {k: round(v, 4) for k, v in metrics.items()},
             time.perf_counter() - started)
    return {"variant": name, "seed": seed, "seconds": round(time.perf_counter() - started, 1), **metrics}


def aggregate(runs: list[dict]) -> dict[str, dict]:
    """variant -> {metric: {mean, std}} (sample std over seeds; 0 for one seed)."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        values = {m: [r[m] for r in runs if r["variant"] == name] for m in METRICS}
        out[name] = {m: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
                     for m, v in values.items()}
    return out


def budget_note(stats: dict[str, dict], min_full_miou: float) -> str:
    """Whether the full model learned enough for the gaps between variants to mean something."""
    full = 100 * stats[FULL]["mIoU"]["mean"]
    if full >= 100 * min_full_miou:
        return f"The full model reached {full:.1f}% mIoU (>= {100 * min_full_miou:.0f}%)."
    return (f"**The full model stayed below the budget: {full:.1f}% mIoU < {100 * min_full_miou:.0f}%.** "
            f"Train longer (`--set max_steps=...`) before reading the gaps.")


def markdown(stats: dict[str, dict], tables: list[str], header: str) -> str:
    lines = [header, ""]
    for key in tables:
        title, variants = TABLES[key]
        lines += [f"### {title}", "", "| Variant | " + " | ".join(METRICS) + " |",
                  "|---|" + "---:|" * len(METRICS)]
        full = stats[FULL]
        for name in variants:
            cells = []
            for m in METRICS:
                s = stats[name][m]
                cell = f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"
                if name != FULL:
                    cell += f" ({100 * (s['mean'] - full[m]['mean']):+.2f})"
                cells.append(cell)
            lines.append(f"| {'**' + name + '**' if name == FULL else name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.ablate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="base training YAML (short schedule, synthetic data)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant: 0 .. N-1")
    parser.add_argument("--tables", nargs="+", choices=sorted(TABLES), default=sorted(TABLES))
    parser.add_argument("--out", default="training/results/ablation_synth", help="output path without extension")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config")
    parser.add_argument("--min-full-miou", type=float, default=0.60,
                        help="the report says whether the full model's mean test mIoU reached this")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs in parallel (processes; give each a core: the config's cpu_threads is per run)")
    return parser.parse_args(argv)


def quiet_logging() -> None:
    """One log line per run: no per-checkpoint lines from the trainer."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("training.train").setLevel(logging.WARNING)


def main(argv=None) -> dict:
    quiet_logging()
    args = parse_args(argv)
    base = load_train_config(args.config, parse_overrides(args.set))
    started = time.perf_counter()
    ensure_synthetic(base.data)  # once, before parallel runs read it
    jobs = [(name, overrides, seed) for name, overrides in variants(args.tables).items() for seed in range(args.seeds)]
    with tempfile.TemporaryDirectory(prefix="meres_ablate_") as tmp, \
            ProcessPoolExecutor(args.jobs, multiprocessing.get_context("spawn"), initializer=quiet_logging) as pool:
        runs = list(pool.map(run_variant, *zip(*[(base, *job, Path(tmp)) for job in jobs])))
    stats = aggregate(runs)
    minutes = (time.perf_counter() - started) / 60
    report = {"config": as_dict(base), "seeds": list(range(args.seeds)), "minutes": round(minutes, 1),
              "split": "test", "resolution": base.eval.resolution, "runs": runs, "stats": stats,
              "min_full_miou": args.min_full_miou}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(json_safe(report), indent=1))
    command = " ".join(["python -m training.ablate", "--config", args.config, "--tables", *args.tables,
                        "--seeds", str(args.seeds), "--jobs", str(args.jobs), *(f"--set {s}" for s in args.set)])
    header = (f"## MERES ablations on synthetic scenes ({base.preset} preset, {args.seeds} seed(s): "
              f"mean ± std in %, change of the mean vs the full model in parentheses)\n\n"
              f"Test split, {base.eval.resolution} resolution; {base.max_steps or base.epochs} "
              f"{'steps' if base.max_steps else 'epochs'} of batch {base.batch_size} per run "
              f"(epoch convention: {base.data.epoch}); {minutes:.1f} min in total ({args.jobs} parallel jobs). "
              f"Command: `{command}`.\n\n{budget_note(stats, args.min_full_miou)} "
              f"A difference smaller than the seed spread is not evidence either "
              f"way; the paper's gaps (1-2 points) come from 40-epoch RefCOCO training.")
    out.with_suffix(".md").write_text(markdown(stats, args.tables, header))
    print(out.with_suffix(".md").read_text())
    return report


if __name__ == "__main__":
    main()
