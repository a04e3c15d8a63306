"""ONNX export of the image path, onnxruntime agreement, and the Segmenter's onnx backend (tiny preset)."""
import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from meres_core.export_onnx import ImagePath, OnnxImagePath, export  # noqa: E402
from meres_core.inference import Segmenter  # noqa: E402

SENTENCES = ["the red circle", "the blue square on the right side of the picture", "circle",
             "the red circle left of the blue square"]  # its landmark phrase is a row of its own


@pytest.fixture(scope="module")
def exported(tmp_path_factory, make_tiny_with_deviations):
    model, cfg = make_tiny_with_deviations()
    with torch.no_grad():
        # The rank prior and the relation pick act only on candidates (p > 0.5) with two or more centre
        # peaks: make sure this random model has them.
        text, valid = model.encode_text(*model.tokenize(["the second circle from the left", "the square"]))
        out, (_, fine) = model._guide(model.encode_image(torch.randn(1, 3, 64, 64)), text, valid)
        centre_logits = model.centre_head(fine)
        assert (model.candidate_rank(out.logits, text, valid, centre_logits)[0] != 0).any()
        landmark = out.logits[[1, 1]]  # "the square" as both sentences' landmark
        assert (model.relation_pick(out.logits, centre_logits, landmark, torch.tensor([True, True]), text, valid)[0]
                != 0).any()
    path = export(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", {"source": "test"})
    return model, cfg, path


def test_onnxruntime_agrees_with_eager_for_any_sentence_and_token_count(exported):
    model, _, path = exported
    session = OnnxImagePath(path, model, torch.device("cpu"))
    assert session.metadata["source"] == "test"
    pixels = torch.randn(1, 3, 64, 64)
    for sentences, tokens in ((1, 3), (5, 11)):  # neither is the export example's (2, 6)
        text = torch.randn(sentences, tokens, model.text.dim)
        valid = torch.ones(sentences, tokens, dtype=torch.bool)
        valid[-1, 2:] = False
        landmark_index = torch.full((sentences,), -1)
        landmark_index[0] = sentences - 1  # the last row is the first one's landmark phrase
        with torch.inference_mode():
            eager = ImagePath(model)(pixels, text, valid, landmark_index)
        torch.testing.assert_close(session(pixels, text, valid, landmark_index), eager, atol=1e-4, rtol=1e-4)


def test_segmenter_onnx_backend_gives_the_torch_masks(exported, scene):
    model, cfg, path = exported
    eager = Segmenter(model, cfg, device="cpu", precision="fp32").segment(scene, SENTENCES)
    onnx = Segmenter(model, cfg, device="cpu", precision="fp32", backend="onnx", onnx_path=path)
    assert onnx.backend == "onnx"
    for a, b in zip(eager, onnx.segment(scene, SENTENCES)):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-4)
        assert (a.mask == b.mask).all() and a.found == b.found


def test_backend_comes_from_the_config(exported, scene):
    model, cfg, path = exported
    cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, backend="onnx", onnx_path=str(path)))
    assert Segmenter(model, cfg, device="cpu")._image_path is not None


def test_a_file_exported_for_another_model_is_refused(exported):
    from meres_core.config import load_config
    from meres_core.model.meres import MERES

    _, _, path = exported
    other = MERES(load_config("tiny", overrides={"model": {"vision": {"img_size": 96}}}).model)
    with pytest.raises(ValueError, match="another model"):
        OnnxImagePath(path, other, torch.device("cpu"))
    with pytest.raises(ValueError, match="backend"):
        Segmenter(other, load_config("tiny"), device="cpu", backend="tensorrt")


def test_loading_prints_nothing_on_stdout(exported, capfd):
    """meres-segment writes JSON lines on stdout: onnxruntime's optimizer must not print there."""
    from meres_core.export_onnx import fused_graph

    capfd.readouterr()
    fused_graph(exported[2], torch.device("cpu"))
    assert capfd.readouterr().out == ""


def test_threads_spin_only_while_a_run_lasts(exported):
    """Spinning between kernels speeds a run; spinning after it slowed what ran next in the process."""
    model, _, path = exported
    options = OnnxImagePath(path, model, torch.device("cpu")).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
