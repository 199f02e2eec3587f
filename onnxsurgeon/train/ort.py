"""onnxruntime-training's Python modules, loaded without torch, and quiet.

Three places in onnxruntime-training 1.19 import torch although the modules we use,
``api`` (CheckpointState, Module, Optimizer, LinearLRScheduler), ``artifacts``
(generate_artifacts) and ``onnxblock`` (losses, optimizer blocks, checkpoints), need only
``onnxruntime.capi`` and ``onnx``:

1. ``onnxruntime/training/__init__.py`` imports ``.optim`` -> ``fp16_optimizer`` ->
   ``_modifier`` -> ``import torch``: without torch, ``import onnxruntime.training`` fails.
2. ``onnxruntime/tools/__init__.py`` (imported by ``training/artifacts.py``) imports
   ``pytorch_export_helpers`` -> ``import torch`` whenever torch is installed.
3. ``import onnxruntime`` itself (``capi/onnxruntime_validation.py``) tries
   ``from onnxruntime.training.ortmodule import ORTModule``, and ortmodule imports torch;
   without torch the ImportError is swallowed, with torch it is imported.

For 1 and 2 we register the package module made from its own import spec but *without
running its ``__init__``* (``importlib.util.module_from_spec``): its ``__path__`` is the real
folder, so every submodule imports as usual, and the ``training`` placeholder carries the
plain names the real ``__init__`` exports from the C extension. It lacks only what needs torch
(``ORTModule``, ``optim``, ``tools.infer_input_info``; those still import on request where
torch is installed). The placeholders stay registered: removing them would make a later
``import onnxruntime.training`` run the torch-importing ``__init__``. An already imported
real package is used as it is. For 3, onnxruntime is imported through
:func:`onnxsurgeon.runtime.import_onnxruntime`, which blocks that one probe (every command
that runs a model imports it so). If onnxruntime was already imported by someone else, 3
has happened already.

Every function raises :class:`onnxsurgeon.errors.EnvironmentProblem` (exit 3) with an install
hint when onnxruntime-training is missing (e.g. only the plain ``onnxruntime`` is installed).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from onnxsurgeon import runtime
from onnxsurgeon.errors import EnvironmentProblem

_TRAINING = "onnxruntime.training"
_TOOLS = "onnxruntime.tools"
_HINT = (
    "pip install onnxruntime-training-cpu==1.19.2 (it provides onnxruntime; "
    "uninstall the plain onnxruntime package first if it is installed)"
)
# onnxruntime's C++ log severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal. Errors
# reach the user as exceptions, in words (runtime.failure); at 3 onnxruntime would also print
# its own line for each, in colour, before that message.
QUIET = 4


def _missing(detail: str) -> EnvironmentProblem:
    return EnvironmentProblem(f"onnxruntime-training is not available: {detail}", _HINT)


def _register_bare(name: str, search_path: list[str]) -> ModuleType | None:
    """Register package `name` found on `search_path` without executing its __init__."""
    if name in sys.modules:
        return None
    spec = importlib.machinery.PathFinder.find_spec(name, search_path)
    if spec is None or spec.submodule_search_locations is None:
        return None
    package = importlib.util.module_from_spec(spec)  # creates, does not execute
    sys.modules[name] = package
    return package


def _setup() -> None:
    if _TRAINING in sys.modules and _TOOLS in sys.modules:
        return
    # Find onnxruntime without importing it (find_spec of a top-level name executes nothing).
    try:
        root = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        root = None
    if root is None or root.submodule_search_locations is None:
        raise _missing("onnxruntime is not installed")
    where = list(root.submodule_search_locations)
    if _TRAINING not in sys.modules and importlib.machinery.PathFinder.find_spec(_TRAINING, where) is None:
        raise _missing(f"the onnxruntime in {where[0]} is the inference-only build")

    training = _register_bare(_TRAINING, where)
    tools = _register_bare(_TOOLS, where)
    try:
        onnxruntime = runtime.import_onnxruntime()  # see 3. in the module docstring
        from onnxruntime.capi import _pybind_state as C

        if training is not None:
            training.PropagateCastOpsStrategy = C.PropagateCastOpsStrategy
            training.TrainingParameters = C.TrainingParameters
            training.is_ortmodule_available = C.is_ortmodule_available
            training.__all__ = ["PropagateCastOpsStrategy", "TrainingParameters", "is_ortmodule_available"]
    except (ImportError, AttributeError, EnvironmentProblem) as e:
        for name, module in ((_TRAINING, training), (_TOOLS, tools)):
            if module is not None and sys.modules.get(name) is module:
                del sys.modules[name]
        raise _missing(f"{type(e).__name__}: {e}") from None
    # What the import system does after loading a submodule.
    if training is not None:
        onnxruntime.training = training
    if tools is not None:
        onnxruntime.tools = tools


def _load(name: str) -> ModuleType:
    _setup()
    try:
        module = importlib.import_module(f"{_TRAINING}.{name}")
    except ImportError as e:
        raise _missing(f"cannot import {_TRAINING}.{name}: {e}") from None
    quiet()
    return module


def quiet() -> None:
    """Nothing but fatal errors from onnxruntime's C++ default logger.

    That logger serves every session created without its own level, the training
    Module/Optimizer, and the graph builders inside generate_artifacts; at its default
    (warning) level generate_artifacts prints lines such as "Removing initializer ...".
    generate_artifacts' own messages go through Python's *root* logger (``logging.info``)
    and only show if the application configured logging at INFO: a library leaves that alone.
    """
    import onnxruntime

    onnxruntime.set_default_logger_severity(QUIET)


def api() -> ModuleType:
    """``onnxruntime.training.api``: CheckpointState, Module, Optimizer, LinearLRScheduler."""
    return _load("api")


def artifacts() -> ModuleType:
    """``onnxruntime.training.artifacts``: generate_artifacts, LossType, OptimType."""
    return _load("artifacts")


def onnxblock() -> ModuleType:
    """``onnxruntime.training.onnxblock``: loss and optimizer blocks, save_checkpoint."""
    return _load("onnxblock")


@contextlib.contextmanager
def quiet_graph_builders() -> Iterator[None]:
    """Make generate_artifacts' internal ``SessionOptions()`` quiet for the duration.

    The pre-training graph transformers log at INFO to stderr unless their SessionOptions
    have a log level, and generate_artifacts builds a bare one in a private module of
    onnxruntime-training (no public way to pass options): it is replaced there, here only."""
    _setup()
    import onnxruntime.training.onnxblock._training_graph_utils as training_graph_utils

    original = training_graph_utils.SessionOptions

    def quiet_options():
        options = original()
        options.log_severity_level = QUIET
        return options

    training_graph_utils.SessionOptions = quiet_options
    try:
        yield
    finally:
        training_graph_utils.SessionOptions = original


def session_options() -> Any:
    """SessionOptions for a training Module: no log but fatal errors, one thread (reproducible sums)."""
    _setup()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = QUIET
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options
