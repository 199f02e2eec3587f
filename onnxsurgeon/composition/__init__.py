"""Composing networks from pieces, new inputs, new layers and a few operators (SPEC section 4).

A :class:`Network` is built step by step (Python) or from a recipe file (:func:`compose`)::

    net = Network("fe")
    x = net.input("features", "float32[N,64]")
    enc = net.piece("autoencoder.onnx", inputs=["input"], outputs=["feat=L4.y"], params="constant")
    h = net.sigmoid(net.dense(net.apply(enc, x).feat, 32, name="hidden"))
    net.output("z", net.dense(h, 10, name="classifier"))
    model, report = net.build()

Each use of a piece inlines the piece's nodes, every value renamed under the use's scope
(``encoder/L1.y``; its inputs are bound by ``Identity`` nodes ``encoder/input``). Parameters
follow the piece's mode: ``learnable`` and ``constant`` uses get their own copies
(``encoder/L1.W``, those of ``constant`` pieces listed frozen), ``shared`` uses all read the
original initializers, held once. New layers get seeded parameters: Glorot-uniform weights
(``init="identity"`` or ``"zeros"`` on request) and zero biases, drawn from
``numpy.random.default_rng([seed, crc32(layer name)])``, so one layer's values do not depend
on the others.

The package, by concern: ``piece`` (loading pieces), ``inline`` (expanding one use),
``network`` (the builder and its layers), ``merge`` (opsets, functions, IR versions),
``report``, ``recipe`` (TOML recipes) and ``toml_positions`` (where things are in a recipe).
The package is not named ``compose``: that name is the public function :func:`compose`
(``onnxsurgeon.compose``), which a submodule of the same name would replace.
"""

from __future__ import annotations

from onnxsurgeon.composition.network import DEFAULT_OPSET, INITS, MIN_OPSET, Network
from onnxsurgeon.composition.piece import Piece, PieceError, load_piece
from onnxsurgeon.composition.recipe import PIECE_KEYS, RECIPE_KEYS, compose
from onnxsurgeon.composition.report import STATES, ComposeReport, ParamSummary, PieceSummary

__all__ = [
    "DEFAULT_OPSET",
    "INITS",
    "MIN_OPSET",
    "PIECE_KEYS",
    "RECIPE_KEYS",
    "STATES",
    "ComposeReport",
    "Network",
    "ParamSummary",
    "Piece",
    "PieceError",
    "PieceSummary",
    "compose",
    "load_piece",
]
