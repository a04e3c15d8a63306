"""The Segmenter's `compiled` backend (AOTInductor): the eager masks, compiled once per model and machine;
and `auto`, which serves eager until a background process has compiled that package.

One compilation of the tiny preset (about a minute on 2 cores, in auto's child); every other check reuses it.
"""
import logging
import os
import shutil
import sys
import threading
import time

import numpy as np
import pytest
import torch

from meres_core import aoti_loader
from meres_core.compiled import COMPILE_AFTER_CALLS, TRIAL_CALLS, BackgroundCompile, CompiledImagePath, package_key
from meres_core.config import load_config
from meres_core.export_onnx import ImagePath
from meres_core.inference import Segmenter
from meres_core.model.meres import MERES

SENTENCES = ["the red circle", "the blue square on the right side of the picture", "circle",
             "the red circle left of the blue square"]  # its landmark phrase is a row of its own


@pytest.fixture(scope="module")
def tiny(make_tiny_with_deviations):
    return make_tiny_with_deviations()


HAS_COMPILER = bool(os.environ.get("CXX") or any(map(shutil.which, ("g++", "clang++", "c++"))))


@pytest.mark.skipif(not HAS_COMPILER, reason="the compiled backend needs a C++ compiler")
def test_auto_serves_eager_then_the_package_compiled_in_the_background(tiny, scene, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MERES_CACHE_DIR", str(tmp_path))
    model, cfg = tiny
    eager = Segmenter(model, cfg, device="cpu", precision="fp32")
    auto = Segmenter(model, cfg, device="cpu", precision="fp32", backend="auto")
    for _ in range(COMPILE_AFTER_CALLS - 1):  # a short-lived process never starts a compilation
        auto.segment(scene, SENTENCES[0])
    assert auto._background._process is None and not any((tmp_path / "compiled").glob("*.pt2"))
    with caplog.at_level(logging.INFO, logger="meres_core.compiled"):
        served_meanwhile = auto.segment(scene, SENTENCES)
        assert auto.image_path_state == "torch (compiling in the background)"
        for a, b in zip(eager.segment(scene, SENTENCES), served_meanwhile):
            np.testing.assert_allclose(a.probability, b.probability, atol=1e-6)  # eager serves while the child compiles
        assert auto._background.wait(timeout=600) is not None
        # It serves, timed against eager on its first calls (test_auto_keeps_eager_when_the_package_is_slower).
        assert auto.image_path_state == "compiled (timing it against torch)"
        assert "switched to the compiled image path" in caplog.text
    # The foreground backend and a later auto start find the child's package: the same key, no compilation.
    again = Segmenter(model, cfg, device="cpu", precision="fp32", backend="compiled")
    assert not again._image_path.compiled_now and again._image_path.path == auto._background.path
    assert (Segmenter(model, cfg, device="cpu", precision="fp32", backend="auto").image_path_state
            == "compiled (timing it against torch)")
    assert [p.name for p in (tmp_path / "compiled").glob("*.pt2")] == [again._image_path.path.name]
    # One package serves any sentence and token count (neither batch is the export example's).
    for sentences in (SENTENCES[:1], SENTENCES):
        for a, b, c in zip(eager.segment(scene, sentences), again.segment(scene, sentences), auto.segment(scene, sentences)):
            np.testing.assert_allclose(a.probability, b.probability, atol=1e-4)
            np.testing.assert_allclose(b.probability, c.probability, atol=1e-4)  # auto alternates while it times
            assert (a.mask == b.mask).all() and a.found == b.found and a.centroid == b.centroid
    # Text features of fewer tokens than the export's minimum ([CLS] [SEP] of an emptied sentence).
    pixels, text, valid = torch.randn(1, 3, 64, 64), torch.randn(2, 2, model.text.dim), torch.ones(2, 2, dtype=torch.bool)
    with torch.inference_mode():
        expected = eager.model.decode(eager.model.encode_image(pixels), text, valid).logits
        torch.testing.assert_close(again._image_path(pixels, text, valid), expected, atol=1e-4, rtol=1e-4)
    # The child built the GIL-releasing loader beside its package: other threads (a node's executor) run meanwhile.
    landmark = torch.full((2,), -1, dtype=torch.long)
    assert glimpses_inside(lambda: again._image_path._runner(pixels, text, valid, landmark)) > 0
    # A start that finds the package but not the loader (an upgrade from before it) runs the package through
    # torch's loader, and builds the loader in the child once the package has won its timing.
    shutil.rmtree(aoti_loader.build_directory())
    monkeypatch.setattr(aoti_loader, "_loaded", None)
    upgraded = BackgroundCompile(auto.model, cfg, auto.dtype, auto.device, compile_after_calls=1)
    assert upgraded.path == auto._background.path and not isinstance(upgraded._runner, aoti_loader.GilFreePackage)
    assert upgraded.runner() is not None and upgraded._process is None  # no compiler beside the timing
    upgraded._trial = None  # as when the package's median beat eager's
    upgraded.runner()
    with caplog.at_level(logging.INFO, logger="meres_core.compiled"):
        assert isinstance(upgraded.wait(timeout=600), aoti_loader.GilFreePackage)
        assert "the package runs with the GIL released" in caplog.text


def glimpses_inside(call, repeats: int = 5) -> int:
    """How often this thread ran while another thread was inside `call`. With a switch interval longer than
    the test, a thread holding the GIL keeps it until it blocks or ends: only a call that releases the GIL
    lets this thread see `inside` set (torch's own package loader holds it, pytorch#197516)."""
    inside, done, glimpses = [False], [False], 0

    def calls():
        try:
            with torch.inference_mode():
                for _ in range(repeats):
                    inside[0] = True
                    call()
                    inside[0] = False
        finally:
            done[0] = True  # a call that raises ends the wait too (its error is printed by threading)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        worker = threading.Thread(target=calls)
        worker.start()
        while not done[0]:
            glimpses += inside[0]
            time.sleep(0.0001)  # lets the worker take the GIL
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    return glimpses


def test_auto_keeps_serving_eager_when_the_background_compilation_fails(tiny, scene, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))  # inherited by the child, as a missing g++
    model, cfg = tiny
    eager = Segmenter(model, cfg, device="cpu", precision="fp32")
    auto = Segmenter(model, cfg, device="cpu", precision="fp32", backend="auto")
    background = BackgroundCompile(auto.model, cfg, auto.dtype, auto.device, directory=tmp_path, compile_after_calls=1)
    auto._background = background
    with caplog.at_level(logging.WARNING, logger="meres_core.compiled"):
        auto.segment(scene, SENTENCES[0])
        assert background.wait(timeout=600) is None
    assert "compiling the image path failed" in caplog.text and background.failed_note.is_file()
    assert background.state.startswith("torch (compiling failed")
    for a, b in zip(eager.segment(scene, SENTENCES), auto.segment(scene, SENTENCES)):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-6)
    # A later start does not try again (the note says how to).
    later = BackgroundCompile(auto.model, cfg, auto.dtype, auto.device, directory=tmp_path, compile_after_calls=1)
    assert later.runner() is None and later._process is None
    assert later.state == f"torch (compiling failed on an earlier start: {later.failed_note})"


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


def test_another_model_config_with_the_same_weights_gets_another_package():
    """Some of the model config is no weight (the extractor's top-k share here; `--set` changes such keys of a
    checkpoint): a model built with another value must not run the first one's package."""
    cpu = torch.device("cpu")
    first = MERES(load_config("tiny").model).eval()
    other = MERES(load_config("tiny", overrides={"model": {"extractor": {"topk_ratio": 0.5}}}).model).eval()
    other.load_state_dict(first.state_dict())
    assert package_key(other, torch.float32, cpu) != package_key(first, torch.float32, cpu)


def test_the_cache_keeps_the_most_recently_used_packages_and_clears_what_killed_compilations_left(tmp_path, monkeypatch):
    from meres_core import compiled

    now = time.time()
    packages = []
    for age_h in range(8):  # image_path_0 newest .. image_path_7 oldest, each with its notes
        package = tmp_path / f"image_path_{age_h}.pt2"
        for path in (package, package.with_suffix(".log"), package.with_suffix(".lock")):
            path.write_bytes(b"x")
            os.utime(path, (now - 3600 * age_h, now - 3600 * age_h))
        packages.append(package)
    (tmp_path / "image_path_9.failed").write_text("compiling failed\n")  # no package: it keeps later starts from retrying
    old_scratch, new_scratch = tmp_path / "tmpold", tmp_path / "tmpnew"
    for folder, age_s in ((old_scratch, 2 * compiled.LEFTOVER_AGE_S), (new_scratch, 60)):
        folder.mkdir()
        (folder / "image_path_x.pt2").write_bytes(b"partial")
        os.utime(folder, (now - age_s, now - age_s))
    handed_over = tmp_path / ".source-abc.pt"
    handed_over.write_bytes(b"weights")
    os.utime(handed_over, (now - 2 * compiled.LEFTOVER_AGE_S,) * 2)
    # A start that loads the oldest package marks it used: it stays, the next oldest goes in its place.
    monkeypatch.setattr(compiled.aoti_loader, "load_package", lambda path: ("runner", path))
    assert compiled.load_cached(packages[7]) == ("runner", packages[7])
    compiled.prune_cache(tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.glob("*.pt2")) == ["image_path_0.pt2", "image_path_1.pt2", "image_path_7.pt2"]
    assert sorted(p.name for p in tmp_path.glob("*.log")) == ["image_path_0.log", "image_path_1.log", "image_path_7.log"]
    assert not list(tmp_path.glob("image_path_5.*")) and (tmp_path / "image_path_9.failed").is_file()
    assert not old_scratch.exists() and new_scratch.is_dir() and not handed_over.exists()


def test_other_model_code_gets_another_package(tiny, tmp_path, monkeypatch):
    """An upgrade or a local edit of the model code never runs a package compiled from the old code."""
    import shutil

    import meres_core.compiled as compiled

    model, _ = tiny
    cpu = torch.device("cpu")
    sources = []
    for path in compiled.COMPILED_SOURCES:
        copy = tmp_path / path.name
        (shutil.copytree if path.is_dir() else shutil.copy)(path, copy)
        sources.append(copy)
    monkeypatch.setattr(compiled, "COMPILED_SOURCES", tuple(sources))
    key = package_key(model, torch.float32, cpu)
    centres = tmp_path / "model" / "instance_centres.py"
    centres.write_text(centres.read_text().replace("PEAK_THRESHOLD = 0.3", "PEAK_THRESHOLD = 0.2"))
    assert package_key(model, torch.float32, cpu) != key


def test_a_failed_compilation_names_the_fallback(tiny, tmp_path, monkeypatch):
    from meres_core import compiled

    def no_compiler(*args, **kwargs):
        raise FileNotFoundError("g++")

    monkeypatch.setattr(compiled, "compile_package", no_compiler)
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler.*backend 'torch'"):
        CompiledImagePath(tiny[0], torch.float32, torch.device("cpu"), directory=tmp_path)


PARENT = """
import os, sys
from meres_core.compiled import BackgroundCompile
from meres_core.inference import Segmenter
segmenter = Segmenter.from_preset("tiny", device="cpu", precision="fp32")
background = BackgroundCompile(segmenter.model, segmenter.cfg, segmenter.dtype, segmenter.device,
                               directory=sys.argv[1], compile_after_calls=1)
background.runner()
print(background._process.pid, flush=True)
os._exit(0)  # gone without a word: a killed node
"""


def test_the_background_compilation_ends_with_its_process(tmp_path):
    """A compilation nobody will load stops, and leaves no copy of the weights behind."""
    import subprocess
    import sys
    import time

    parent = subprocess.run([sys.executable, "-c", PARENT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    child = int(parent.stdout.split()[-1])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child}"):
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{child}") or "Z" in open(f"/proc/{child}/stat").read().split()[2]
    assert not list(tmp_path.glob("*.pt2")) and not list(tmp_path.glob(".source-*"))


def test_auto_serves_eager_when_the_cache_cannot_be_written(tiny, scene, tmp_path, caplog):
    model, cfg = tiny
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    auto = Segmenter(model, cfg, device="cpu", precision="fp32")
    auto._background = BackgroundCompile(auto.model, cfg, auto.dtype, auto.device, directory=blocked / "compiled",
                                         compile_after_calls=1)
    with caplog.at_level(logging.WARNING, logger="meres_core.compiled"):
        first, second = auto.segment(scene, SENTENCES[0]), auto.segment(scene, SENTENCES[0])
    assert first[0].found == second[0].found and "could not start compiling" in caplog.text
    assert auto.image_path_state.startswith("torch (no compilation: ") and auto._background._process is None


def test_auto_removes_a_package_that_does_not_load_and_serves_eager(tiny, scene, tmp_path, caplog):
    model, cfg = tiny
    eager = Segmenter(model, cfg, device="cpu", precision="fp32")
    damaged = tmp_path / f"image_path_{package_key(eager.model, eager.dtype, eager.device)}.pt2"
    damaged.write_bytes(b"not a package")
    with caplog.at_level(logging.WARNING, logger="meres_core.compiled"):
        background = BackgroundCompile(eager.model, cfg, eager.dtype, eager.device, directory=tmp_path)
    assert "could not load" in caplog.text and not damaged.exists()
    assert background.runner() is None and background.state == f"torch (compiles after {COMPILE_AFTER_CALLS} calls)"


def test_a_compilation_that_dies_is_not_started_again_by_the_same_process(tiny, tmp_path):
    model, cfg = tiny
    background = BackgroundCompile(model, cfg, torch.float32, torch.device("cpu"), directory=tmp_path,
                                   compile_after_calls=1)
    assert background.runner() is None and background._process is not None
    background._process.kill()  # as the OOM killer would
    assert background.wait(timeout=60) is None
    assert background.runner() is None and background.runner() is None and background._process is None
    assert background.state == "torch (compiling failed: exit code -9)"
    assert not list(tmp_path.glob(".source-*"))  # the weights it was handed are not left behind


def test_auto_keeps_eager_when_the_package_is_slower(tiny, scene, tmp_path, caplog):
    """A package that runs slower than eager here (as the `paper` preset's did on CPU) is dropped after the
    timed calls, and later starts neither load nor compile it. The package here is the eager image path
    plus 20 ms per call: no compilation, the same masks, reliably slower."""
    model, cfg = tiny
    auto = Segmenter(model, cfg, device="cpu", precision="fp32")
    eager_path, calls = ImagePath(auto.model), []

    def slower_package(pixels, text, valid, landmark_index):
        calls.append(len(text))
        time.sleep(0.02)
        return eager_path(pixels, text, valid, landmark_index)

    background = BackgroundCompile(auto.model, cfg, auto.dtype, auto.device, directory=tmp_path, compile_after_calls=1)
    background._use(slower_package)
    auto._background = background
    assert auto.image_path_state == "compiled (timing it against torch)"
    with caplog.at_level(logging.WARNING, logger="meres_core.compiled"):
        for _ in range(2 * (TRIAL_CALLS + 1)):
            auto.segment(scene, SENTENCES[0])
    assert len(calls) == TRIAL_CALLS + 1  # the two paths alternated
    assert auto.image_path_state.startswith("torch (compiled was slower here: ") and "was slower" in caplog.text
    assert background.slower_note.is_file() and background.runner() is None and background._process is None
    auto.segment(scene, SENTENCES[0])
    assert len(calls) == TRIAL_CALLS + 1  # eager serves from now on
    background.path.write_bytes(b"a package")  # as the one that was timed: a later start neither loads nor compiles it
    later = BackgroundCompile(auto.model, cfg, auto.dtype, auto.device, directory=tmp_path, compile_after_calls=1)
    assert later.runner() is None and later._process is None and background.path.is_file()
    assert later.state == f"torch (compiled was slower here: {background.slower_note.read_text().strip()})"


def test_a_damaged_gil_releasing_loader_leaves_packages_to_torchs_loader(tmp_path, monkeypatch, caplog):
    """A library cut short (a build killed while linking) is not imported; packages still load, GIL held."""
    monkeypatch.setenv("MERES_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(aoti_loader, "_loaded", None)
    aoti_loader.library().parent.mkdir(parents=True)
    aoti_loader.library().write_bytes(b"\x7fELF cut short")
    loaded = []
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path: loaded.append(path) or "torch's runner")
    with caplog.at_level(logging.WARNING, logger="meres_core.aoti_loader"):
        assert aoti_loader.load_package(tmp_path / "package.pt2") == "torch's runner"
    assert loaded == [str(tmp_path / "package.pt2")] and "could not load the GIL-releasing package loader" in caplog.text
