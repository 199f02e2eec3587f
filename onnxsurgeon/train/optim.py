"""Optimizers and learning-rate schedules, with torch's semantics.

- ``adamw`` is onnxruntime's fused AdamW in torch's form (``adam_mode`` 0, bias correction
  on; onnxruntime's own default is the transformers variant). ``adam`` is the same op
  without decoupled weight decay; its ``weight_decay`` is torch's L2 term, added to the
  gradient here before the step.
- ``sgd`` (with ``momentum``, optional ``nesterov``, ``weight_decay`` as an L2 term) is
  computed here in numpy, exactly as ``torch.optim.SGD`` with dampening 0: onnxruntime's
  SGD has no momentum. It works in place on onnxruntime's own parameter and gradient
  buffers (see :class:`Buffers`), so no tensor is copied.
- gradient clipping (``clip_norm``) scales all gradients together, as
  ``torch.nn.utils.clip_grad_norm_``.

CNTK's ``adam_sgd`` names: alpha is the learning rate, beta1 the momentum, beta2 the
variance momentum.

Schedules are pure functions of the step, computed in Python and set before every step, so
a resumed run uses the same rates as one that never stopped (onnxruntime's checkpoints do
not keep the learning rate, and its LinearLRScheduler swaps its arguments).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from onnxsurgeon.errors import InputError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "linear", "step")


@dataclass(frozen=True)
class OptimizerSettings:
    """An optimizer and its hyper-parameters (torch's names and defaults)."""

    name: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.0  # sgd
    nesterov: bool = False  # sgd
    beta1: float = 0.9  # adam, adamw
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float | None = None  # None: 0.01 for adamw, 0 otherwise
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.name not in OPTIMIZERS:
            problems.append(f"unknown optimizer {self.name!r} (use {', '.join(OPTIMIZERS)})")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            problems.append(f"--lr must be a number >= 0, not {self.lr}")
        if not 0 <= self.momentum < 1:
            problems.append(f"--momentum must be in [0, 1), not {self.momentum}")
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            problems.append("--nesterov needs --optimizer sgd and a --momentum above 0")
        for what, v in (("--beta1", self.beta1), ("--beta2", self.beta2)):
            if not 0 <= v < 1:
                problems.append(f"{what} must be in [0, 1), not {v}")
        if not self.eps > 0:
            problems.append(f"--eps must be above 0, not {self.eps}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            problems.append(f"--weight-decay must be >= 0, not {self.weight_decay}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            problems.append(f"--clip-norm must be above 0, not {self.clip_norm}")
        if problems:
            raise InputError("; ".join(problems))

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.name == "adamw" else 0.0

    def ort_adamw(self) -> dict[str, float] | None:
        """The settings of onnxruntime's AdamW op, or None for sgd."""
        if self.name == "sgd":
            return None
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "weight_decay": self.decay if self.name == "adamw" else 0.0}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weight_decay"] = self.decay
        if self.name == "sgd":
            for k in ("beta1", "beta2", "eps"):
                del d[k]
        else:
            del d["momentum"], d["nesterov"]
        return d


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: a factor of ``lr`` for each step (0-based).

    ``warmup`` steps rise linearly from 0 (step t: t / warmup), as transformers' schedules
    do; then ``constant`` keeps 1, ``linear`` falls to 0 at ``total`` steps (the run's total
    unless ``decay_steps`` is given) and ``step`` multiplies by ``gamma`` every ``step_size``
    steps.
    """

    kind: str = "constant"
    warmup: int = 0
    decay_steps: int | None = None
    step_size: int | None = None
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise InputError(f"unknown schedule {self.kind!r}", f"use one of: {', '.join(SCHEDULES)}")
        if self.warmup < 0 or (self.decay_steps is not None and self.decay_steps <= 0):
            raise InputError("--warmup must be >= 0 and --decay-steps above 0")
        if self.kind == "step" and not (self.step_size and self.step_size > 0):
            raise InputError("--schedule step needs --step-size STEPS (above 0)")
        if not self.gamma > 0:
            raise InputError(f"--gamma must be above 0, not {self.gamma}")

    def factor(self, step: int, total: int) -> float:
        if step < self.warmup:
            return step / self.warmup
        if self.kind == "linear":
            end = self.decay_steps or total
            return max(0.0, (end - step) / max(1, end - self.warmup))
        if self.kind == "step":
            return self.gamma ** (step // self.step_size)  # type: ignore[operator]
        return 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Buffers:
    """numpy views of onnxruntime's parameter and gradient buffers (no copies).

    onnxruntime's Python API hands out copies only; the views are made from the buffers'
    addresses, which stay fixed for the life of the checkpoint state (checked by the tests).
    The views must not outlive `state`, which this object keeps alive.
    """

    def __init__(self, state: Any, names: list[str], grads: bool = True) -> None:
        self.state = state
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        for name in names:
            raw = state.parameters[name]._parameter  # the C object: its OrtValues share the buffers
            self.params[name] = _view(raw.data)
            if grads:  # parameters onnxruntime updates without training (running statistics) have none
                self.grads[name] = _view(raw.grad)


def _view(ortvalue: Any) -> np.ndarray:
    from onnxruntime.capi.onnxruntime_inference_collection import OrtValue

    value = OrtValue(ortvalue)
    if value.data_type() != "tensor(float)":
        raise InputError(f"only float32 parameters can be trained, not {value.data_type()}")
    shape = value.shape()
    size = int(np.prod(shape)) if shape else 1
    array = np.ctypeslib.as_array((ctypes.c_float * size).from_address(ortvalue.data_ptr()))
    return array.reshape(shape)


def clip_(grads: Mapping[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so that their joint L2 norm is at most `max_norm`; returns
    the norm before (torch.nn.utils.clip_grad_norm_)."""
    norms = np.array([np.linalg.norm(g.reshape(-1)) for g in grads.values()], dtype=np.float32)
    total = float(np.linalg.norm(norms))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads.values():
            g *= np.float32(coef)
    return total


def l2_(grads: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray], decay: float) -> None:
    """g += decay * p, in place (torch's weight_decay for SGD and Adam)."""
    if decay:
        for name, g in grads.items():
            g += np.float32(decay) * params[name]


class SGD:
    """torch.optim.SGD (dampening 0) on numpy views, with its momentum buffers."""

    def __init__(self, settings: OptimizerSettings, buffers: Buffers) -> None:
        self.settings = settings
        self.buffers = buffers
        self.momentum = {k: np.zeros_like(v) for k, v in buffers.params.items()} if settings.momentum else {}
        self._scratch = {k: np.empty_like(v) for k, v in buffers.params.items()}

    def step(self, lr: float) -> None:
        mu = np.float32(self.settings.momentum)
        lr32 = np.float32(lr)
        for name, p in self.buffers.params.items():
            d = self.buffers.grads[name]
            if self.momentum:
                buf = self.momentum[name]
                buf *= mu  # zero at the start: the first step gives buf = g, as torch
                buf += d
                if self.settings.nesterov:
                    d += mu * buf
                else:
                    d = buf
            tmp = self._scratch[name]
            np.multiply(d, lr32, out=tmp)
            p -= tmp

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.momentum.items()}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        for k, buf in self.momentum.items():
            if k not in arrays or arrays[k].shape != buf.shape:
                raise InputError(f"the checkpoint has no momentum for {k!r}")
            buf[...] = arrays[k]
