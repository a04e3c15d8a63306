"""Segmenter: batching over sentences, text cache, precision, results, ambiguity."""
import json

import numpy as np
import pytest
import torch

from meres_core.inference import Decision, Segmenter

SENTENCES = ["the red circle", "the blue square on the right side of the picture", "circle"]


@pytest.fixture
def segmenter(tiny_model, tiny_cfg):
    return Segmenter(tiny_model, tiny_cfg, device="cpu", precision="fp32")


def test_batched_equals_one_by_one(segmenter, scene):
    batched = segmenter.segment(scene, SENTENCES)
    segmenter._text_cache.clear()
    for sentence, result in zip(SENTENCES, batched):
        single = segmenter.segment(scene, sentence)[0]
        assert single.expression == result.expression == sentence
        np.testing.assert_allclose(single.probability, result.probability, atol=1e-5)


def test_results_have_input_resolution_and_consistent_geometry(segmenter, scene):
    for result in segmenter.segment(scene, SENTENCES, Decision(mask_threshold=0.5, presence_threshold=0.0)):
        assert result.mask.shape == result.probability.shape == scene.shape[:2]
        assert result.mask.dtype == bool and result.probability.dtype == np.float32
        assert set(result.timings_ms) == {"text", "vision", "decode", "post", "total"}
        if result.found:
            assert result.score == pytest.approx(result.probability[result.mask].mean())
            x0, y0, x1, y1 = result.bbox
            assert result.mask[y0:y1 + 1, x0:x1 + 1].any()


def test_centroid_is_on_the_most_probable_part_of_the_mask(segmenter):
    probability = np.zeros((40, 60), np.float32)
    probability[5:15, 5:15] = 0.9  # confident blob, 100 px
    probability[20:35, 30:55] = 0.6  # larger but less probable blob: 375 px x 0.6 = 225 > 90
    probability[0:2, 58:60] = 0.99  # tiny speck
    segmenter.decision = Decision(mask_threshold=0.5, presence_threshold=0.0)
    result = segmenter.decide("x", probability)
    assert result.bbox == (30, 20, 54, 34)
    assert result.centroid == pytest.approx((42.0, 27.0))
    assert result.part.sum() == 375 and result.part[20:35, 30:55].all()
    assert result.mask.sum() == 100 + 375 + 4, "the mask itself keeps every part"
    single = np.zeros_like(probability)
    single[5:15, 5:15] = 0.9
    alone = segmenter.decide("x", single)
    assert (alone.bbox, alone.centroid) == ((5, 5, 14, 14), (9.5, 9.5))
    assert np.array_equal(alone.part, alone.mask)


def two_blobs() -> np.ndarray:
    """Blob A: 10 x 10 px at 0.9 (mass 90); blob B: 8 x 10 px at 0.7 (mass 56 = 0.622 x 90); a 5 x 5 speck
    at 0.8 (mass 20 = 0.222 x 90)."""
    probability = np.zeros((40, 60), np.float32)
    probability[5:15, 5:15] = 0.9
    probability[20:30, 40:48] = 0.7
    probability[32:37, 10:15] = 0.8
    return probability


def test_two_parts_of_comparable_mass_are_ambiguous_with_both_candidates(segmenter):
    result = segmenter.decide("x", two_blobs(), Decision(mask_threshold=0.5, presence_threshold=0.0,
                                                          ambiguity_ratio=0.5))
    assert result.found and result.ambiguous
    first, second = result.candidates  # the speck (0.222 < 0.5) is no candidate
    assert first.bbox == (5, 5, 14, 14) and first.centroid == pytest.approx((9.5, 9.5))
    assert first.score == pytest.approx(0.9) and first.mass == pytest.approx(90.0, rel=1e-5)
    assert second.bbox == (40, 20, 47, 29) and second.centroid == pytest.approx((43.5, 24.5))
    assert second.score == pytest.approx(0.7) and second.mass == pytest.approx(56.0, rel=1e-5)
    # The target stays the most massive part; the candidates are what an HRI system asks about.
    assert (result.bbox, result.centroid) == (first.bbox, first.centroid) and result.part.sum() == 100
    summary = json.loads(json.dumps(result.summary()))
    assert summary["ambiguous"] is True
    assert summary["candidates"] == [{"bbox": [5, 5, 14, 14], "centroid": [9.5, 9.5], "score": 0.9},
                                     {"bbox": [40, 20, 47, 29], "centroid": [43.5, 24.5], "score": 0.7}]


def test_ambiguity_ratio_is_the_boundary(segmenter):
    # B holds 0.622 of A's mass: a candidate at ratio 0.62, not at 0.63.
    at = segmenter.decide("x", two_blobs(), Decision(0.5, 0.0, ambiguity_ratio=0.62))
    above = segmenter.decide("x", two_blobs(), Decision(0.5, 0.0, ambiguity_ratio=0.63))
    assert at.ambiguous and len(at.candidates) == 2
    assert not above.ambiguous and [c.bbox for c in above.candidates] == [(5, 5, 14, 14)]
    # ratio 0.2 lets the speck in (0.222), ranked by mass: A, B, speck.
    low = segmenter.decide("x", two_blobs(), Decision(0.5, 0.0, ambiguity_ratio=0.2))
    assert [c.bbox for c in low.candidates] == [(5, 5, 14, 14), (40, 20, 47, 29), (10, 32, 14, 36)]


def test_mass_not_area_or_peak_decides(segmenter):
    probability = np.zeros((40, 60), np.float32)
    probability[0:20, 0:20] = 0.52  # faint smear: 400 px, mass 208
    probability[30:40, 50:60] = 0.99  # confident: 100 px, mass 99 = 0.476 x 208
    result = segmenter.decide("x", probability, Decision(0.5, 0.0, ambiguity_ratio=0.5))
    assert not result.ambiguous and result.bbox == (0, 0, 19, 19)
    # Diagonal neighbours are one part (8-connectivity): one object, not two.
    touching = np.zeros((20, 20), np.float32)
    touching[0:5, 0:5] = 0.9
    touching[5:10, 5:10] = 0.9
    joined = segmenter.decide("x", touching, Decision(0.5, 0.0))
    assert not joined.ambiguous and joined.bbox == (0, 0, 9, 9)


def test_absent_result_has_no_candidates(segmenter):
    result = segmenter.decide("x", two_blobs(), Decision(0.5, presence_threshold=0.95))
    assert not result.found and not result.ambiguous and result.candidates == []
    assert result.summary()["candidates"] == []


def test_two_identical_objects_give_two_candidates_at_their_centres(segmenter):
    """A scene with two identical discs, and a probability map that fits both equally ("the red disc")."""
    import cv2

    probability = np.zeros((96, 128), np.float32)
    cv2.circle(probability, (32, 48), 12, 0.8, -1)
    cv2.circle(probability, (96, 48), 12, 0.8, -1)
    result = segmenter.decide("the red disc", probability)  # the model's own ambiguity_ratio
    assert result.ambiguous
    assert sorted(c.centroid for c in result.candidates) == [pytest.approx((32.0, 48.0)), pytest.approx((96.0, 48.0))]
    assert result.candidates[0].mass == pytest.approx(result.candidates[1].mass)
    assert [c.bbox for c in sorted(result.candidates, key=lambda c: c.centroid)] == [(20, 36, 44, 60), (84, 36, 108, 60)]


def test_ambiguity_ratio_comes_from_the_config(tiny_model, tiny_cfg):
    from dataclasses import replace

    from meres_core.config import override, validate

    strict = replace(tiny_cfg, inference=replace(tiny_cfg.inference, ambiguity_ratio=0.7))
    assert Segmenter(tiny_model, strict, device="cpu").decision.ambiguity_ratio == 0.7
    assert not Segmenter(tiny_model, strict, device="cpu").decide("x", two_blobs()).ambiguous
    with pytest.raises(ValueError, match="ambiguity_ratio"):
        validate(override(tiny_cfg, {"inference": {"ambiguity_ratio": 0.0}}))


def test_absent_when_presence_below_threshold(segmenter, scene):
    result = segmenter.segment(scene, "the red circle", Decision(mask_threshold=0.5, presence_threshold=1.01))[0]
    assert not result.found and result.centroid is None and result.bbox is None


def test_decision_per_call_leaves_the_segmenter_alone(segmenter, scene, tiny_cfg):
    """One owner of the thresholds: the model's InferenceConfig; a caller passes others per call."""
    assert segmenter.decision == Decision(tiny_cfg.inference.mask_threshold, tiny_cfg.inference.presence_threshold)
    model_default = segmenter.decision
    everything = Decision(mask_threshold=0.0, presence_threshold=0.0)
    [result] = segmenter.segment(scene, "the red circle", decision=everything)
    assert result.mask.all() and result.found
    assert segmenter.decision == model_default, "a per-call decision must not change the segmenter"
    again = segmenter.decide("the red circle", result.probability)  # the two-argument call: the model's own
    np.testing.assert_array_equal(again.mask, result.probability > model_default.mask_threshold)
    with pytest.raises(AttributeError):
        everything.mask_threshold = 0.3  # frozen: swapped whole, never half-changed under a reader


def test_text_encoder_runs_once_per_sentence(segmenter, scene, monkeypatch):
    calls = []
    real = segmenter.model.encode_text

    def counting(ids, attention):
        calls.append(ids.shape[0])
        return real(ids, attention)

    monkeypatch.setattr(segmenter.model, "encode_text", counting)
    segmenter.segment(scene, SENTENCES)
    segmenter.segment(scene[::-1].copy(), SENTENCES)  # new frame, same sentences
    segmenter.segment(scene, ["the red circle", "  the   red circle "])  # same after normalization
    assert calls == [3]


def test_text_cache_is_bounded(segmenter, scene):
    segmenter.cache_size = 2
    for sentence in SENTENCES:
        segmenter.segment(scene, sentence)
    assert list(segmenter._text_cache) == SENTENCES[1:]


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                 np.zeros((0, 10, 3), np.uint8), "not an image"])
def test_bad_images_are_rejected_clearly(segmenter, bad):
    with pytest.raises(ValueError, match="image"):
        segmenter.segment(bad, "the red circle")


@pytest.mark.parametrize("bad", ["", "   ", []])
def test_empty_expressions_are_rejected(segmenter, scene, bad):
    with pytest.raises(ValueError, match="non-empty"):
        segmenter.segment(scene, bad)


def test_huge_and_unicode_expressions_are_truncated_not_fatal(segmenter, scene):
    results = segmenter.segment(scene, ["red " * 5000, "la tasse rouge à gauche 🍵 赤いカップ"])
    assert all(r.probability.shape == scene.shape[:2] for r in results)


def test_bf16_on_cpu_agrees_with_fp32(tiny_model, tiny_cfg, scene):
    fp32 = Segmenter(tiny_model, tiny_cfg, device="cpu", precision="fp32").segment(scene, SENTENCES)
    bf16 = Segmenter(tiny_model, tiny_cfg, device="cpu", precision="bf16").segment(scene, SENTENCES)
    for a, b in zip(fp32, bf16):
        # bf16 keeps 8 mantissa bits: probabilities agree to a few hundredths
        np.testing.assert_allclose(a.probability, b.probability, atol=0.03)


def test_fp16_on_cpu_falls_back_to_fp32(tiny_model, tiny_cfg):
    assert Segmenter(tiny_model, tiny_cfg, device="cpu", precision="fp16").dtype == torch.float32
