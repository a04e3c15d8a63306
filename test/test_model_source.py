"""One model-source command line: meres-segment, meres-replay, meres-demo and the node agree."""
import os
import subprocess
import sys

import pytest

from meres_core.cli import parse_args as segment_args
from meres_core.inference import Decision
from meres_core.model_source import DEFAULT, ModelSource, decision_settings, with_settings
from meres_ros.demo import build_parser as demo_parser
from meres_ros.interface import PARAMETERS
from meres_ros.replay import build_parser as replay_parser

REQUIRED = {
    "meres-segment": (segment_args, ["--image", "x.png", "--text", "a"]),
    "meres-replay": (lambda argv: replay_parser().parse_args(argv), ["input", "-e", "a"]),
    "meres-demo": (lambda argv: demo_parser().parse_args(argv), []),
}


@pytest.mark.parametrize("command", REQUIRED)
def test_every_command_has_the_same_model_options_and_defaults(command):
    parse, required = REQUIRED[command]
    args = parse(required)
    assert ModelSource.from_args(args) == DEFAULT == ModelSource(checkpoint="demo", device="auto", precision="auto")
    assert decision_settings(args) == {"mask_threshold": None, "presence_threshold": None, "ambiguity_ratio": None}
    given = parse([*required, "--preset", "tiny", "--seed", "3", "--device", "cpu", "--precision", "fp32",
                   "--backend", "compiled", "--ambiguity-ratio", "0.3"])
    assert ModelSource.from_args(given) == ModelSource(preset="tiny", seed=3, device="cpu", precision="fp32",
                                                       backend="compiled")
    assert decision_settings(given)["ambiguity_ratio"] == 0.3
    with pytest.raises(SystemExit):  # one source or the other
        parse([*required, "--checkpoint", "a.pt", "--preset", "tiny"])
    with pytest.raises(SystemExit):
        parse([*required, "--preset", "no_such_preset"])


def test_node_parameters_default_to_the_same_source():
    assert {name: PARAMETERS[name][0] for name in DEFAULT.as_parameters()} == DEFAULT.as_parameters()


def test_decision_settings_replace_only_what_is_given_and_are_checked():
    model = Decision(0.5, 0.5, 0.5)
    assert with_settings(model, mask_threshold=None, ambiguity_ratio=0.25) == Decision(0.5, 0.5, 0.25)
    for bad in ({"ambiguity_ratio": 0.0}, {"mask_threshold": 1.5}, {"presence_threshold": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            with_settings(model, **bad)


def test_threads_size_torch_before_the_model_is_built():
    import torch

    args = segment_args(["--image", "x.png", "--text", "a", "--threads", "2"])
    assert ModelSource.from_args(args).threads == 2
    assert PARAMETERS["threads"][0] == DEFAULT.threads == 0
    before = torch.get_num_threads()
    try:
        ModelSource(preset="tiny", device="cpu", precision="fp32", threads=2).load()
        assert torch.get_num_threads() == 2
        ModelSource(preset="tiny", device="cpu", precision="fp32").load()  # 0: left as the process has it
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        ModelSource(preset="tiny", threads=-1).load()


def test_auto_precision_is_bf16_on_a_cpu_with_bf16_units(monkeypatch):
    import torch

    from meres_core import device

    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_bf16_units", lambda: True)
    assert device.select_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_bf16_units", lambda: False)
    assert device.select_dtype("auto", cpu) == torch.float32
    assert device.select_dtype("fp32", cpu) == torch.float32  # asked for: kept


LOAD_THEN_RUN_HERE = """
import os, time, torch
from meres_core.model_source import ModelSource

def settled_thread_count():  # a finished thread's OpenMP pool exits soon after it
    last, since = len(os.listdir("/proc/self/task")), time.monotonic()
    while time.monotonic() - since < 0.5:
        time.sleep(0.05)
        now = len(os.listdir("/proc/self/task"))
        if now != last:
            last, since = now, time.monotonic()
    return last

ModelSource(checkpoint="demo", device="cpu", precision="bf16", threads=2).load()
loaded = settled_thread_count()
torch.ones(1_000_000).add_(1)  # a parallel region in this thread
print(settled_thread_count() - loaded)
"""


def test_loading_leaves_no_openmp_pool_in_the_calling_thread():
    """meres_node loads the model in its executor thread and runs it in its worker: a pool left in the
    loading thread made every frame 1.6-1.8x slower (device.in_passing_thread). Here the calling thread's
    first parallel region after load() must start its own pool: one new thread at two threads."""
    run = subprocess.run([sys.executable, "-c", LOAD_THEN_RUN_HERE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.split()[-1]) == 1
