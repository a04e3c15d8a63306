"""One config toolkit (meres_core/config.py): builder, overrides on dataclasses, `--set` parser;
the presets name the pretrained weights they mean."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
from timm.models import get_pretrained_cfg

import training.config as train_config
from meres_core import config as core
from meres_core.config import ModelConfig, from_dict, load_config, override, parse_overrides
from training.config import TrainConfig, load_train_config


@dataclass
class Inner:
    rate: float = 1.0
    mode: Literal["a", "b"] = "a"
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    maybe: Optional[Inner] = None
    extra: dict = field(default_factory=dict)
    steps: Optional[int] = None


def test_training_config_uses_the_core_toolkit():
    from training import ablate, train

    assert train_config.from_dict is core.from_dict and train_config.merge is core.merge
    assert train.parse_overrides is core.parse_overrides and ablate.parse_overrides is core.parse_overrides
    assert not hasattr(train_config, "_build") and not hasattr(core, "_build")


def test_builder_types_literals_floats_tuples_and_optional_dataclasses():
    built = from_dict(Outer, {"inner": {"rate": "1e-3", "betas": [0.5, 0.6]}, "maybe": {"mode": "b"}})
    assert built.inner.rate == 1e-3 and isinstance(built.inner.rate, float)  # YAML 1.1 reads 1e-3 as a string
    assert built.inner.betas == (0.5, 0.6)
    assert built.maybe == Inner(mode="b")
    with pytest.raises(ValueError, match=r"Inner.mode must be one of \('a', 'b'\), got 'c'"):
        from_dict(Outer, {"inner": {"mode": "c"}})
    with pytest.raises(ValueError, match="unknown Inner keys: typo"):
        from_dict(Outer, {"maybe": {"typo": 1}})
    with pytest.raises(ValueError, match="Inner.rate must be a number"):
        from_dict(Outer, {"inner": {"rate": "fast"}})


def test_override_applies_nested_changes_to_a_dataclass_without_touching_it():
    base = from_dict(Outer, {"extra": {"a": {"x": 1}}, "inner": {"rate": 2.0}})
    changed = override(base, {"inner": {"mode": "b"}, "extra": {"a": {"y": 2}}, "steps": 5})
    assert changed.inner == Inner(rate=2.0, mode="b") and changed.steps == 5
    assert changed.extra == {"a": {"x": 1, "y": 2}}  # dict fields merge like nested overrides
    assert base.inner == Inner(rate=2.0) and base.extra == {"a": {"x": 1}} and base.steps is None
    with pytest.raises(ValueError, match="unknown Outer keys: nope"):
        override(base, {"nope": 1})


def test_set_parser_and_training_overrides_on_a_built_config():
    assert parse_overrides(["a.b=1e-4", "c=[1, 2]", "d=null"]) == {"a": {"b": "1e-4"}, "c": [1, 2], "d": None}
    cfg = load_train_config(None, parse_overrides(["optim.lr=1e-4", "optim.betas=[0.8, 0.9]"]))
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.8, 0.9)
    variant = override(cfg, {"model": {"extractor": {"refinement": False}}, "seed": 1})
    assert isinstance(variant, TrainConfig) and variant.seed == 1 and cfg.seed == 0
    assert variant.model_config().model.extractor.refinement is False
    with pytest.raises(ValueError, match="TrainConfig.precision must be one of"):
        load_train_config(None, {"precision": "fp8"})


def test_model_literals_are_checked_by_the_builder():
    with pytest.raises(ValueError, match="ModelConfig.guidance must be one of"):
        load_config("tiny", overrides={"model": {"guidance": "telepathy"}})
    assert from_dict(ModelConfig, {"extractor": {"topk_ratio": "3e-1"}}).extractor.topk_ratio == pytest.approx(0.3)


@pytest.mark.parametrize("preset", ["paper", "paper_clip"])
def test_paper_presets_name_the_imagenet22k_weights(preset):
    """Untagged, timm 1.0 resolves swin_base_patch4_window12_384 to the 22K->1K fine-tuned weights;
    the paper (and LAVT) start from the ImageNet-22K ones."""
    name = load_config(preset).model.vision.name
    assert name == "swin_base_patch4_window12_384.ms_in22k"
    pretrained = get_pretrained_cfg(name)
    assert pretrained.tag == "ms_in22k" and pretrained.num_classes == 21841
    assert get_pretrained_cfg("swin_base_patch4_window12_384").tag == "ms_in22k_ft_in1k"
