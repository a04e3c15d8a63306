"""ONNX export of the image path, and the onnxruntime session the `Segmenter` runs it with.

The image path is everything after the language encoder: vision encoder, expression
extractor and decoder. Its inputs are the preprocessed image and the (cached) text
features, so a robot keeps one ONNX graph per model and the language encoder stays in
PyTorch, run once per new sentence:

    pixels      float32 (1, 3, S, S)   meres_core.data.transforms.preprocess_image, S = vision.img_size
    text        float32 (E, T, D_t)    Q_l of E sentences (Segmenter._text_features), T tokens
    text_valid  bool    (E, T)         False on padding
    landmark_index int64 (E,)          the row of each sentence's landmark phrase, -1 for none
                                       (MERES.landmark_rows; all -1 without the relation pick)
    -> logits   float32 (E, 1, S/4, S/4)

    python -m meres_core.export_onnx --checkpoint demo --out meres_demo.onnx
    python -m meres_core.export_onnx --preset paper --out paper.onnx   # random weights: for timing only

`Segmenter(..., backend="onnx", onnx_path=...)` (or `inference.backend: onnx` in the config)
runs the file with onnxruntime. On a Jetson, TensorRT builds an engine from the same file
(README, "ONNX and TensorRT").
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from .model.encoders import set_fused_window_attention
from .model.meres import MERES

log = logging.getLogger(__name__)

INPUTS = ("pixels", "text", "text_valid", "landmark_index")
OPSET = 18


class ImagePath(nn.Module):
    """MERES after the language encoder: (pixels, text, text_valid, landmark_index) -> logits."""

    def __init__(self, model: MERES):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor,
                landmark_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model.decode(self.model.encode_image(pixels), text, text_valid, landmark_index).logits


def landmark_index_or_none(text: torch.Tensor, landmark_index: Optional[torch.Tensor]) -> torch.Tensor:
    """landmark_index as given; None: no sentence names a landmark phrase (all -1, on the text's device)."""
    if landmark_index is None:
        return torch.full((text.shape[0],), -1, dtype=torch.long, device=text.device)
    return landmark_index


def example_inputs(model: MERES, sentences: int = 2, tokens: int = 6) -> tuple[torch.Tensor, ...]:
    size = model.cfg.vision.img_size
    valid = torch.ones(sentences, tokens, dtype=torch.bool)
    valid[1:, tokens // 2:] = False  # padding in the example, so the graph is traced with it
    landmark_index = torch.full((sentences,), -1, dtype=torch.long)
    landmark_index[0] = sentences - 1  # the first sentence names a landmark phrase, the last row
    return torch.randn(1, 3, size, size), torch.randn(sentences, tokens, model.text.dim), valid, landmark_index


def export(model: MERES, path: str | Path, metadata: Optional[dict] = None) -> Path:
    """Write the image path of `model` (fp32, CPU) to `path` with dynamic sentence and token counts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.float().cpu().eval()
    backbone = model.vision.backbone
    # The exporter fails to decompose timm's SDPA window attention (a view of a transposed output);
    # timm's explicit attention exports, and onnxruntime fuses it itself.
    set_fused_window_attention(backbone, False)
    sentences = torch.export.Dim("sentences", min=1, max=256)
    tokens = torch.export.Dim("tokens", min=2, max=1024)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                ImagePath(model).eval(), example_inputs(model), dynamo=True, opset_version=OPSET,
                input_names=list(INPUTS), output_names=["logits"],
                dynamic_shapes={"pixels": None, "text": {0: sentences, 1: tokens},
                                "text_valid": {0: sentences, 1: tokens}, "landmark_index": {0: sentences}},
                verbose=False)
        import onnx

        proto = program.model_proto
        info = {"img_size": model.cfg.vision.img_size, "text_dim": model.text.dim, **(metadata or {})}
        for key, value in info.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"meres.{key}", json.dumps(value)
        onnx.save_model(proto, str(path))
    finally:
        set_fused_window_attention(backbone, True)
        model.to(device=device, dtype=dtype).train(was_training)
    log.info("exported the image path to %s in %.1f s", path, time.perf_counter() - start)
    return path


def fused_graph(path: Path, device: torch.device) -> bytes:
    """The file's graph with onnxruntime's transformer fusions (GELU, LayerNorm), in memory.

    onnxruntime's session-level optimizations leave the exporter's erf-GELU as Erf, Mul and Div
    passes; its offline optimizer fuses them into its own Gelu / BiasGelu kernels (about 6%
    faster on the demo model here). Done at load time so the file on disk keeps standard ONNX
    operators for TensorRT and other runtimes.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    # num_heads / hidden_size 0: no attention fusion is attempted (timm's window attention does not match it).
    # The optimizer prints its shape-inference failures on stdout, where meres-segment writes JSON.
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        fused = optimize_model(str(path), model_type="swin", opt_level=1, use_gpu=device.type == "cuda",
                               num_heads=0, hidden_size=0)
    if printed.getvalue().strip():
        log.debug("onnxruntime optimizer: %s", printed.getvalue().strip())
    return fused.model.SerializeToString()


class OnnxImagePath:
    """An onnxruntime session of an exported image path; call it like ImagePath (torch in, torch out)."""

    def __init__(self, path: str | Path, model: MERES, device: torch.device):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX image path not found: {self.path} (python -m meres_core.export_onnx)")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers = [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()] + providers
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same CPU budget as the torch backend
        # Threads spin between the kernels of a run (without it every kernel wakes them from sleep:
        # demo image path 60-62 -> 54 ms here) and stop when the run returns; spinning on after it
        # slowed whatever ran next in the process (in the benchmark, the next candidate 61 -> 91 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.session = ort.InferenceSession(fused_graph(self.path, device), options, providers=providers)
        meta = {k.removeprefix("meres."): json.loads(v)
                for k, v in self.session.get_modelmeta().custom_metadata_map.items() if k.startswith("meres.")}
        expected = {"img_size": model.cfg.vision.img_size, "text_dim": model.text.dim}
        wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            raise ValueError(f"{self.path} was exported for another model: (file, model) {wrong}")
        self.metadata = meta
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, pixels: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor,
                 landmark_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        feeds = {"pixels": pixels.float().cpu().numpy(), "text": text.float().cpu().numpy(),
                 "text_valid": text_valid.cpu().numpy(), "landmark_index": landmark_index_or_none(text, landmark_index).cpu().numpy()}
        # A model without the relation pick has no use for landmark_index: the exporter drops the input.
        feeds = {name: feeds[name] for name in self.inputs}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def temporary_export(model: MERES) -> Path:
    """Export into a fresh temporary folder (the Segmenter's onnx backend without a file named)."""
    return export(model, Path(tempfile.mkdtemp(prefix="meres_onnx_")) / "image_path.onnx")


def main(argv=None) -> None:
    from .checkpoint import build_from_checkpoint
    from .config import load_config

    parser = argparse.ArgumentParser(prog="python -m meres_core.export_onnx", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint file, or `demo` for the shipped demo model")
    source.add_argument("--preset", help="a preset with its initial weights (random where not pretrained)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the preset's random weights")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.checkpoint:
        model, _, _ = build_from_checkpoint(args.checkpoint)
        metadata = {"source": f"checkpoint {args.checkpoint}"}
    else:
        torch.manual_seed(args.seed)
        model = MERES(load_config(args.preset).model)
        metadata = {"source": f"preset {args.preset} seed {args.seed}"}
    path = export(model, args.out, metadata)
    print(json.dumps({"onnx": str(path), "bytes": path.stat().st_size, **metadata}))


if __name__ == "__main__":
    main()
