"""Run AOTInductor packages with the GIL released: torch's loader holds it for the whole call.

`torch._inductor.aoti_load_package` runs a package through a binding that keeps the GIL for
the call's full duration (upstream: pytorch/pytorch#197516). In a serving process that stalls
every other Python thread for each model call: in meres_node the executor thread, so image and
depth callbacks, services, parameters and /diagnostics waited up to a whole call (27 of the demo
model's 33 ms on the 2-core CPU; a `paper` call is half a second).

The same loader class (AOTIModelPackageLoader, libtorch's C++ API) is bound here once more by a
ten-line extension whose call releases the GIL while the package runs. It is compiled with
torch.utils.cpp_extension (about 30 s on 2 cores, the C++ compiler a package needs anyway) into
the cache, once per torch version and machine: by `meres_core.compiled`'s child process after it
compiles a package, or in the foreground by the `compiled` backend. Until it is built, or where
it cannot be, packages run through torch's loader as before.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Callable

import torch
from torch.utils import _pytree as pytree

from .cache import cache_root

log = logging.getLogger(__name__)

NAME = "meres_aoti_loader"
SOURCE = r"""
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/utils/pybind.h>

struct Loader {
  torch::inductor::AOTIModelPackageLoader loader;
  explicit Loader(const std::string& path) : loader(path) {}
  std::vector<at::Tensor> run(std::vector<at::Tensor> inputs) {
    pybind11::gil_scoped_release released;  // the reason for this extension
    return loader.boxed_run(std::move(inputs));
  }
  std::vector<std::string> call_spec() { return loader.get_call_spec(); }
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Loader>(m, "Loader")
      .def(pybind11::init<const std::string&>())
      .def("run", &Loader::run)
      .def("call_spec", &Loader::call_spec);
}
"""


def build_directory() -> Path:
    """One build per source, torch version and machine: a stale library is never loaded, only not found."""
    key = hashlib.sha256(f"{SOURCE}{torch.__version__}{platform.machine()}".encode()).hexdigest()[:16]
    return cache_root() / "aoti_loader" / key


def library() -> Path:
    return build_directory() / f"{NAME}.so"


def build() -> bool:
    """Compile the extension into the cache (a no-op when built); False, logged, where it cannot be."""
    if library().is_file():
        return True
    from torch.utils.cpp_extension import load_inline

    if shutil.which("ninja") is None:  # cpp_extension runs `ninja` from PATH; the pip wheel's may not be on it
        import ninja

        os.environ["PATH"] = os.pathsep.join(filter(None, (ninja.BIN_DIR, os.environ.get("PATH"))))
    build_directory().mkdir(parents=True, exist_ok=True)
    try:  # cpp_extension locks the folder: concurrent builds wait for one another
        load_inline(NAME, cpp_sources=[SOURCE], build_directory=str(build_directory()), extra_cflags=["-O2"])
    except Exception as error:  # noqa: BLE001 - a compiler's failures are many; packages still run, GIL held
        log.warning("could not build the GIL-releasing package loader (%s: %s); compiled packages hold the GIL "
                    "while they run", type(error).__name__, error)
        return False
    return library().is_file()


class GilFreePackage:
    """A package's runner, called as torch's AOTICompiledModel (positional tensors in, its outputs out)."""

    def __init__(self, extension, path: Path):
        self._loader = extension.Loader(str(path))
        self._out_spec = pytree.treespec_loads(self._loader.call_spec()[1])

    def __call__(self, *args: torch.Tensor):
        return pytree.tree_unflatten(self._loader.run(list(args)), self._out_spec)


def load_package(path: str | Path) -> Callable:
    """The package at `path`, run with the GIL released when the extension is built, else by torch's loader."""
    extension = _extension()
    if extension is None:
        return torch._inductor.aoti_load_package(str(path))
    return GilFreePackage(extension, Path(path))


_loaded = None  # the imported extension; not cached while missing: a background build may land later


def _extension():
    global _loaded
    if _loaded is None and library().is_file():
        try:
            spec = importlib.util.spec_from_file_location(NAME, library())
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except Exception as error:  # noqa: BLE001 - e.g. a library cut short by a killed build
            log.warning("could not load the GIL-releasing package loader %s (%s: %s); torch's loader runs packages, "
                        "holding the GIL. Remove that folder to build it again", library(), type(error).__name__, error)
            return None
        _loaded = module
    return _loaded
