import logging
import os
import tempfile

# Tests never reach a model hub: offline fallbacks are immediate instead of retried.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Compiled packages (backend auto / compiled, meres_core/compiled.py) of the tests' random models go to a
# folder of this run, neither read from nor left in the user's cache; node processes inherit it.
os.environ.setdefault("MERES_CACHE_DIR", tempfile.mkdtemp(prefix="meres-test-cache-"))

import numpy as np
import pytest
import torch

from meres_core.config import load_config
from meres_core.model.meres import MERES

# One thread per test process: the suite runs on 2 cores beside other work.
torch.set_num_threads(1)
logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture
def tiny_cfg():
    return load_config("tiny")


@pytest.fixture
def tiny_model(tiny_cfg):
    torch.manual_seed(0)
    return MERES(tiny_cfg.model)


@pytest.fixture(scope="session")
def make_tiny_with_deviations():
    """A factory of tiny models with the demo model's deviations (priors, rank pick, centre heatmap,
    relation pick, no-target head) and non-zero weights in them so that they act: what the ONNX and
    compiled backends must reproduce."""
    def make():
        cfg = load_config("tiny", overrides={"model": {"coord_features": True, "sentence_position_prior": True,
                                                       "candidate_rank_prior": True, "candidate_rank_pick": True,
                                                       "candidate_centres": True, "relation_pick": True,
                                                       "no_target_head": True}})
        torch.manual_seed(0)
        model = MERES(cfg.model).eval()
        with torch.no_grad():
            model.position_prior.proj.weight.normal_(0.0, 0.3)
            model.candidate_rank.proj.weight.normal_(0.0, 0.3)
            model.candidate_rank.pick.pair.weight.normal_(0.0, 0.3)
            model.candidate_rank.pick.gain.weight.normal_(0.0, 0.3)
            model.no_target.mlp[-1].weight.normal_(0.0, 0.3)
            model.no_target.mlp[-1].bias.zero_()
            # Several centre peaks, so that the relation pick acts (8 peaks on random
            # pixels); logits within +-20, since sigmoid saturating to 1.0 ties peaks, which torch and
            # onnxruntime order differently (test_onnx checks that the pick acts). Drawn from a generator of
            # their own, so that they do not depend on the draws above.
            generator = torch.Generator().manual_seed(1)
            model.centre_head.net[0].weight.normal_(0.0, 0.5, generator=generator)
            model.centre_head.net[-1].weight.normal_(0.0, 0.5, generator=generator)
            model.centre_head.net[-1].bias.zero_()
            model.relation_pick.relation.weight.normal_(0.0, 0.3, generator=generator)
            model.relation_pick.gain.weight.normal_(0.0, 0.1, generator=generator)
        return model, cfg

    return make


@pytest.fixture
def scene():
    """A small RGB image with a red disc on the left and a blue square on the right."""
    import cv2

    img = np.full((96, 128, 3), 30, np.uint8)
    cv2.circle(img, (32, 48), 18, (220, 30, 30), -1)
    cv2.rectangle(img, (80, 30), (112, 66), (30, 60, 220), -1)
    return img


@pytest.fixture
def warm_started(tmp_path, tiny_cfg, scene):
    """make(cfg, sentences) -> (the tiny model, a model of `cfg` warm-started from its checkpoint as
    the train config's `init_from` does, the inputs (image, ids, attention) for `sentences` on `scene`)."""
    from meres_core.checkpoint import save_checkpoint
    from meres_core.data.transforms import preprocess_image
    from training import train

    def make(cfg, sentences):
        torch.manual_seed(0)
        old = MERES(tiny_cfg.model).eval()
        save_checkpoint(tmp_path / "old.pt", old, tiny_cfg)
        torch.manual_seed(1)
        new = MERES(cfg.model).eval()
        train.warm_start(new, str(tmp_path / "old.pt"))
        image = preprocess_image(scene, tiny_cfg.model.vision.img_size)[None]
        return old, new, (image, *new.tokenize(sentences))

    return make


@pytest.fixture(scope="session")
def heldout(tmp_path_factory):
    """Six scenes of the held-out renderer (training/heldout_scenes), 120x160, every sentence kind."""
    from training import heldout_scenes

    root = tmp_path_factory.mktemp("heldout")
    heldout_scenes.main(["--out", str(root), "--images", "6", "--seed", "2", "--size", "120x160"])
    return root
