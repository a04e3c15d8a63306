"""The auxiliary object-category head (ModelConfig.object_classes): labels, loss, switch, trainer wiring."""
import json

import numpy as np
import pytest
import torch

from meres_core.config import load_config
from meres_core.data.refer import ReferDataset, decode_segmentation
from meres_core.data.synthetic import generate
from meres_core.model.meres import MERES
from training import train
from training.config import load_train_config

H, W, SIZE = 96, 128, 64
CLASSES = 8  # meres-synth: 7 categories, ids 1..7


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("objects")
    generate(out, 2, seed=3, height=H, width=W, depth=False, absent_fraction=0.0, split_fractions=(1, 0, 0))
    return out


def test_labels_are_every_objects_category_in_drawing_order(root):
    dataset = ReferDataset(root, "synth", "synth", "train", img_size=SIZE, object_labels=True)
    instances = json.loads((root / "synth" / "instances.json").read_text())
    image_id = dataset.refs[0]["image_id"]
    anns = [a for a in instances["annotations"] if a["image_id"] == image_id]
    assert len({a["category_id"] for a in anns}) >= 2

    expected = np.zeros((H, W), np.int64)
    for a in anns:
        expected[decode_segmentation(a["segmentation"], H, W)] = a["category_id"]
    assert np.array_equal(dataset.object_label_map(image_id, H, W), expected)

    sample = dataset[0]
    labels = sample["object_labels"]
    assert labels.dtype == torch.int64 and labels.shape == (SIZE, SIZE)
    present = set(np.unique(expected)) - {0}
    assert set(labels.unique().tolist()) - {0} <= present and 0 in labels
    # every object that is not tiny keeps its category after resizing
    assert len(set(labels.unique().tolist()) - {0}) >= len(present) - 1
    assert "object_labels" not in ReferDataset(root, "synth", "synth", "train", img_size=SIZE)[0]


def test_switch_adds_a_training_only_head_whose_loss_reaches_the_vision_encoder(root):
    dataset = ReferDataset(root, "synth", "synth", "train", img_size=SIZE, object_labels=True)
    batch = [dataset[i] for i in range(2)]
    images = torch.stack([b["image"] for b in batch])
    masks = torch.stack([b["mask"] for b in batch])
    labels = torch.stack([b["object_labels"] for b in batch])

    cfg = load_config("tiny", overrides={"model": {"object_classes": CLASSES}})
    torch.manual_seed(0)
    model = MERES(cfg.model).train()
    ids, attention = model.tokenize([b["sentence"] for b in batch])
    out = model(images, ids, attention)
    assert out.object_logits.shape == (2, CLASSES, SIZE // 8, SIZE // 8)
    losses = model.compute_loss(out, masks, labels)
    assert losses["objects"] > 0
    assert torch.isclose(losses["loss"], losses["bce"] + cfg.model.contrastive_weight * losses["contrastive"]
                         + cfg.model.object_weight * losses["objects"])
    losses["objects"].backward()
    assert model.vision.backbone.patch_embed.proj.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        assert model(images, ids, attention).object_logits is None  # inference never runs it

    off = MERES(load_config("tiny").model).train()
    assert off.object_head is None
    off_out = off(images, ids, attention)
    assert off_out.object_logits is None and "objects" not in off.compute_loss(off_out, masks, labels)


def test_config_refuses_a_single_class():
    with pytest.raises(ValueError, match="object_classes"):
        load_config("tiny", overrides={"model": {"object_classes": 1}})


def write_run(tmp_path, root, classes):
    import yaml

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "preset": "tiny", "model": {"object_classes": classes},
        "data": {"root": str(root), "dataset": "synth", "split_by": "synth", "val_split": "train", "num_workers": 0},
        "batch_size": 2, "max_steps": 30, "eval": {"every_steps": 1000, "overlays": 0}, "checkpoint_every": 1000,
        "optim": {"lr": 2e-3, "warmup_steps": 0}, "out_dir": str(tmp_path / "run"), "seed": 0}))
    return config


def test_trainer_learns_the_categories_and_refuses_too_few_classes(tmp_path, root):
    with pytest.raises(ValueError, match="set it to 8"):
        train.Trainer(load_train_config(write_run(tmp_path, root, 5)), train.Runtime(0, 1, torch.device("cpu")),
                      progress_bar=False)

    trainer = train.Trainer(load_train_config(write_run(tmp_path, root, CLASSES)),
                            train.Runtime(0, 1, torch.device("cpu")), progress_bar=False)
    trainer.model.train()
    batch = next(iter(trainer.loader))
    assert batch["object_labels"].shape == (2, SIZE, SIZE)
    losses = [trainer.train_step([batch])["objects"] for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
