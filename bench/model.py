"""Model section: how close the model runs to the hardware, what extra sentences cost, precision agreement.

    python -m bench.model [--quick] [--device cpu|cuda] [--out FILE]

Measured side by side in one process (round-robin, medians), random weights unless named:
  roofline     `paper`@480 full forward (one sentence) against its FLOPs (torch.utils.flop_counter)
               divided by a square matmul's rate measured in the same rounds, fp32 and the reduced
               precision (bf16 on CPU, fp16 on CUDA); timm's Swin-B alone, and with timm's default
               (unfused) window attention as the baseline of our switch
  sentences    8 sentences on one frame vs one through the `Segmenter` (`paper`, cached sentences)
  precision    mask IoU of reduced precision vs fp32, shipped demo model on meres-synth scenes
  presets      latency per preset through the `Segmenter`: 1 sentence, 4 batched, 4 separately, uncached
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from meres_core.metrics import mask_iou

from .common import best, fixture_samples, interleaved, machine, ratio, section_main, target

SENTENCES = ["the red mug left of the laptop", "the blue bowl", "the second star from the left",
             "the smaller green circle near the top", "the banana", "the box behind the cup",
             "the largest object on the table", "the thing closest to the camera"]
RANDOM_WEIGHTS = {"model": {"vision": {"pretrained": None}, "text": {"pretrained": False}}}


def frame(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((480, 640, 3)) * 255).astype(np.uint8)


def low_precision(device: str) -> str:
    return "fp16" if device.startswith("cuda") else "bf16"


def build(preset: str, seed: int = 0):
    import torch

    from meres_core.config import load_config
    from meres_core.model.meres import MERES

    cfg = load_config(preset, overrides=RANDOM_WEIGHTS if preset.startswith("paper") else None)
    torch.manual_seed(seed)
    return MERES(cfg.model).eval(), cfg


def segmenter(preset: str, device: str, precision: str):
    from meres_core.inference import Segmenter

    model, cfg = build(preset)
    return Segmenter(model, cfg, device=device, precision=precision)


def roofline(quick: bool, device: str) -> dict:
    """paper@480: FLOPs of one full forward and its time against the matmul rate, both precisions."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from meres_core.data.transforms import preprocess_image
    from meres_core.device import autocast
    from meres_core.model.encoders import set_fused_window_attention

    low = low_precision(device)
    fp32, reduced = segmenter("paper", device, "fp32"), segmenter("paper", device, low)
    model, model_low = fp32.model, reduced.model
    pixels = preprocess_image(frame(), fp32.cfg.model.vision.img_size)[None].to(device)
    ids, attention = model.tokenize(SENTENCES[:1])
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(pixels, ids, attention)
        flops = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model.vision.backbone(pixels)
        swin_flops = counter.get_total_flops()

    n = 2048 if quick and not device.startswith("cuda") else 4096
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a_low, b_low = a.to(reduced.dtype), b.to(reduced.dtype)

    def forward(segment):
        with autocast(segment.dtype, segment.device):
            segment.model(pixels, ids, attention)

    def swin(segment, fused=True):
        set_fused_window_attention(segment.model.vision.backbone, fused)
        try:
            with autocast(segment.dtype, segment.device):
                segment.model.vision.backbone(pixels)
        finally:
            set_fused_window_attention(segment.model.vision.backbone, True)

    candidates = {
        "matmul_fp32": lambda: a @ b, f"matmul_{low}": lambda: a_low @ b_low,
        "forward_fp32": lambda: forward(fp32), f"forward_{low}": lambda: forward(reduced),
        "swin_fp32": lambda: swin(fp32), f"swin_{low}": lambda: swin(reduced),
        "swin_fp32_timm_unfused_attention": lambda: swin(fp32, False),
        f"swin_{low}_timm_unfused_attention": lambda: swin(reduced, False),
    }
    with torch.inference_mode():
        times = interleaved(candidates, rounds=3 if quick else 7, device=device)
    peak = {p: 2 * n ** 3 / best(times, f"matmul_{p}") / 1e9 for p in ("fp32", low)}
    out = {"preset": "paper", "input": "640x480 frame resized to 480x480, 1 sentence", "flops_g": round(flops / 1e9, 2),
           "swin_flops_g": round(swin_flops / 1e9, 2), "matmul_size": n,
           "matmul_peak_gflops": {p: round(v, 1) for p, v in peak.items()}, "times": times}
    for p in ("fp32", low):
        ideal = flops / (peak[p] * 1e9)
        out[f"roofline_s_{p}"] = round(ideal, 4)
        out[f"forward_over_roofline_{p}"] = round(best(times, f"forward_{p}") / ideal, 3)
        out[f"swin_over_roofline_{p}"] = round(best(times, f"swin_{p}") / (swin_flops / (peak[p] * 1e9)), 3)
        out[f"swin_share_of_forward_{p}"] = round(ratio(times, f"swin_{p}", f"forward_{p}"), 3)
        out[f"fused_attention_speedup_{p}"] = round(ratio(times, f"swin_{p}_timm_unfused_attention", f"swin_{p}"), 3)
    return out


def sentences(quick: bool, device: str) -> dict:
    """8 sentences on one frame vs 1 through the Segmenter (cached text), fp32 and reduced precision."""
    low = low_precision(device)
    image = frame(1)
    segmenters = {p: segmenter("paper", device, p) for p in ("fp32", low)}
    candidates = {}
    for p, seg in segmenters.items():
        seg.segment(image, SENTENCES)  # caches the sentences' text features
        candidates[f"k1_{p}"] = lambda seg=seg: seg.segment(image, SENTENCES[:1])
        candidates[f"k8_{p}"] = lambda seg=seg: seg.segment(image, SENTENCES)
    times = interleaved(candidates, rounds=3 if quick else 7, device=device)
    out = {"preset": "paper", "frame": "640x480", "times": times}
    for p in segmenters:
        out[f"k8_over_k1_{p}"] = round(ratio(times, f"k8_{p}", f"k1_{p}"), 3)
    return out


def precision_agreement(quick: bool, device: str) -> dict:
    """Mean mask IoU, reduced precision vs fp32, shipped demo model on meres-synth test scenes."""
    from meres_core.inference import Decision, Segmenter

    low = low_precision(device)
    fp32 = Segmenter.from_checkpoint("demo", device=device, precision="fp32")
    reduced = Segmenter.from_checkpoint("demo", device=device, precision=low)
    decision = Decision.from_config(fp32.cfg.inference)
    ious, found_agree, count = [], 0, 0
    with tempfile.TemporaryDirectory(prefix="bench_scenes_") as folder:
        samples = fixture_samples(Path(folder), images=4 if quick else 12)
    for image, texts in samples:
        for a, b in zip(fp32.segment(image, texts, decision), reduced.segment(image, texts, decision)):
            ious.append(mask_iou(a.mask, b.mask))
            found_agree += a.found == b.found
            count += 1
    return {"checkpoint": "demo", "precision": low, "scenes": len(samples), "sentences": count,
            "mean_mask_iou": round(float(np.mean(ious)), 4), "min_mask_iou": round(float(np.min(ious)), 4),
            "found_agreement": round(found_agree / count, 4)}


def presets(quick: bool, device: str) -> list[dict]:
    """Latency per preset (fp32): 1 sentence, 4 batched, 4 separately, a fresh (uncached) sentence."""
    from meres_core.model.meres import count_parameters

    rows = []
    for name in ("tiny", "demo") if quick else ("tiny", "demo", "paper"):
        seg = segmenter(name, device, "fp32")
        image = frame(2)

        def fresh():
            seg._text_cache.pop(SENTENCES[0], None)
            seg.segment(image, SENTENCES[0])

        times = interleaved({
            "one": lambda: seg.segment(image, SENTENCES[0]),
            "four_batched": lambda: seg.segment(image, SENTENCES[:4]),
            "four_separately": lambda: [seg.segment(image, s) for s in SENTENCES[:4]],
            "uncached": fresh,
        }, rounds=3 if quick else 5, device=device)
        ms = {k: round(v["min_s"] * 1000, 1) for k, v in times.items()}
        rows.append({"preset": name, "input_size": seg.cfg.model.vision.img_size,
                     "parameters": count_parameters(seg.model), **{f"latency_ms_{k}": v for k, v in ms.items()},
                     "batching_speedup": round(ms["four_separately"] / ms["four_batched"], 2),
                     "text_cache_speedup": round(ms["uncached"] / ms["one"], 2)})
    return rows


def run(quick: bool, device: str = "cpu") -> dict:
    low = low_precision(device)
    measurements = {"machine": machine(), "device": device,
                    "roofline": roofline(quick, device),
                    "sentences": sentences(quick, device),
                    "precision_agreement": precision_agreement(quick, device),
                    "presets": presets(quick, device)}
    roof, sent, agree = measurements["roofline"], measurements["sentences"], measurements["precision_agreement"]
    notes = {p: (f"swin alone {roof[f'swin_over_roofline_{p}']}x its roofline, "
                 f"{roof[f'swin_share_of_forward_{p}']:.0%} of the forward") for p in ("fp32", low)}
    targets = {
        "paper_fp32_over_fp32_roofline": target(roof["forward_over_roofline_fp32"], 2.0, note=notes["fp32"]),
        f"paper_{low}_over_{low}_roofline": target(roof[f"forward_over_roofline_{low}"], 4.0, note=notes[low]),
        "k8_over_k1_fp32": target(sent["k8_over_k1_fp32"], 2.05),
        f"k8_over_k1_{low}": target(sent[f"k8_over_k1_{low}"], 2.05),
        f"{low}_vs_fp32_mask_iou": target(agree["mean_mask_iou"], 0.98, ">="),
    }
    baselines = {"matmul_peak_gflops": roof["matmul_peak_gflops"],
                 "swin_alone_s": {p: best(roof["times"], f"swin_{p}") for p in ("fp32", low)},
                 "swin_timm_unfused_attention_s": {
                     p: best(roof["times"], f"swin_{p}_timm_unfused_attention") for p in ("fp32", low)},
                 "forward_s": {p: best(roof["times"], f"forward_{p}") for p in ("fp32", low)}}
    return {"targets": targets, "measurements": measurements, "baselines": baselines}


def main(argv=None) -> None:
    section_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
