"""A small, safe expression language that becomes ONNX nodes (used by ``compose`` and ``train``).

Expressions such as ``adapt(features).z``, ``sigmoid(dense(h, 512))`` or
``0.3 * mse(a, b) + ce(z, labels)`` are parsed with Python's :mod:`ast` (``mode="eval"``) into
a small tree of our own (:func:`parse`), and only the node kinds listed there are accepted:
names, numbers, calls of named functions, record members (``f(x).z``), ``+ - * /``, ``**``
with a small constant exponent, unary minus, and strings or booleans as keyword values.
Nothing is ever passed to ``eval``.

:func:`evaluate` walks a tree with a table of :class:`Function` objects: every call, and every
operator (``"+"``, ``"-"``, ``"*"``, ``"/"``, ``"**"``, ``"neg"``), is looked up in that table,
so a caller decides what an expression may do. :class:`Builder` collects the ONNX nodes the
functions emit and owns the names; :func:`tensor_functions` is the table of operators,
activations, ``concat`` and ``cosine`` over a builder, which ``compose`` extends with layers
and pieces and ``train`` with losses::

    b = Builder(taken=existing_names)
    z = b.value("z", TensorType.parse("float32[N,10]"))
    table = tensor_functions(b) | {"ce": Function("ce", (Param("z"), Param("labels")), my_ce)}
    loss = evaluate(parse("0.3 * ce(z, labels)"), {"z": z, "labels": labels}, table)
    # b.nodes now computes `loss.name`

Every error is an :class:`ExprError` (an :class:`~onnxsurgeon.errors.InputError`, exit 2)
that starts with ``FILE:LINE:COLUMN:``; a :class:`Source` maps positions inside the
expression to positions in the file it was read from.
"""

from __future__ import annotations

from onnxsurgeon.expr.build import (
    Builder,
    tensor_functions,
)
from onnxsurgeon.expr.evaluator import (
    KINDS,
    REQUIRED,
    Function,
    Param,
    evaluate,
)
from onnxsurgeon.expr.syntax import (
    IDENTIFIER,
    MAX_DEPTH,
    MAX_EXPONENT,
    MAX_LENGTH,
    OPERATORS,
    ArgumentError,
    BinOp,
    Call,
    Expr,
    ExprError,
    Member,
    Name,
    Neg,
    Num,
    Pos,
    Source,
    Str,
    fold,
    names_in,
    parse,
)
from onnxsurgeon.expr.types import (
    Dim,
    Record,
    TensorType,
    Value,
    broadcast,
    fit,
    substitute,
)

__all__ = [
    "ArgumentError",
    "BinOp",
    "Builder",
    "Call",
    "Dim",
    "Expr",
    "ExprError",
    "Function",
    "IDENTIFIER",
    "KINDS",
    "MAX_DEPTH",
    "MAX_EXPONENT",
    "MAX_LENGTH",
    "Member",
    "Name",
    "Neg",
    "Num",
    "OPERATORS",
    "Param",
    "Pos",
    "REQUIRED",
    "Record",
    "Source",
    "Str",
    "TensorType",
    "Value",
    "broadcast",
    "evaluate",
    "fit",
    "fold",
    "names_in",
    "parse",
    "substitute",
    "tensor_functions",
]
