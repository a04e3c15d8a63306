"""training.presence_ablation: 'mask only' is the same model without its no-target head, on real scenes."""
import pytest
import torch
import torch.nn.functional as F

from meres_core.config import load_config
from meres_core.inference import Segmenter
from meres_core.model.meres import MERES
from training import presence_ablation
from training.config import DataConfig
from training.data import make_dataset


def forward(model, sample):
    ids, attention = model.tokenize([sample["sentence"]])
    with torch.inference_mode():
        return model(sample["image"][None], ids, attention)


def test_mask_only_is_the_model_without_its_head_and_the_head_changes_presence(heldout):
    with_head, plain = load_config("tiny", overrides={"model": {"no_target_head": True}}), load_config("tiny")
    data = DataConfig(root=str(heldout), dataset="synth", split_by="synth", num_workers=0)
    dataset = make_dataset(data, "test", plain.model.vision.img_size, evaluation=False)
    torch.manual_seed(0)
    model = MERES(with_head.model).eval()
    with torch.no_grad():
        model.decoder.head.bias.fill_(3.0)  # a mask on every image: the mask alone finds every target
        model.no_target.mlp[-1].weight.normal_()  # a head that has learned something: t varies,
        t = torch.stack([forward(model, dataset[i]).target_logit[0] for i in range(len(dataset))])
        model.no_target.mlp[-1].bias.sub_(t.median() + 1e-3)  # below 0 (absent) for half the sentences
    headless = MERES(plain.model).eval()
    missing, unexpected = headless.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(name.startswith("no_target.") for name in unexpected)

    rows = presence_ablation.presence_rows(Segmenter(model, with_head, device="cpu", precision="fp32"), dataset, batch_size=5)
    assert len(rows) == len(dataset) and any(not r["present"] for r in rows) and any(r["present"] for r in rows)
    reference = Segmenter(headless, plain, device="cpu", precision="fp32")  # the same decision settings
    for row, i in zip(rows, range(len(dataset))):
        sample = dataset[i]
        probability = torch.sigmoid(F.interpolate(forward(headless, sample).logits.float(), size=sample["image"].shape[-2:],
                                                  mode="bilinear", align_corners=False))[0, 0].numpy()
        expected = reference.decide(sample["sentence"], probability)
        assert row["mask_only"] == {"score": pytest.approx(expected.score, abs=1e-5), "found": expected.found}
    assert all(r["mask_only"]["found"] for r in rows)
    rejected = [not r["with_head"]["found"] for r in rows]
    # p = sigmoid(l) sigmoid(t) with sigmoid(l) ~ 0.95: sigmoid(t) < 0.5 empties the mask, > 0.6 keeps it
    assert all(no for no, r in zip(rejected, rows) if r["head"] < 0.5)
    assert not any(no for no, r in zip(rejected, rows) if r["head"] > 0.6)
    assert 0 < sum(rejected) < len(rows)

    summary = presence_ablation.summarize(rows, reference.decision.presence_threshold)
    assert summary["mask_only"]["absent_rejected"] == 0.0 and summary["mask_only"]["present_found"] == 1.0
    present = [r["present"] for r in rows]
    assert summary["with_head"]["present_found"] == pytest.approx(
        sum(p and not r for p, r in zip(present, rejected)) / sum(present))
