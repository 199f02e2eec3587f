"""Training artifacts for onnxruntime-training 1.19, made with its generate_artifacts.

:func:`build` takes a model whose first output is the loss (``train/prepare.py`` and
``train/losses.py`` made it) and writes ``training_model.onnx`` (forward + gradients,
parameters as graph inputs), ``eval_model.onnx`` (forward), ``optimizer_model.onnx`` (only for
AdamW; SGD is ours) and ``checkpoint`` (the trainable parameters and running statistics;
other initializers stay constants inside the graphs). What this module adds around
generate_artifacts:

- versions: onnxruntime 1.19 loads IR <= 10 and opset <= 21 (``runtime.MAX_IR``,
  ``MAX_OPSET``). The training and eval models keep the input model's IR version (prepare
  clamps it and converts opsets above 21 down), the optimizer model gets ``onnx.IR_VERSION``
  of the installed onnx (10 with onnx 1.17, 11 from onnx 1.18 on): every written model is
  clamped to IR 10.
- quiet: the pre-training graph transformers log at INFO to stderr unless the SessionOptions
  they get have a log level; generate_artifacts builds a bare ``SessionOptions()`` for them,
  so we hand it a quiet one for the duration of the call.
- gradients: onnxruntime's gradient builders for LayerNormalization and Dropout read the
  optional outputs (mean and inverse std-dev; mask), and generate_artifacts fails with
  "i < node_->OutputDefs().size() was false" when a node does not declare them (exporters
  usually leave them out): we declare them, under fresh names. And a Dropout in inference
  mode (no training_mode input, or a constant False) computes the identity but gets the
  gradient of a dropout that kept everything, scaled by 1/(1-ratio): silently wrong. We
  replace it by Identity, which is what it computes. Both on a copy; no computed value
  changes. Dropout with training_mode=True stays and drops in the training model only.
- no half-written files: the four are generated in a scratch folder inside ``out_dir`` and
  each moved into place (os.replace) only after all four were written.
- errors in words: nothing to train, and models generate_artifacts cannot differentiate,
  raise :class:`onnxsurgeon.errors.InputError`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.numpy_helper

from onnxsurgeon.errors import InputError
from onnxsurgeon.runtime import MAX_IR
from onnxsurgeon.train import ort

FILES = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")


@dataclass(frozen=True)
class ArtifactPaths:
    training_model: Path
    eval_model: Path
    optimizer_model: Path
    checkpoint: Path


def _constant_value(graph: onnx.GraphProto, name: str):
    for t in graph.initializer:
        if t.name == name:
            return onnx.numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and list(node.output) == [name]:
            for attr in node.attribute:
                if attr.name == "value":
                    return onnx.numpy_helper.to_array(attr.t)
    return None


def _inference_dropout(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
        return False
    if len(node.input) < 3 or not node.input[2]:
        return True
    value = _constant_value(graph, node.input[2])
    return value is not None and not bool(value)


def prepare_for_gradients(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`, or a copy that onnxruntime-training differentiates correctly (module docstring)."""
    suffixes = {"LayerNormalization": ("mean", "inv_std"), "Dropout": ("mask",)}

    def missing(node: onnx.NodeProto) -> bool:
        want = suffixes.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        return want is not None and (len(node.output) <= len(want) or "" in node.output[1:])

    graph = model.graph
    if not any(missing(n) or _inference_dropout(graph, n) for n in graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    used = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {v.name for v in (*graph.input, *graph.output, *graph.initializer, *graph.value_info)}
    for node in graph.node:
        if _inference_dropout(graph, node):
            if len(node.output) > 1 and node.output[1] in used:
                raise InputError(
                    f"node {node.name or node.output[0]!r}: the mask of an inference-mode Dropout is used, "
                    "which onnxruntime-training cannot differentiate correctly"
                )
            x, y = node.input[0], node.output[0]
            node.CopyFrom(onnx.helper.make_node("Identity", [x], [y], name=node.name))
            continue
        if not missing(node):
            continue
        for i, suffix in enumerate(suffixes[node.op_type], start=1):
            if i < len(node.output) and node.output[i]:
                continue
            name, n = f"{node.output[0]}.{suffix}", 1
            while name in taken:
                name, n = f"{node.output[0]}.{suffix}.{n}", n + 1
            taken.add(name)
            if i < len(node.output):
                node.output[i] = name
            else:
                node.output.append(name)
    return copy


def _generate(model: onnx.ModelProto, out_dir: str | os.PathLike, **options) -> list[str]:
    """generate_artifacts into a scratch folder inside `out_dir`, quiet, IR clamped; the files
    are moved into place only once all were written. Returns the names written."""
    artifacts = ort.artifacts()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".artifacts-", dir=out))
    try:
        with ort.quiet_graph_builders():
            try:
                artifacts.generate_artifacts(model, artifact_directory=scratch, **options)
            except Exception as e:  # onnx/onnxruntime raise their own types (Fail, RuntimeError, ...)
                raise _generation_error(e, model) from None
        written = [name for name in FILES if (scratch / name).exists()]
        for name in written:
            if name.endswith(".onnx"):
                path = scratch / name
                model_file = onnx.load(path)
                if model_file.ir_version > MAX_IR:
                    model_file.ir_version = MAX_IR
                    onnx.save(model_file, path)
        for name in written:
            os.replace(scratch / name, out / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return written


_NOT_REGISTERED = re.compile(r"gradient builder has not been registered: ?(\S+)(?: for node (\S*))?")


def _generation_error(e: Exception, model: onnx.ModelProto) -> InputError:
    text = str(e).strip()
    m = _NOT_REGISTERED.search(text)
    if m:
        op = m.group(1)
        nodes = [n.name or n.output[0] for n in model.graph.node if n.op_type == op]
        where = f" (node{'s' if len(nodes) > 1 else ''} {', '.join(repr(n) for n in nodes[:5])})" if nodes else ""
        return InputError(
            f"onnxruntime-training has no gradient for {op}{where}, which lies between trained parameters and the loss",
            "freeze the parameters in front of it (--freeze PATTERN), or cut that part out with extract --params constant",
        )
    lines = [line for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(e).__name__
    detail = re.search(r"\[ONNXRuntimeError\][^\n]*", text)
    return InputError(f"onnxruntime-training cannot build a training graph for the model: {detail.group(0) if detail else first}")


def build(
    model: onnx.ModelProto,
    trainable: list[str],
    running_stats: list[str],
    out_dir: str | os.PathLike,
    adamw: dict[str, float] | None = None,
) -> ArtifactPaths:
    """Artifacts for a model whose first output is the loss (later outputs are passed through).

    `trainable` get gradients; `running_stats` are state onnxruntime updates but never trains
    (BatchNormalization statistics); every other initializer stays a constant inside the
    graphs. With `adamw` (keys lr-free: beta1, beta2, eps, weight_decay) an optimizer model
    is written for onnxruntime's AdamW in torch's form (adam_mode 0); without, none is.
    """
    if not trainable:
        raise InputError("nothing to train: no parameter reaches the loss", "check --freeze and the metadata's frozen list")
    artifacts = ort.artifacts()
    _generate(
        model,
        out_dir,
        requires_grad=list(trainable),
        frozen_params=list(running_stats),
        loss=None,
        optimizer=artifacts.OptimType.AdamW if adamw is not None else None,
    )
    out = Path(out_dir)
    if adamw is not None:
        path = out / "optimizer_model.onnx"
        optimizer = onnx.load(path)
        (node,) = [n for n in optimizer.graph.node if n.op_type == "AdamWOptimizer"]
        settings = {
            "alpha": float(adamw["beta1"]),
            "beta": float(adamw["beta2"]),
            "epsilon": float(adamw["eps"]),
            "weight_decay": float(adamw["weight_decay"]),
            "adam_mode": 0,  # torch.optim.AdamW; 1 (the default) is the transformers variant
            "correct_bias": 1,
        }
        kept = [a for a in node.attribute if a.name not in settings]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in settings.items())
        onnx.save(optimizer, path)
    return ArtifactPaths(*(out / name for name in FILES))
