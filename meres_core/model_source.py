"""Where the model comes from and how it decides: one definition for every command and the node.

`meres-segment`, `meres-replay` and `meres-demo` declare the same options with the same
defaults (`add_model_arguments`, `add_decision_arguments`), and `meres_node`'s parameters
of the same names default to the same values (meres_ros/interface.py reads them from here):

    --checkpoint PATH|demo    default: demo, the shipped demo model
    --preset NAME             random (or pretrained-backbone) weights of a preset instead
    --seed N                  seeds those weights, so two processes build the same model
    --device auto|cpu|cuda[:N]
    --precision auto|fp16|bf16|fp32
    --threads N               CPU threads of the model (0: automatic)
    --backend auto|torch|onnx|compiled
                              how the image path runs (default: auto, the compiled package once a
                              background process has compiled it, eager until then)
    --mask-threshold / --presence-threshold / --ambiguity-ratio
                              default: the model's own (the inference section of its config)

Imports no torch until a model is loaded, so the node can declare its parameters first.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .config import BACKENDS, available_presets

if TYPE_CHECKING:
    from .inference import Decision, Segmenter

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
DECISION_SETTINGS = ("mask_threshold", "presence_threshold", "ambiguity_ratio")


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint (path or 'demo'), or a preset with its initial weights; the device and precision to run on."""

    checkpoint: str = "demo"
    preset: str = ""  # when set: this preset's initial weights (tests, bring-up), `checkpoint` ignored
    seed: int = 0  # seeds the initial weights of `preset`
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0  # CPU threads of the model's kernels (torch intra-op); 0: automatic (cpu_threads)
    # auto | torch | onnx | compiled; "": the model's own (inference.backend, torch unless set). auto, not the
    # model's own eager default: a long-running process gets the compiled speed without a first start's wait.
    backend: str = "auto"

    def describe(self) -> str:
        origin = f"preset {self.preset!r} (random weights, seed {self.seed})" if self.preset else f"checkpoint {self.checkpoint!r}"
        threads = f" threads={self.threads}" if self.threads else ""
        backend = f" backend={self.backend}" if self.backend else ""
        return f"{origin} on device={self.device} precision={self.precision}{threads}{backend}"

    def load(self) -> "Segmenter":
        """The model, with its own decision settings (callers pass others per call).
        Raises CheckpointError, ValueError (unknown preset or device), OSError."""
        from .device import in_passing_thread, set_cpu_threads
        from .inference import Segmenter

        set_cpu_threads(self.threads)  # process-wide, so before the model is built and run
        options = {"device": self.device, "precision": self.precision, "backend": self.backend or None}

        def build() -> "Segmenter":
            if self.preset:
                return Segmenter.from_preset(self.preset, seed=self.seed, **options)
            return Segmenter.from_checkpoint(self.checkpoint, **options)

        return in_passing_thread(build)  # whichever thread runs the model then (in_passing_thread says why)

    def as_parameters(self) -> dict:
        """The same source as meres_node parameters."""
        return dataclasses.asdict(self)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ModelSource":
        return cls(checkpoint=args.checkpoint, preset=args.preset, seed=args.seed, device=args.device,
                   precision=args.precision, threads=args.threads, backend=args.backend)


DEFAULT = ModelSource()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default=DEFAULT.checkpoint,
                        help=f"checkpoint file, or 'demo' for the shipped demo model (default: {DEFAULT.checkpoint})")
    source.add_argument("--preset", default=DEFAULT.preset, choices=["", *available_presets()], metavar="PRESET",
                        help=f"build this preset with its initial weights instead ({', '.join(available_presets())})")
    group.add_argument("--seed", type=int, default=DEFAULT.seed,
                       help=f"seed of --preset's initial weights (default: {DEFAULT.seed})")
    group.add_argument("--device", default=DEFAULT.device, help=f"auto, cpu, cuda or cuda:N (default: {DEFAULT.device})")
    group.add_argument("--precision", default=DEFAULT.precision, choices=PRECISIONS,
                       help=f"auto: fp16 on CUDA; bf16 on a CPU with bf16 units (AMX, AVX512-BF16), else fp32 (default: {DEFAULT.precision})")
    group.add_argument("--threads", type=int, default=DEFAULT.threads,
                       help="CPU threads of the model's kernels; 0: automatic (default: 0)")
    group.add_argument("--backend", default=DEFAULT.backend, choices=["", *BACKENDS], metavar="BACKEND",
                       help="how the image path runs: torch (eager), onnx (onnxruntime), compiled (AOTInductor, "
                            "compiled on the first start for this model and machine, then cached), auto (the "
                            "compiled package when cached; eager while a background process compiles it, CPU only) "
                            "or '' (the model's own: torch unless its config says otherwise); default: auto")


def add_decision_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decision (default: the model's own, from the inference section of its config)")
    group.add_argument("--mask-threshold", type=float, help="a pixel belongs to the mask above this probability")
    group.add_argument("--presence-threshold", type=float, help="the target is found at or above this presence score")
    group.add_argument("--ambiguity-ratio", type=float,
                       help="ambiguous when a second separated part holds this fraction of the first's mass")


def decision_settings(args: argparse.Namespace) -> dict[str, Optional[float]]:
    """The decision settings given on the command line (None: the model's own)."""
    return {name: getattr(args, name) for name in DECISION_SETTINGS}


def with_settings(decision: "Decision", **settings: Optional[float]) -> "Decision":
    """`decision` with the given settings in place of its own; a None value keeps its own.
    Raises ValueError for a value outside its range."""
    given = {name: value for name, value in settings.items() if value is not None}
    for name, value in given.items():
        low_open = name == "ambiguity_ratio"  # at 0 every speck of a mask would be a candidate
        if not ((0.0 < value) if low_open else (0.0 <= value)) or value > 1.0:
            raise ValueError(f"{name} must be in {'(0' if low_open else '[0'}, 1], got {value}")
    return dataclasses.replace(decision, **given)
