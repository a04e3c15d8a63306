import logging
import os

# Tests never reach a model hub: offline fallbacks are immediate instead of retried.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


@pytest.fixture
def scene():
    """A small RGB image with a red disc on the left and a blue square on the right."""
    import cv2

    img = np.full((96, 128, 3), 30, np.uint8)
    cv2.circle(img, (32, 48), 18, (220, 30, 30), -1)
    cv2.rectangle(img, (80, 30), (112, 66), (30, 60, 220), -1)
    return img
