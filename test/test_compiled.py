"""The Segmenter's `compiled` backend (AOTInductor): the eager masks, compiled once per model and machine.

One compilation of the tiny preset (about a minute on 2 cores); every other check reuses it.
"""
import os
import shutil

import numpy as np
import pytest
import torch

from meres_core.compiled import CompiledImagePath, package_key
from meres_core.inference import Segmenter
from meres_core.model.meres import MERES

SENTENCES = ["the red circle", "the blue square on the right side of the picture", "circle"]


@pytest.fixture(scope="module")
def tiny(make_tiny_with_deviations):
    return make_tiny_with_deviations()


@pytest.mark.skipif(not (os.environ.get("CXX") or any(map(shutil.which, ("g++", "clang++", "c++")))),
                    reason="the compiled backend needs a C++ compiler")
def test_compiled_backend_gives_the_eager_masks_and_compiles_once(tiny, scene, tmp_path, monkeypatch):
    monkeypatch.setenv("MERES_CACHE_DIR", str(tmp_path))
    model, cfg = tiny
    eager = Segmenter(model, cfg, device="cpu", precision="fp32")
    first = Segmenter(model, cfg, device="cpu", precision="fp32", backend="compiled")
    assert first._image_path.compiled_now
    again = Segmenter(model, cfg, device="cpu", precision="fp32", backend="compiled")
    assert not again._image_path.compiled_now and again._image_path.path == first._image_path.path
    assert [p.name for p in (tmp_path / "compiled").iterdir()] == [first._image_path.path.name]
    # One package serves any sentence and token count (neither batch is the export example's).
    for sentences in (SENTENCES[:1], SENTENCES):
        for a, b in zip(eager.segment(scene, sentences), again.segment(scene, sentences)):
            np.testing.assert_allclose(a.probability, b.probability, atol=1e-4)
            assert (a.mask == b.mask).all() and a.found == b.found and a.centroid == b.centroid
    # Text features of fewer tokens than the export's minimum ([CLS] [SEP] of an emptied sentence).
    pixels, text, valid = torch.randn(1, 3, 64, 64), torch.randn(2, 2, model.text.dim), torch.ones(2, 2, dtype=torch.bool)
    with torch.inference_mode():
        expected = eager.model.decode(eager.model.encode_image(pixels), text, valid).logits
        torch.testing.assert_close(again._image_path(pixels, text, valid), expected, atol=1e-4, rtol=1e-4)


def test_another_model_or_precision_gets_another_package(tiny):
    model, _ = tiny
    cpu = torch.device("cpu")
    key = package_key(model, torch.float32, cpu)
    assert package_key(model, torch.bfloat16, cpu) != key
    changed = MERES(model.cfg).eval()
    changed.load_state_dict(model.state_dict())
    assert package_key(changed, torch.float32, cpu) == key
    with torch.no_grad():
        changed.decoder.head.bias.add_(1e-3)  # a retrained checkpoint never runs an old package
    assert package_key(changed, torch.float32, cpu) != key


def test_a_failed_compilation_names_the_fallback(tiny, tmp_path, monkeypatch):
    from meres_core import compiled

    def no_compiler(*args, **kwargs):
        raise FileNotFoundError("g++")

    monkeypatch.setattr(compiled, "compile_package", no_compiler)
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler.*backend 'torch'"):
        CompiledImagePath(tiny[0], torch.float32, torch.device("cpu"), directory=tmp_path)
