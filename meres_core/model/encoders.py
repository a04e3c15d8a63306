"""Vision and language encoders (Sec. 3.1), taken from timm and transformers.

VisionEncoder: timm Swin with `features_only`, giving F1..F4 at strides 4, 8, 16, 32.
At 480x480 with window 12 (the `paper` preset), stages 3 and 4 (30x30, 15x15) are not
multiples of 12: timm pads each stage to a window multiple and masks the padding, the
same rule as the Swin segmentation code that LAVT builds on, so no weights change.

TextEncoder: transformers AutoModel + AutoTokenizer, giving Q_l (B, T, D_t) with the
global token in row 0 and a boolean validity mask (False on padding).

Pretrained weights (hub, hub cache, local files / folders) and what a failed load means:
model/pretrained.py. `pretrained_required` makes a failed load an error (training).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import timm
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

from ..config import TextConfig, VisionConfig
from .pretrained import hub_offline, timm_weights_overlay, unavailable


def resolve_model_path(name: str) -> str:
    """`package:<module>/<subdir>` -> the directory inside the installed package."""
    if not name.startswith("package:"):
        return name
    module, _, subdir = name[len("package:"):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"text model {name!r} needs the Python package {module!r} (pip install it)")
    return str(Path(list(spec.submodule_search_locations)[0]) / subdir)


def set_fused_window_attention(backbone: nn.Module, enabled: bool) -> int:
    """Swin's window attention through `F.scaled_dot_product_attention` (enabled) or timm's default.

    timm keeps its Swin on the explicit q @ k^T, + bias, softmax, @ v path unless fused
    attention is switched on globally as "experimental" (TIMM_FUSED_ATTN=2); the fused kernel
    gives the same result (relative position bias and shift mask enter as an additive mask)
    without materializing the (windows, heads, N, N) scores several times. Returns the number
    of attention modules switched.
    """
    from timm.models.swin_transformer import WindowAttention

    modules = [m for m in backbone.modules() if isinstance(m, WindowAttention)]
    for module in modules:
        module.fused_attn = enabled
    return len(modules)


def sentence_mean(text: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
    """text (B, T, D_t), text_valid (B, T) -> (B, D_t): the mean over valid tokens (the pooling the
    MiniLM sentence encoder was trained with)."""
    valid = text_valid[..., None].to(text.dtype)
    return (text * valid).sum(1) / valid.sum(1).clamp(min=1)


class VisionEncoder(nn.Module):
    """timm Swin -> [F1, F2, F3, F4], each (B, C_i, H_i, W_i)."""

    def __init__(self, cfg: VisionConfig, pretrained_required: bool = False):
        super().__init__()
        overrides = {
            key: value
            for key in ("embed_dim", "depths", "num_heads", "window_size")
            if (value := getattr(cfg, key)) is not None
        }
        if "depths" in overrides:
            overrides["depths"] = tuple(overrides["depths"])
            overrides["num_heads"] = tuple(overrides["num_heads"])
        kwargs = dict(
            features_only=True,
            out_indices=(0, 1, 2, 3),
            img_size=cfg.img_size,
            drop_path_rate=cfg.drop_path_rate,
            **overrides,
        )
        self.backbone = self._create(cfg, kwargs, pretrained_required)
        set_fused_window_attention(self.backbone, True)
        self.channels: list[int] = self.backbone.feature_info.channels()
        # Per-stage LayerNorm on the outputs, as in Swin's segmentation heads (and LAVT).
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels)

    @staticmethod
    def _create(cfg: VisionConfig, kwargs: dict, pretrained_required: bool) -> nn.Module:
        if cfg.pretrained is None:
            return timm.create_model(cfg.name, pretrained=False, **kwargs)
        if cfg.pretrained != "timm" and not Path(cfg.pretrained).exists():  # a config error, never a fallback
            raise FileNotFoundError(f"vision weights not found: {cfg.pretrained}")
        try:
            overlay = timm_weights_overlay(cfg.name, cfg.pretrained)
            return timm.create_model(cfg.name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except Exception as exc:  # hub errors, offline without a cached copy, unreadable files
            unavailable(f"vision encoder {cfg.name}", exc, pretrained_required, "model.vision.pretrained: null")
            return timm.create_model(cfg.name, pretrained=False, **kwargs)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(images)  # timm Swin features are NHWC
        return [norm(f).permute(0, 3, 1, 2).contiguous() for norm, f in zip(self.norms, feats)]


class TextEncoder(nn.Module):
    """transformers BERT / CLIP text -> Q_l (B, T, D_t) and validity (B, T)."""

    def __init__(self, cfg: TextConfig, pretrained_required: bool = False):
        super().__init__()
        self.cfg = cfg
        self.tokenizer, self.model = self._create(cfg, pretrained_required)
        self.dim: int = self.model.config.hidden_size
        if cfg.freeze:
            self.model.requires_grad_(False)

    @staticmethod
    def _create(cfg: TextConfig, pretrained_required: bool):
        path = resolve_model_path(cfg.name)
        # A hub name offline: the hub cache only, no retries (a local folder never contacts the hub).
        local_only = not Path(path).is_dir() and hub_offline()
        if cfg.pretrained:
            try:
                return (AutoTokenizer.from_pretrained(path, local_files_only=local_only),
                        AutoModel.from_pretrained(path, local_files_only=local_only))
            except OSError as exc:  # keep the architecture, random weights (unless required)
                unavailable(f"text encoder {cfg.name} ({cfg.kind})", exc, pretrained_required,
                            "model.text.pretrained: false")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        except OSError:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.fallback_tokenizer))
        arch = dict(vocab_size=tokenizer.vocab_size, **cfg.architecture)
        if cfg.kind == "clip":
            arch.setdefault("max_position_embeddings", max(77, cfg.max_tokens))
            return tokenizer, CLIPTextModel(CLIPTextConfig(**arch))
        return tokenizer, BertModel(BertConfig(**arch), add_pooling_layer=False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.freeze:
            self.model.eval()  # a frozen encoder keeps dropout off
        return self

    def tokenize(self, sentences: list[str], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(sentences, padding=True, truncation=True, max_length=self.cfg.max_tokens,
                               return_tensors="pt")
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D_t)
        valid = attention_mask.bool()
        if self.cfg.kind == "clip":
            # CLIP has no [CLS]: its sentence token is the last (EOS) one, moved to row 0
            # in place of the start token, as CLIP-based RES models take EOS as global.
            eos = hidden[torch.arange(hidden.shape[0]), valid.sum(1) - 1]
            hidden = torch.cat([eos[:, None], hidden[:, 1:]], dim=1)
        return hidden, valid
