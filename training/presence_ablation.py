"""What the no-target head adds to "not here", on one checkpoint and one set of sentences.

    python -m training.presence_ablation --checkpoint demo --data-root runs/heldout_scenes [--limit 2400] [--out F]

Presence decided as deployed, from the folded map p = sigmoid(l) sigmoid(t) (model/no_target.py),
against the mask alone, sigmoid(l): the decoder's logits as they enter the head (a forward hook,
so the same forward gives both). Per variant: the presence score's ROC-AUC present vs absent, the
share of absent targets answered "not found" and of present ones found at the checkpoint's
presence threshold, and the threshold `calibrate_presence` would pick (>= 95% of present found);
beside them the ROC-AUC of the head's own probability sigmoid(t). fp32, CPU, the model's input
resolution (stride-4 maps upsampled to it), so the numbers differ slightly from `training.evaluate`'s.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from meres_core.metrics import calibrate_presence
from meres_core.model_source import ModelSource
from training.config import DataConfig
from training.data import make_dataset, make_eval_loader
from training.evaluate import PRESENT_FOUND_FLOOR, forward_one_image_each


def presence_rows(segmenter, dataset, batch_size: int = 16) -> list[dict]:
    """Per sentence: present?, sigmoid(t), and (score, found) with the head and from the mask alone."""
    model = segmenter.model
    if model.no_target is None:
        raise ValueError("the checkpoint has no no-target head (model.no_target_head): nothing to ablate")
    mask_logits = {}
    hook = model.no_target.register_forward_hook(lambda module, args, output: mask_logits.update(l=args[0]))
    rows = []
    try:
        with torch.inference_mode():
            for batch in make_eval_loader(dataset, batch_size, 0):
                out = forward_one_image_each(model, batch["image"], batch["sentence"])
                size = batch["image"].shape[-2:]
                maps = {"with_head": out.logits, "mask_only": mask_logits["l"]}
                maps = {k: torch.sigmoid(F.interpolate(v.float(), size=size, mode="bilinear", align_corners=False))[:, 0]
                        for k, v in maps.items()}
                for i in range(len(batch["sentence"])):
                    row = {"present": not bool(batch["no_target"][i]), "head": float(torch.sigmoid(out.target_logit[i]))}
                    for name, probability in maps.items():
                        result = segmenter.decide(batch["sentence"][i], probability[i].numpy())
                        row[name] = {"score": result.score, "found": result.found}
                    rows.append(row)
    finally:
        hook.remove()
    return rows


def summarize(rows: list[dict], threshold: float) -> dict:
    present = np.array([r["present"] for r in rows])
    if present.all() or not present.any():
        raise ValueError("need both present and absent targets")
    summary = {"sentences": len(rows), "absent": int((~present).sum()), "presence_threshold": threshold,
               "head_probability_auc": round(float(roc_auc_score(present, [r["head"] for r in rows])), 4)}
    for name in ("with_head", "mask_only"):
        scores = [r[name]["score"] for r in rows]
        found = np.array([r[name]["found"] for r in rows])
        summary[name] = {
            "presence_score_auc": round(float(roc_auc_score(present, scores)), 4),
            "absent_rejected": round(float((~found[~present]).mean()), 4),
            "present_found": round(float(found[present].mean()), 4),
            "calibrated": calibrate_presence(scores, present.tolist(), min_present_found=PRESENT_FOUND_FLOOR),
        }
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="demo", help="checkpoint with the no-target head (default: demo)")
    parser.add_argument("--data-root", required=True, help="a synthetic REFER dataset (meres-synth or held-out scenes)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, help="first N sentences")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    segmenter = ModelSource(checkpoint=args.checkpoint, device="cpu", precision="fp32").load()
    data = DataConfig(root=args.data_root, dataset="synth", split_by="synth", num_workers=0)
    dataset = make_dataset(data, args.split, segmenter.cfg.model.vision.img_size, limit=args.limit, evaluation=False)
    summary = {"checkpoint": args.checkpoint, "data_root": args.data_root, "split": args.split,
               **summarize(presence_rows(segmenter, dataset), segmenter.decision.presence_threshold)}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return summary


if __name__ == "__main__":
    main()
