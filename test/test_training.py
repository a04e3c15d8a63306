"""training/: a tiny run learns, a SIGKILLed run resumes to the same weights, DDP runs,
and evaluate writes its JSON, table and PR curve.

The data is one synthetic scene (14 sentences, no absent ones) at 96x128: the `tiny`
preset (random text encoder too) memorizes it within ~150 steps, so "learns" is checked
with wide margins, and all runs are deterministic on CPU with one thread.
"""
import itertools
import json
import math
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from meres_core.checkpoint import load_checkpoint
from meres_core.config import load_config, merge, parse_overrides
from meres_core.data.refer import ReferDataset, collate_samples
from meres_core.data.synthetic import generate
from meres_core.model.landmark_phrase import landmark_phrase
from meres_core.model.meres import MERES
from training import evaluate, train
from training.config import DataConfig, load_train_config
from training.data import ResumableSampler, kind_balancing_weights, make_dataset

LEARN_STEPS = 200
IMG_SIZE = 64  # the tiny preset's input


def write_config(path: Path, data_root: Path, out_dir: Path, **overrides) -> Path:
    cfg = {
        "preset": "tiny",
        # epoch: sentence so that one scene (14 sentences, 3-7 refs) still fills the batches below
        "data": {"root": str(data_root), "dataset": "synth", "split_by": "synth", "val_split": "train",
                 "num_workers": 0, "epoch": "sentence"},
        "optim": {"lr": 2.0e-3, "warmup_steps": 10, "weight_decay": 0.0, "clip_grad_norm": 1.0},
        "eval": {"resolution": "input", "overlays": 1},
        "epochs": 1000, "batch_size": 8, "out_dir": str(out_dir), "device": "cpu", "cpu_threads": 1,
    }
    path.write_text(yaml.safe_dump(merge(cfg, overrides)))
    return path


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, 1, seed=0, height=96, width=128, depth=False, absent_fraction=0.0, split_fractions=(1, 0, 0))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, scene_root):
    """A tiny model trained LEARN_STEPS steps in-process (validation on the training scene at the end)."""
    tmp = tmp_path_factory.mktemp("learn")
    config = write_config(tmp / "cfg.yaml", scene_root, tmp / "run", max_steps=LEARN_STEPS,
                          eval={"every_steps": LEARN_STEPS}, checkpoint_every=LEARN_STEPS)
    threads = torch.get_num_threads()
    try:
        train.main(["--config", str(config)])
    finally:
        torch.set_num_threads(threads)
    return tmp / "run"


def scalars(run: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


# ------------------------------------------------------------------------------ pieces


def test_overrides_parse_as_yaml_and_reject_unknown_keys():
    cfg = load_train_config(None, parse_overrides(["optim.lr=1e-4", "model.guidance=le", "max_steps=3"]))
    assert cfg.optim.lr == 1e-4 and cfg.max_steps == 3
    assert cfg.model_config().model.guidance == "le"
    with pytest.raises(ValueError, match="unknown OptimConfig keys: lr_typo"):
        load_train_config(None, parse_overrides(["optim.lr_typo=1"]))


def test_lr_schedule_warmup_then_polynomial_decay():
    assert train.lr_factor(0, 100, 10, 0.9) == pytest.approx(0.1)
    assert train.lr_factor(9, 100, 10, 0.9) == pytest.approx(1.0)
    assert train.lr_factor(50, 100, 0, 0.9) == pytest.approx(0.5 ** 0.9)
    assert train.lr_factor(100, 100, 0, 0.9) == 0.0


def test_parameter_groups_split_encoders_heads_and_decay():
    cfg = load_train_config(None, {"preset": "tiny", "optim": {"lr": 1.0, "backbone_lr_mult": 0.1}})
    model = MERES(load_config("tiny").model)
    groups = {g["name"]: g for g in train.parameter_groups(model, cfg)}
    assert set(groups) == {"encoder", "encoder_no_decay", "head", "head_no_decay"}
    assert groups["encoder"]["lr"] == pytest.approx(0.1) and groups["head"]["lr"] == 1.0
    no_decay = {id(p) for g in groups.values() if g["weight_decay"] == 0.0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    assert any(n.endswith("relative_position_bias_table") for n in names)
    assert all(p.ndim <= 1 or n.endswith("relative_position_bias_table") for n, p in model.named_parameters()
               if n in names)
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_frozen_text_encoder_is_left_out_of_the_optimizer():
    cfg = load_train_config(None, {"preset": "tiny", "model": {"text": {"freeze": True}}})
    model = MERES(cfg.model_config().model)
    optimized = {id(p) for g in train.parameter_groups(model, cfg) for p in g["params"]}
    assert not any(id(p) in optimized for p in model.text.model.parameters())


def test_resumable_sampler_continues_the_same_order():
    data = list(range(37))
    full = ResumableSampler(data, num_replicas=2, rank=1, seed=3)
    full.set_epoch(4)
    part = ResumableSampler(data, num_replicas=2, rank=1, seed=3)
    part.set_epoch(4, start=5)
    assert list(part) == list(full)[5:] and len(part) == len(full) - 5


def test_kind_balanced_sampler_gives_each_kind_an_equal_share_and_resumes():
    kinds = ["attribute"] * 900 + ["ordinal"] * 90 + ["absent"] * 10
    weights = kind_balancing_weights(kinds)
    sampler = ResumableSampler(list(range(len(kinds))), num_replicas=1, rank=0, seed=0, weights=weights)
    sampler.set_epoch(0)
    drawn = [kinds[i] for i in sampler]
    shares = {k: drawn.count(k) / len(drawn) for k in set(kinds)}
    assert all(abs(share - 1 / 3) < 0.06 for share in shares.values()), shares
    again = ResumableSampler(list(range(len(kinds))), num_replicas=1, rank=0, seed=0, weights=weights)
    again.set_epoch(0, start=17)
    assert list(again) == list(sampler)[17:]
    sampler.set_epoch(1)
    assert list(sampler) != [kinds.index(k) for k in drawn]  # a new order each epoch


def test_kind_shares_weight_the_balanced_draw():
    kinds = ["attribute"] * 900 + ["ordinal"] * 90 + ["absent"] * 10
    sampler = ResumableSampler(list(range(len(kinds))), num_replicas=1, rank=0, seed=0,
                               weights=kind_balancing_weights(kinds, {"ordinal": 2.0, "attribute": 0.5}))
    sampler.set_epoch(0)
    drawn = [kinds[i] for i in sampler]
    shares = {k: drawn.count(k) / len(drawn) for k in set(kinds)}
    expected = {"attribute": 0.5 / 3.5, "ordinal": 2.0 / 3.5, "absent": 1.0 / 3.5}
    assert all(abs(shares[k] - expected[k]) < 0.06 for k in expected), shares
    with pytest.raises(ValueError, match="kinds the training sentences do not have: \\['ordnal'\\]"):
        kind_balancing_weights(kinds, {"ordnal": 2.0})  # a misspelt kind would otherwise change nothing
    with pytest.raises(ValueError, match="kind_shares.*balance_kinds"):
        load_train_config(None, {"data": {"kind_shares": {"ordinal": 2.0}}})
    with pytest.raises(ValueError, match="kind_shares must be > 0"):
        load_train_config(None, {"data": {"epoch": "sentence", "balance_kinds": True, "kind_shares": {"size": 0}}})


def test_per_ref_epoch_draws_one_sentence_of_every_ref_and_resumes():
    """LAVT / CGFormer: an epoch visits every ref once with one of its sentences drawn at random."""
    sizes = [3, 1, 2, 4] * 10
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    groups = [list(range(start, start + size)) for start, size in zip(starts, sizes)]
    ref_of = {i: r for r, group in enumerate(groups) for i in group}
    samples = list(range(sum(sizes)))

    def epoch(rank, epoch_index, start=0):
        sampler = ResumableSampler(samples, num_replicas=2, rank=rank, seed=3, groups=groups)
        sampler.set_epoch(epoch_index, start)
        return list(sampler)

    both = epoch(0, 0) + epoch(1, 0)
    assert len(epoch(0, 0)) == len(groups) // 2
    assert sorted(ref_of[i] for i in both) == list(range(len(groups)))  # every ref once per epoch
    assert epoch(1, 0, start=7) == epoch(1, 0)[7:]
    drawn = {i for e in range(40) for i in epoch(0, e) + epoch(1, e)}
    assert drawn == set(samples), "over epochs, every sentence of a ref gets drawn"
    with pytest.raises(ValueError, match="weights.*groups"):
        ResumableSampler(samples, 1, 0, seed=0, weights=torch.ones(len(samples)), groups=groups)


def test_sentences_per_image_draws_runs_of_one_image_kind_balanced_and_resumes():
    image_ids = [i // 10 for i in range(400)]  # 40 images of 10 sentences
    kinds = ["attribute" if i % 10 < 8 else "ordinal" for i in range(400)]
    weights = kind_balancing_weights(kinds)

    def epoch(rank, start=0, balanced=True):
        sampler = ResumableSampler(list(range(400)), 2, rank, seed=1, weights=weights if balanced else None,
                                   sentences_per_image=4, image_ids=image_ids)
        sampler.set_epoch(3, start)
        return sampler, list(sampler)

    def ordinal_share_of_companions(order):
        companions = [i for position, i in enumerate(order) if position % 4]
        return sum(kinds[i] == "ordinal" for i in companions) / len(companions)

    sampler, order = epoch(0)
    assert len(order) == len(sampler) == 200
    runs = [order[i:i + 4] for i in range(0, len(order), 4)]
    assert all(len({image_ids[i] for i in run}) == 1 for run in runs)  # each run is about one image
    assert all(len(set(run)) == 4 for run in runs)  # distinct sentences while the image has enough
    # companions are drawn by the kind weights too (an image has 2 ordinal of 10: 0.2 drawn uniformly)
    assert ordinal_share_of_companions(order) > 0.3 > ordinal_share_of_companions(epoch(0, balanced=False)[1])
    assert epoch(0, start=6)[1] == order[6:]
    assert epoch(1)[1] != order
    with pytest.raises(ValueError, match="image id"):
        ResumableSampler(list(range(400)), 1, 0, seed=0, sentences_per_image=2)


def test_a_run_of_sentences_encodes_its_image_once_with_the_same_loss(tmp_path, scene_root):
    config = write_config(tmp_path / "cfg.yaml", scene_root, tmp_path / "run", batch_size=4,
                          data={"sentences_per_image": 2}, eval={"overlays": 0})
    trainer = train.Trainer(load_train_config(config), train.Runtime(0, 1, torch.device("cpu")), progress_bar=False)
    trainer.sampler.set_epoch(0)
    batch = next(iter(trainer.loader))
    images, image_index = train.distinct_images(batch)
    assert len(images) == len(set(batch["image_id"].tolist())) < len(batch["image"])
    assert torch.equal(images[image_index], batch["image"])
    calls = []
    trainer.model.vision.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    ids, attention = trainer.model.tokenize(batch["sentence"])
    trainer.model.eval()  # no dropout: the two forwards compute the same function
    with torch.no_grad():
        shared = trainer.ddp(images, batch["mask"], ids, attention, image_index)["loss"]
        each = trainer.ddp(batch["image"], batch["mask"], ids, attention)["loss"]
    assert calls == [len(images), len(batch["image"])]
    assert torch.allclose(shared, each, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of data.sentences_per_image"):
        bad = write_config(tmp_path / "bad.yaml", scene_root, tmp_path / "run2", batch_size=3,
                           data={"sentences_per_image": 2})
        train.Trainer(load_train_config(bad), train.Runtime(0, 1, torch.device("cpu")), progress_bar=False)


def test_a_training_step_trains_the_centre_head_on_the_ranked_centres(tmp_path, scene_root):
    config = write_config(tmp_path / "cfg.yaml", scene_root, tmp_path / "run", batch_size=4, eval={"overlays": 0},
                          model={"candidate_rank_prior": True, "candidate_centres": True})
    trainer = train.Trainer(load_train_config(config), train.Runtime(0, 1, torch.device("cpu")), progress_bar=False)
    trainer.sampler.set_epoch(0)
    batch = next(iter(trainer.loader))
    assert batch["ranked_centres"].shape == (4, 8, 2)
    before = trainer.model.centre_head.net[0].weight.detach().clone()
    losses = trainer.train_step([batch])
    assert losses["centres"] > 0 and not torch.equal(trainer.model.centre_head.net[0].weight, before)


def test_a_training_step_adds_each_landmark_phrase_as_a_row_trained_on_the_landmark(tmp_path):
    root = tmp_path / "synth"  # seed 3: a scene with relation sentences (meres-synth 1.6's landmark_ann_id)
    generate(root, 1, seed=3, height=96, width=128, depth=False, absent_fraction=0.0, split_fractions=(1, 0, 0))
    config = write_config(tmp_path / "cfg.yaml", root, tmp_path / "run", batch_size=4, eval={"overlays": 0},
                          model={"candidate_rank_prior": True, "candidate_centres": True, "relation_pick": True})
    trainer = train.Trainer(load_train_config(config), train.Runtime(0, 1, torch.device("cpu")), progress_bar=False)
    dataset = trainer.loader.dataset
    samples = [dataset[i] for i in range(len(dataset))]
    related = [s for s in samples if not math.isnan(s["landmark_centre"][0])]
    unrelated = [s for s in samples if s["relation"] == ""]
    batch = collate_samples(related[:2] + unrelated[:2])
    images, image_index = train.distinct_images(batch)
    rows, row_image, landmark_index = train.with_landmark_phrases(trainer.model, batch, image_index)
    assert rows["sentence"][4:] == [landmark_phrase(s) for s in batch["sentence"][:2]]
    assert landmark_index.tolist() == [4, 5, -1, -1, -1, -1] and torch.equal(row_image[4:], image_index[:2])
    assert torch.equal(rows["mask"][4:], batch["landmark_mask"][:2])  # the phrase learns the landmark's mask
    assert rows["relation"][4:] == ["", ""] and torch.isnan(rows["landmark_centre"][4:]).all()
    before = trainer.model.relation_pick.relation.weight.detach().clone()
    losses = trainer.train_step([batch])
    assert losses["relation"] > 0 and not torch.equal(trainer.model.relation_pick.relation.weight, before)


def test_train_only_trains_the_listed_parameters_and_nothing_else(tmp_path, scene_root):
    config = write_config(tmp_path / "cfg.yaml", scene_root, tmp_path / "run", batch_size=4, eval={"overlays": 0},
                          model={"candidate_rank_prior": True, "candidate_rank_pick": True,
                                 "candidate_pick_weight": 1.0},
                          optim={"train_only": ["candidate_rank."]})
    trainer = train.Trainer(load_train_config(config), train.Runtime(0, 1, torch.device("cpu")), progress_bar=False)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.sampler.set_epoch(0)
    for batch in itertools.islice(iter(trainer.loader), 3):
        losses = trainer.train_step([batch])
    assert "pick" in losses
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith("candidate_rank.") for name in changed), changed
    assert "candidate_rank.pick.gain.weight" in changed
    with pytest.raises(ValueError, match="no parameter starts with"):
        train.freeze_all_but(trainer.model, ["candidate_rnak."])


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "training" / "configs").glob("*.yaml")),
                         ids=lambda path: path.stem)
def test_every_shipped_training_config_loads(config):
    cfg = load_train_config(config)
    assert cfg.batch_size % cfg.data.sentences_per_image == 0
    cfg.model_config()  # the preset and model overrides resolve


def test_epoch_convention_is_a_config_choice_defaulting_to_the_peers():
    assert DataConfig().epoch == "ref"
    with pytest.raises(ValueError, match="balance_kinds.*data.epoch: sentence"):
        load_train_config(None, {"data": {"balance_kinds": True}})
    demo = load_train_config(Path(__file__).parents[1] / "training" / "configs" / "demo_synth.yaml")
    assert demo.data.epoch == "sentence" and demo.data.balance_kinds  # the running demo recipe keeps its order


@pytest.mark.parametrize("convention", ["ref", "sentence"])
def test_trainer_epoch_length_follows_the_convention(tmp_path, scene_root, convention):
    config = write_config(tmp_path / "cfg.yaml", scene_root, tmp_path / "run", batch_size=2,
                          data={"epoch": convention}, eval={"overlays": 0})
    trainer = train.Trainer(load_train_config(config), train.Runtime(0, 1, torch.device("cpu")), progress_bar=False)
    refs = len(trainer.train_set.refs)
    units = refs if convention == "ref" else len(trainer.train_set)
    assert trainer.steps_per_epoch == units // 2
    trainer.sampler.set_epoch(0)
    ref_ids = [trainer.train_set.samples[i][0]["ref_id"] for i in trainer.sampler]
    assert len(ref_ids) == units and (len(set(ref_ids)) == refs if convention == "ref" else True)
    assert refs < len(trainer.train_set)


def test_training_stops_when_pretrained_weights_cannot_be_had(tmp_path, scene_root):
    from meres_core.model.pretrained import PretrainedWeightsUnavailable

    config = write_config(tmp_path / "cfg.yaml", scene_root, tmp_path / "run", max_steps=1,
                          model={"vision": {"pretrained": "timm"}})
    with pytest.raises(PretrainedWeightsUnavailable, match="null"):
        train.main(["--config", str(config)])
    assert not (tmp_path / "run" / "latest.pt").exists()


def official_copy(scene_root, tmp_path):
    """The synthetic scene laid out as RefCOCO (refs(unc).p), with one annotation's mask emptied."""
    (tmp_path / "refcoco").mkdir()
    refs = pickle.loads((scene_root / "synth" / "refs(synth).p").read_bytes())
    instances = json.loads((scene_root / "synth" / "instances.json").read_text())
    instances["annotations"][0]["segmentation"] = [[5.0, 5.0, 5.0, 5.0]]
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps(instances))
    return DataConfig(root=str(tmp_path), dataset="refcoco", split_by="unc", image_root=str(scene_root / "images"))


def test_evaluation_of_an_official_split_fails_on_a_broken_sample(tmp_path, scene_root):
    from meres_core.data.refer import BrokenSampleError

    data = official_copy(scene_root, tmp_path)
    lenient = make_dataset(data, "train", IMG_SIZE)
    assert None in [lenient[i] for i in range(len(lenient))]  # training skips and counts
    strict = make_dataset(data, "train", IMG_SIZE, evaluation=True)
    with pytest.raises(BrokenSampleError, match="empty_mask"):
        [strict[i] for i in range(len(strict))]


def test_periodic_validation_on_an_official_split_fails_on_a_broken_sample(tmp_path, scene_root):
    from meres_core.data.refer import BrokenSampleError

    data = official_copy(scene_root, tmp_path)
    config = write_config(tmp_path / "cfg.yaml", scene_root, tmp_path / "run", batch_size=2,
                          data={"root": data.root, "dataset": "refcoco", "split_by": "unc",
                                "image_root": data.image_root}, eval={"overlays": 0})
    trainer = train.Trainer(load_train_config(config), train.Runtime(0, 1, torch.device("cpu")), progress_bar=False)
    with pytest.raises(BrokenSampleError, match="refcoco train.*empty_mask"):
        trainer.validate()


def test_evaluation_reports_skipped_samples_and_falls_back_from_fp16_on_cpu(scene_root, tiny_cfg, caplog):
    """Other datasets: skipped samples are counted in the report. fp16 on CPU: fp32 with a warning,
    the one precision policy of Segmenter, evaluation and training (meres_core/device.py)."""
    dataset = ReferDataset(scene_root, "synth", "synth", "train", img_size=IMG_SIZE)
    samples = [dataset[i] for i in range(5)] + [None]
    loader = torch.utils.data.DataLoader(samples, batch_size=3, collate_fn=collate_samples)
    torch.manual_seed(0)
    model = MERES(tiny_cfg.model)
    result = evaluate.evaluate_model(model, tiny_cfg, loader, torch.device("cpu"), "input", precision="fp16",
                                     progress=False)
    assert result.summary["samples"] == 5 and result.summary["skipped"] == 1
    assert result.summary["precision"] == "fp32"
    assert any("fp16 needs CUDA" in r.getMessage() for r in caplog.records)
    assert any("scored 5 of 6 samples" in r.getMessage() for r in caplog.records)


def test_warm_start_widens_for_coordinates_and_keeps_the_old_function(tmp_path, tiny_cfg, scene):
    """init_from a model without coordinate maps: same outputs at first; the coordinate
    channels exist and change the output once they are non-zero."""
    from meres_core.checkpoint import save_checkpoint
    from meres_core.data.transforms import preprocess_image

    torch.manual_seed(0)
    old = MERES(tiny_cfg.model).eval()
    save_checkpoint(tmp_path / "old.pt", old, tiny_cfg)
    new_cfg = load_config("tiny", overrides={"model": {"coord_features": True}})
    torch.manual_seed(1)
    new = MERES(new_cfg.model).eval()
    train.warm_start(new, str(tmp_path / "old.pt"))
    assert new.pixel_proj.weight.shape[1] == old.pixel_proj.weight.shape[1] + 2
    image = preprocess_image(scene, tiny_cfg.model.vision.img_size)[None]
    ids, attention = old.tokenize(["the red circle", "the blue square"])
    with torch.no_grad():
        expected = old(image, ids, attention).logits
        assert torch.allclose(new(image, ids, attention).logits, expected, atol=1e-5)
        new.pixel_proj.weight[:, -2:].normal_()
        assert not torch.allclose(new(image, ids, attention).logits, expected, atol=1e-3)


# ------------------------------------------------------------------------------ runs


def test_tiny_run_learns(trained, scene_root):
    losses = scalars(trained, "train/loss")
    assert len(losses) == LEARN_STEPS
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.5 * first, (first, last)

    val = load_checkpoint(trained / "best.pt")["metadata"]["val"]
    masks = torch.stack([s["mask"] for s in ReferDataset(scene_root, "synth", "synth", "train",
                                                         img_size=IMG_SIZE)])
    all_foreground_oiou = float(masks.sum() / masks.numel())  # all-background: 0
    all_foreground_miou = float(masks.flatten(1).mean(1).mean())
    assert val["oIoU"] > max(0.5, 5 * all_foreground_oiou), (val["oIoU"], all_foreground_oiou)
    assert val["mIoU"] > max(0.35, 5 * all_foreground_miou), (val["mIoU"], all_foreground_miou)
    assert scalars(trained, "val/oIoU")[-1] == pytest.approx(val["oIoU"])


def run(command: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """Run in a new session so that a timeout also ends the children (torchrun's workers)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def run_train(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "training.train", "--config", str(config), *extra])


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, scene_root):
    """12 steps straight vs killed (SIGKILL) after a mid-epoch checkpoint, then --resume.

    batch 4 over 14 sentences: 3 steps per epoch, checkpoints every 2 steps and at epoch
    ends, validation at epoch ends; the kill comes after the first checkpoint at step >= 4
    (step 4 is mid-epoch 1). Tolerance: identical within 1e-6 (same CPU, one thread).
    """
    settings = dict(max_steps=12, batch_size=4, checkpoint_every=2)
    straight = write_config(tmp_path / "straight.yaml", scene_root, tmp_path / "straight", **settings)
    interrupted = write_config(tmp_path / "interrupted.yaml", scene_root, tmp_path / "interrupted", **settings)
    assert run_train(straight).returncode == 0
    # Popen directly: the kill must come while the run is still going.

    proc = subprocess.Popen([sys.executable, "-m", "training.train", "--config", str(interrupted)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed_after = None
    for line in proc.stderr:
        saved = re.search(r"saved latest\.pt at step (\d+)", line)
        if saved and int(saved[1]) >= 4:
            proc.send_signal(signal.SIGKILL)
            killed_after = int(saved[1])
            break
    proc.wait(timeout=60)
    assert killed_after is not None and proc.returncode == -signal.SIGKILL

    resumed = run_train(interrupted, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    start = int(re.search(r"resumed from .* at step (\d+)", resumed.stderr)[1])
    assert killed_after <= start < 12  # really resumed part-way

    a = load_checkpoint(tmp_path / "straight" / "latest.pt")
    b = load_checkpoint(tmp_path / "interrupted" / "latest.pt")
    assert a["training_state"]["step"] == b["training_state"]["step"] == 12
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, atol=1e-6, rtol=0, msg=key)
    assert a["metadata"]["val"]["oIoU"] == pytest.approx(b["metadata"]["val"]["oIoU"], abs=1e-6)


def test_resuming_a_mid_run_checkpoint_at_its_step_still_validates(tmp_path, scene_root):
    """latest.pt from a periodic checkpoint (no validation since), resumed with max_steps at its step:
    the run has nothing left to train and must still validate and write best.pt."""
    config = write_config(tmp_path / "cfg.yaml", scene_root, tmp_path / "run", max_steps=1000, batch_size=4,
                          checkpoint_every=2, eval={"every_steps": 1000})
    proc = subprocess.Popen([sys.executable, "-m", "training.train", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if re.search(r"saved latest\.pt at step \d+", line):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    step = load_checkpoint(tmp_path / "run" / "latest.pt")["training_state"]["step"]
    assert "val" not in load_checkpoint(tmp_path / "run" / "latest.pt")["metadata"]
    assert not (tmp_path / "run" / "best.pt").exists()

    resumed = run_train(config, "--resume", "--set", f"max_steps={step}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    latest = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert latest["training_state"]["step"] == step and "oIoU" in latest["metadata"]["val"]
    assert (tmp_path / "run" / "best.pt").exists()


def test_time_budget_shrinks_the_step_budget_and_the_decay_ends_with_it(tmp_path, scene_root):
    """A 1000-step schedule under a 12 s budget: the run stops at what fits and the lr still decays to ~0.

    The rate is known after ~25 steps (~2.5 s here); the budget leaves room for more steps after that
    even on a loaded CPU, so the shortened decay is seen to end at the last step."""
    budget = 12.0
    config = write_config(tmp_path / "budget.yaml", scene_root, tmp_path / "budget", max_steps=1000,
                          time_budget_s=budget, checkpoint_every=1000, eval={"every_steps": 0, "overlays": 0})
    proc = run_train(config)
    assert proc.returncode == 0, proc.stderr[-2000:]
    planned = int(re.search(r"time budget 12 s at [0-9.]+ s/step: (\d+) steps in all", proc.stderr)[1])
    state = load_checkpoint(tmp_path / "budget" / "latest.pt")["training_state"]
    assert state["step"] == state["total_steps"] == planned < 1000
    assert state["train_seconds"] < 3 * budget  # the budget held (loosely: the CPU is shared)
    lrs = scalars(tmp_path / "budget", "lr/head")
    assert lrs[-1] < 0.1 * max(lrs)  # poly decay reached its end at the shortened last step
    assert "it/s" not in proc.stderr and "s/it" not in proc.stderr  # no progress bar into a pipe or log file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_runs_steps_with_accumulation_and_bf16(tmp_path, scene_root):
    # 2 ranks x 2 micro-batches of 2 (no_sync on the first), bf16 autocast.
    config = write_config(tmp_path / "ddp.yaml", scene_root, tmp_path / "ddp", max_steps=2, accumulation=2,
                          precision="bf16", eval={"overlays": 0})
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(free_port()), "-m", "training.train", "--config", str(config)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(tmp_path / "ddp" / "latest.pt")["training_state"]
    assert state["step"] == 2 and state["world_size"] == 2
    assert len(state["rng"]) == 2  # every rank's RNG state, for an exact resume


def test_evaluate_writes_json_table_and_pr_curve(trained, tmp_path, capsys):
    # A scene set with absent sentences, passed on the command line (the checkpoint names another).
    data = tmp_path / "eval_data"
    generate(data, 2, seed=5, height=96, width=128, depth=False, absent_fraction=0.3, split_fractions=(0, 1, 0))
    out = tmp_path / "eval"
    report = evaluate.main(["--checkpoint", str(trained / "best.pt"), "--split", "val", "--data-root", str(data),
                            "--num-workers", "0", "--out", str(out)])
    printed = capsys.readouterr().out
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["resolution"] == "original" and saved["dataset"] == "synth"
    for key in ("oIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9", "auc_pr"):
        assert 0.0 <= saved[key] <= 1.0
    assert "absent" in saved["by_kind"] and saved["found_counts"]["absent"] > 0
    assert 0.0 <= saved["found_accuracy"]["absent"] <= 1.0
    assert saved["n"] == report["n"] > 0
    assert (out / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"^mIoU\s+MERES \(tiny\)", printed, re.M) and re.search(r"^oIoU\s+MERES", printed, re.M)
    assert "resolution: original" in printed

    at_input = evaluate.main(["--checkpoint", str(trained / "best.pt"), "--split", "val", "--data-root", str(data),
                              "--num-workers", "0", "--out", str(tmp_path / "eval_input"), "--resolution", "input"])
    assert at_input["resolution"] == "input" and at_input["n"] == saved["n"]

    changed = evaluate.main(["--checkpoint", str(trained / "best.pt"), "--split", "val", "--data-root", str(data),
                             "--num-workers", "0", "--out", str(tmp_path / "eval_set"),
                             "--set", "inference.presence_threshold=0.97"])
    assert changed["presence_threshold"] == 0.97 and changed["set"] == ["inference.presence_threshold=0.97"]
    assert "set" not in saved


def test_export_drops_training_state_and_halves_weights(trained, tmp_path):
    from meres_core.inference import Segmenter
    from training.export import export

    out = export(trained / "best.pt", tmp_path / "deploy.pt", half=True)
    payload = load_checkpoint(out)
    assert "training_state" not in payload
    assert all(v.dtype == torch.float16 for v in payload["model"].values() if v.is_floating_point())
    assert payload["metadata"]["train_config"]["preset"] == "tiny"
    assert out.stat().st_size < 0.4 * (trained / "best.pt").stat().st_size  # no optimizer moments, fp16
    result = Segmenter.from_checkpoint(out).segment(torch.zeros(96, 128, 3, dtype=torch.uint8).numpy(), "a star")[0]
    assert result.mask.shape == (96, 128)


def test_export_changes_the_config_before_the_model_is_built_and_refuses_what_cannot_be(trained, tmp_path):
    """`--set` (and --presence-threshold) change the deployed config; the weights stay as trained."""
    from training.export import main as export_main

    out = tmp_path / "deploy.pt"
    export_main(["--checkpoint", str(trained / "best.pt"), "--out", str(out), "--presence-threshold", "0.6",
                 "--set", "inference.mask_threshold=0.4"])
    payload = load_checkpoint(out)
    assert payload["config"].inference.presence_threshold == pytest.approx(0.6)
    assert payload["config"].inference.mask_threshold == pytest.approx(0.4)
    trained_weights = load_checkpoint(trained / "best.pt")["model"]
    assert all(torch.equal(payload["model"][k], v) for k, v in trained_weights.items())
    with pytest.raises(ValueError, match="topk_ratio"):  # validated before anything is written
        export_main(["--checkpoint", str(trained / "best.pt"), "--out", str(tmp_path / "x.pt"),
                     "--set", "model.extractor.topk_ratio=1.5"])
    assert not (tmp_path / "x.pt").exists()


def test_ablation_tooling_runs_table3_and_the_eq6_eq7_readings(tmp_path):
    """Item 7's table: Table 3 plus the non-literal Eq. 6 / 7 readings, N seeds, on the dataclass config."""
    from training import ablate

    base = load_train_config(Path(__file__).parents[1] / "training" / "configs" / "ablation_synth.yaml")
    variants = ablate.variants(["3", "eq67"])
    assert {"LE", "Enhanced LE", "VE", "Enhanced LE + All pixels", ablate.FULL} <= set(variants)
    for name, overrides in variants.items():
        cfg = ablate.variant_config(base, overrides, seed=1, out_dir=tmp_path / name)
        model = cfg.model_config().model
        assert cfg.seed == 1 and cfg.out_dir == str(tmp_path / name)
        assert model.text.name == base.model_config().model.text.name  # the base recipe is kept
        if "temperature" in name:
            assert model.extractor.softmax_temperature == pytest.approx(0.07)
        if "1/K" in name:
            assert model.extractor.divide_by_k is False
    assert ablate.parse_args(["--config", "x.yaml", "--tables", "3", "eq67", "--seeds", "2"]).tables == ["3", "eq67"]


def test_ablation_report_says_whether_the_full_model_reached_the_budget():
    from training.ablate import FULL, budget_note

    low = {FULL: {"mIoU": {"mean": 0.41, "std": 0.01}}}
    assert "below" in budget_note(low, 0.60) and "41.0" in budget_note(low, 0.60)
    assert "reached" in budget_note({FULL: {"mIoU": {"mean": 0.63, "std": 0.01}}}, 0.60)


def test_ablation_tables_report_mean_spread_and_change_vs_full():
    from training.ablate import FULL, METRICS, aggregate, markdown

    runs = [{"variant": name, "seed": seed, **{m: base + 0.02 * seed for m in METRICS}}
            for name, base in ((FULL, 0.6), ("LE", 0.5)) for seed in range(2)]
    stats = aggregate(runs)
    assert stats[FULL]["mIoU"]["mean"] == pytest.approx(0.61)
    assert stats["LE"]["oIoU"]["std"] == pytest.approx(0.02 / 2 ** 0.5)
    table = markdown({**stats, **{name: stats["LE"] for name in ("Enhanced LE", "VE", "Enhanced LE + All pixels")}},
                     ["3"], "header")
    assert "| LE | 51.00 ± 1.41 (-10.00) |" in table and f"| **{FULL}** | 61.00 ± 1.41 |" in table
