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

import ast
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsurgeon import dtypes
from onnxsurgeon.errors import InputError
from onnxsurgeon.names import alias

MAX_LENGTH = 10_000
MAX_DEPTH = 64
MAX_EXPONENT = 8
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_FORBIDDEN = {
    ast.Lambda: "lambda is",
    ast.Subscript: "subscripts (x[...]) are",
    ast.Compare: "comparisons are",
    ast.BoolOp: "'and' and 'or' are",
    ast.IfExp: "conditional expressions are",
    ast.ListComp: "comprehensions are",
    ast.SetComp: "comprehensions are",
    ast.DictComp: "comprehensions are",
    ast.GeneratorExp: "comprehensions are",
    ast.Tuple: "tuples are",
    ast.List: "lists are",
    ast.Dict: "dicts are",
    ast.Set: "sets are",
    ast.JoinedStr: "f-strings are",
    ast.NamedExpr: "':=' is",
    ast.Starred: "'*' arguments are",
    ast.Await: "await is",
    ast.Yield: "yield is",
    ast.YieldFrom: "yield is",
    ast.Slice: "slices are",
}


# --- positions and errors -------------------------------------------------------------------


@dataclass(frozen=True)
class Pos:
    """A place in a file: 1-based line and column."""

    line: int
    col: int
    file: str = "<expression>"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}" if self.line > 0 else self.file


class ExprError(InputError):
    """An error in an expression or recipe, with the position it refers to (exit 2)."""

    def __init__(self, message: str, hint: str | None = None, pos: Pos | None = None) -> None:
        super().__init__(f"{pos}: {message}" if pos else message, hint)
        self.pos = pos
        self.reason = message

    @classmethod
    def at(cls, pos: Pos | None, error: InputError) -> ExprError:
        """The same error, placed at ``pos`` unless it already has a place."""
        if isinstance(error, ExprError) and error.pos is not None:
            return error
        return cls(getattr(error, "reason", error.message), error.hint, pos)


class ArgumentError(InputError):
    """Raised by a function about one of its arguments (a position or keyword name), so
    that the error points at that argument rather than at the call."""

    def __init__(self, which: int | str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.which = which


@dataclass(frozen=True)
class Source:
    """The text of an expression and where each of its characters sits in a file.

    ``chars[i]`` is the (line, column) in the file of character ``i`` of ``text``; without
    it the expression is its own file, starting at ``line``/``col``."""

    text: str
    file: str = "<expression>"
    line: int = 1
    col: int = 1
    chars: tuple[tuple[int, int], ...] | None = None

    def pos_of_char(self, index: int) -> Pos:
        if self.chars:
            line, col = self.chars[min(max(index, 0), len(self.chars) - 1)]
            if index >= len(self.chars):  # just past the end: one column further
                col += index - len(self.chars) + 1
            return Pos(line, col, self.file)
        before = self.text[:index]
        line = self.line + before.count("\n")
        col = index - (before.rfind("\n") + 1) + (self.col if line == self.line else 1)
        return Pos(line, col, self.file)

    def pos(self, lineno: int, col_offset: int, byte_offset: bool = True) -> Pos:
        """The file position of an ``ast`` position (1-based line, 0-based UTF-8 byte offset)."""
        lines = self.text.split("\n")
        lineno = min(max(lineno, 1), len(lines))
        line = lines[lineno - 1]
        col = len(line.encode()[:col_offset].decode(errors="ignore")) if byte_offset else col_offset
        start = sum(len(x) + 1 for x in lines[: lineno - 1])
        return self.pos_of_char(start + min(col, len(line)))


# --- the tree ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: int | float
    pos: Pos


@dataclass(frozen=True)
class Str:
    value: str | bool
    pos: Pos


@dataclass(frozen=True)
class Name:
    id: str
    pos: Pos


@dataclass(frozen=True)
class Member:
    base: Expr
    name: str
    pos: Pos


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    keywords: tuple[tuple[str, Expr], ...]
    pos: Pos


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True)
class Neg:
    operand: Expr
    pos: Pos


Expr = Num | Str | Name | Member | Call | BinOp | Neg


def parse(text: str, source: Source | None = None) -> Expr:
    """Parse an expression into a tree, refusing every construct that is not allowed."""
    source = source or Source(text)
    if len(text) > MAX_LENGTH:
        raise ExprError(f"the expression is too long ({len(text)} characters, at most {MAX_LENGTH})", pos=source.pos(1, 0))
    if not text.strip():
        raise ExprError("the expression is empty", "write a value, e.g. relu(x)", source.pos(1, 0))
    # Parenthesised, an expression may span lines and start with spaces; the opening
    # parenthesis shifts the first line by one character, undone in _Converter.pos.
    try:
        tree = ast.parse("(" + text + "\n)", mode="eval")
    except SyntaxError as e:
        raise _syntax_error(e, text, source) from None
    except (RecursionError, MemoryError):
        raise ExprError("the expression is nested too deeply", pos=source.pos(1, 0)) from None
    return _Converter(source).convert(tree.body, 0)


def names_in(expr: Expr) -> list[Name]:
    """The names an expression reads (not the functions it calls), in order."""
    if isinstance(expr, Name):
        return [expr]
    if isinstance(expr, Member):
        return names_in(expr.base)
    if isinstance(expr, Call):
        return [n for a in list(expr.args) + [v for _, v in expr.keywords] for n in names_in(a)]
    if isinstance(expr, BinOp):
        return names_in(expr.left) + names_in(expr.right)
    if isinstance(expr, Neg):
        return names_in(expr.operand)
    return []


def _syntax_error(e: SyntaxError, text: str, source: Source) -> ExprError:
    lines = text.split("\n")
    lineno = e.lineno or 1
    col = max((e.offset or 1) - 1, 0)  # SyntaxError.offset counts characters from 1
    if lineno == 1:
        col = max(col - 1, 0)
    if lineno > len(lines):  # at the closing parenthesis we added: the text ended too soon
        lineno, col = len(lines), len(lines[-1])
    message = (e.msg or "invalid syntax").replace("'(' was never closed", "a parenthesis is not closed")
    return ExprError(f"syntax error: {message}", "expressions look like: sigmoid(dense(h, 512))", source.pos(lineno, col, byte_offset=False))


class _Converter:
    def __init__(self, source: Source) -> None:
        self.source = source

    def pos(self, node: ast.AST) -> Pos:
        lineno, col = node.lineno, node.col_offset  # type: ignore[attr-defined]
        return self.source.pos(lineno, col - 1 if lineno == 1 else col)

    def member_pos(self, node: ast.Attribute) -> Pos:
        """Where the member's name starts (``x.__class__`` points at ``__class__``)."""
        if node.end_lineno is None or node.end_col_offset is None:
            return self.pos(node)
        line = ("(" + self.source.text + "\n)").split("\n")[node.end_lineno - 1]
        end = len(line.encode()[: node.end_col_offset].decode(errors="ignore"))
        start = line.rfind(node.attr, 0, end)
        col = start if start >= 0 else end - len(node.attr)
        return self.source.pos(node.end_lineno, col - 1 if node.end_lineno == 1 else col, byte_offset=False)

    def fail(self, node: ast.AST, message: str, hint: str | None = None) -> ExprError:
        return ExprError(message, hint, self.pos(node))

    def convert(self, node: ast.AST, depth: int, keyword_value: bool = False) -> Expr:
        if depth > MAX_DEPTH:
            raise self.fail(node, f"the expression is nested too deeply (more than {MAX_DEPTH} levels)")
        d = depth + 1
        if isinstance(node, ast.Constant):
            return self.constant(node, keyword_value)
        if isinstance(node, ast.Name):
            self.check_name(node, node.id)
            return Name(node.id, self.pos(node))
        if isinstance(node, ast.Attribute):
            if not isinstance(node.value, (ast.Name, ast.Call)):
                raise self.fail(node, "a member can be taken only of a piece's result or a record name, e.g. adapt(x).z")
            at = self.member_pos(node)
            if node.attr.startswith("_"):
                raise ExprError(f"member {node.attr!r} is not allowed: names starting with '_' are reserved", None, at)
            return Member(self.convert(node.value, d), node.attr, at)
        if isinstance(node, ast.Call):
            return self.call(node, d)
        if isinstance(node, ast.BinOp):
            return self.binop(node, d)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.UAdd):
                return self.convert(node.operand, d)
            if isinstance(node.op, ast.USub):
                operand = self.convert(node.operand, d)
                if isinstance(operand, Num):
                    return Num(-operand.value, self.pos(node))
                return Neg(operand, self.pos(node))
            raise self.fail(node, f"operator {_op_text(node.op)!r} is not allowed", "use + - * / and ** only")
        kind = _FORBIDDEN.get(type(node), f"{type(node).__name__} is")
        raise self.fail(node, f"{kind} not allowed in an expression",
                        "write names, numbers, calls such as relu(x), members such as f(x).z, and + - * / **")

    def check_name(self, node: ast.AST, name: str) -> None:
        if name.startswith("__"):
            raise self.fail(node, f"name {name!r} is not allowed: names starting with '__' are reserved")

    def constant(self, node: ast.Constant, keyword_value: bool) -> Expr:
        value = node.value
        if isinstance(value, (bool, str)):
            if keyword_value:
                return Str(value, self.pos(node))
            raise self.fail(node, f"{value!r} is allowed only as a keyword value, e.g. name='hidden'")
        if isinstance(value, (int, float)):
            if not _finite(value):  # 1e999 reads as infinity; float32 cannot hold 10**400
                raise self.fail(node, "the number is too large")
            return Num(value, self.pos(node))
        raise self.fail(node, f"the constant {value!r} is not allowed; only numbers (and strings as keyword values)")

    def call(self, node: ast.Call, d: int) -> Call:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node.func, "only functions and pieces can be called, by their name (e.g. relu(x))")
        self.check_name(node.func, node.func.id)
        args = []
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise self.fail(a, "'*' arguments are not allowed")
            args.append(self.convert(a, d))
        keywords = []
        for k in node.keywords:
            if k.arg is None:
                raise self.fail(k.value, "'**' arguments are not allowed")
            keywords.append((k.arg, self.convert(k.value, d, keyword_value=True)))
        return Call(node.func.id, tuple(args), tuple(keywords), self.pos(node))

    def binop(self, node: ast.BinOp, d: int) -> Expr:
        op = OPERATORS.get(type(node.op))
        if op is None:
            raise self.fail(node, f"operator {_op_text(node.op)!r} is not allowed", "use + - * / and ** only")
        left, right = self.convert(node.left, d), self.convert(node.right, d)
        if op == "**" and not (isinstance(right, Num) and abs(right.value) <= MAX_EXPONENT):
            raise self.fail(node.right, f"the exponent of '**' must be a number between {-MAX_EXPONENT} and {MAX_EXPONENT}")
        if isinstance(left, Num) and isinstance(right, Num):
            try:
                return Num(fold(op, left.value, right.value), self.pos(node))
            except InputError as e:
                raise ExprError.at(self.pos(node), e) from None
        return BinOp(op, left, right, self.pos(node))


def _op_text(op: ast.AST) -> str:
    return {
        ast.MatMult: "@", ast.FloorDiv: "//", ast.Mod: "%", ast.LShift: "<<", ast.RShift: ">>",
        ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^", ast.Not: "not", ast.Invert: "~",
    }.get(type(op), type(op).__name__)


def fold(op: str, a: float, b: float) -> float:
    """``a op b`` on two numbers."""
    try:
        if op == "+":
            result = a + b
        elif op == "-":
            result = a - b
        elif op == "*":
            result = a * b
        elif op == "/":
            result = a / b
        else:
            result = float(a) ** b
    except ZeroDivisionError:
        raise InputError("division by zero") from None
    except OverflowError:
        raise InputError("the number is too large") from None
    if not _finite(result):  # 1e308 * 1e308 is infinity, not an OverflowError
        raise InputError("the number is too large")
    return result


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer too large for a float
        return False


# --- values and types -----------------------------------------------------------------------

Dim = int | str | None


@dataclass(frozen=True)
class TensorType:
    """The element type and shape of a tensor; a dim is a size, a symbol such as ``"N"``, or
    None when unknown; the shape is None when even the rank is unknown."""

    elem: int
    shape: tuple[Dim, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> TensorType:
        """``float32[N,64]`` as a type."""
        t = dtypes.parse_type(text) if isinstance(text, str) else None
        if t is None:
            raise InputError(f"{text!r} is not a tensor type", "write a type such as float32[N,64] or int64[N]")
        return cls.from_proto(t)  # type: ignore[return-value]

    @classmethod
    def from_proto(cls, t: onnx.TypeProto | None) -> TensorType | None:
        if t is None or t.WhichOneof("value") != "tensor_type" or not t.tensor_type.elem_type:
            return None
        tt = t.tensor_type
        if not tt.HasField("shape"):
            return cls(tt.elem_type, None)
        dims: list[Dim] = []
        for d in tt.shape.dim:
            which = d.WhichOneof("value")
            dims.append(d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param" else None)
        return cls(tt.elem_type, tuple(dims))

    def to_proto(self) -> onnx.TypeProto:
        return helper.make_tensor_type_proto(self.elem, None if self.shape is None else list(self.shape))

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def dtype(self) -> str:
        return dtypes.dtype_name(self.elem)

    def __str__(self) -> str:
        return dtypes.show(self.to_proto())


@dataclass(frozen=True)
class Value:
    """A tensor of the network: its name in the graph, its type, and the name a person gave
    it (``label``) where that differs, for messages."""

    name: str
    type: TensorType
    label: str | None = None

    @property
    def shown(self) -> str:
        return self.label or self.name

    def __str__(self) -> str:
        return f"{self.shown} : {self.type}"


@dataclass(frozen=True)
class Record:
    """The named outputs of one use of a piece: ``record.z`` or ``record["z"]``."""

    owner: str
    fields: tuple[tuple[str, Value], ...]

    def names(self) -> list[str]:
        return [k for k, _ in self.fields]

    def member(self, name: str) -> Value:
        """The output called ``name``, exactly or by its CNTK alias (``L4_y`` for ``L4.y``)."""
        found = dict(self.fields)
        if name in found:
            return found[name]
        matches = [k for k in found if alias(k) == alias(name)]
        if len(matches) == 1:
            return found[matches[0]]
        close = difflib.get_close_matches(name, list(found), n=3, cutoff=0.5)
        did = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(
            f"{self.owner} has no output {name!r}{did}",
            f"its outputs are: {', '.join(self.names())}",
        )

    def only(self) -> Value | None:
        return self.fields[0][1] if len(self.fields) == 1 else None

    def __getitem__(self, name: str) -> Value:
        return self.member(name)

    def __getattr__(self, name: str) -> Value:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.member(name)
        except InputError as e:
            raise AttributeError(str(e)) from None


def broadcast(a: TensorType, b: TensorType) -> tuple[Dim, ...] | None:
    """The shape of an elementwise result (numpy rules), or an InputError naming the dims
    that do not line up."""
    if a.shape is None or b.shape is None:
        return None
    out: list[Dim] = []
    n = max(len(a.shape), len(b.shape))
    pa = (1,) * (n - len(a.shape)) + a.shape
    pb = (1,) * (n - len(b.shape)) + b.shape
    for axis, (x, y) in enumerate(zip(pa, pb)):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif x is None or y is None:
            out.append(x if y is None else y)
        else:
            raise InputError(
                f"the shapes {a} and {b} do not line up: dimension {axis} is {_dim(x)} and {_dim(y)}",
                "symbolic dimensions must carry the same name (e.g. both N), sizes must be equal or 1",
            )
    return tuple(out)


def _dim(d: Dim) -> str:
    return "unknown" if d is None else repr(d) if isinstance(d, str) else str(d)


def fit(arg: TensorType, expected: TensorType, what: str) -> dict[str, Dim]:
    """Check that a value of type ``arg`` can be fed where ``expected`` is declared.

    Returns how the symbols of ``expected`` are bound (``{"N": 4}`` where a symbolic
    dimension receives a fixed size); raises an InputError saying which dims do not line up."""
    if arg.elem != expected.elem:
        raise InputError(f"{what} must be {expected}, got {arg} (element type {arg.dtype}, not {expected.dtype})")
    if arg.shape is None or expected.shape is None:
        return {}
    if len(arg.shape) != len(expected.shape):
        raise InputError(f"{what} must be {expected}, got {arg} (rank {len(arg.shape)}, not {len(expected.shape)})")
    bound: dict[str, Dim] = {}
    bad = []
    for axis, (x, y) in enumerate(zip(arg.shape, expected.shape)):
        if y is None or x == y:
            ok = True
        elif isinstance(y, str):
            ok = x is None or isinstance(x, int)
            if ok and bound.setdefault(y, x) != x:
                ok = False
        else:
            ok = x is None
        if not ok:
            bad.append(f"dimension {axis} is {_dim(x)} where {_dim(y)} is expected")
    if bad:
        raise InputError(
            f"{what} must be {expected}, got {arg}: " + "; ".join(bad),
            "symbolic dimensions must line up by name (e.g. both N); declare the input with the same dims",
        )
    return bound


def substitute(t: TensorType, bound: Mapping[str, Dim]) -> TensorType:
    """A type with its symbolic dims replaced as ``fit`` bound them."""
    if not bound or t.shape is None:
        return t
    return TensorType(t.elem, tuple(bound.get(d, d) if isinstance(d, str) else d for d in t.shape))


# --- functions and evaluation ------------------------------------------------------------------

REQUIRED = object()
KINDS = {
    "value": "a tensor value",
    "operand": "a tensor value or a number",
    "int": "an integer",
    "number": "a number",
    "string": "a string",
    "bool": "True or False",
}


@dataclass(frozen=True)
class Param:
    """One parameter of a :class:`Function`: its name, kind (see ``KINDS``) and default."""

    name: str
    kind: str = "value"
    default: Any = REQUIRED
    keyword_only: bool = False


@dataclass(frozen=True)
class Function:
    """Something an expression may call: ``call`` receives the bound arguments by name.

    ``variadic`` names a parameter that collects the remaining positional values as a tuple
    (``concat(a, b, c)``)."""

    name: str
    params: tuple[Param, ...]
    call: Callable[..., Any]
    doc: str = ""
    variadic: str | None = None

    def signature(self) -> str:
        parts = []
        for p in self.params:
            if p.name == self.variadic:
                parts.append(f"{p.name}...")
            elif p.default is REQUIRED:
                parts.append(p.name)
            else:
                parts.append(f"{p.name}={p.default!r}")
        return f"{self.name}({', '.join(parts)})"


def evaluate(expr: Expr, scope: Mapping[str, Any], functions: Mapping[str, Function]) -> Any:
    """Compute an expression tree: names come from ``scope``, calls and operators from
    ``functions``. Returns a :class:`Value`, a :class:`Record` or a number."""
    return _Evaluator(scope, functions).eval(expr)


class _Evaluator:
    def __init__(self, scope: Mapping[str, Any], functions: Mapping[str, Function]) -> None:
        self.scope = scope
        self.functions = functions

    def eval(self, e: Expr) -> Any:
        if isinstance(e, Num):
            return e.value
        if isinstance(e, Str):
            return e.value
        if isinstance(e, Name):
            return self.name(e)
        if isinstance(e, Member):
            base = self.eval(e.base)
            if not isinstance(base, Record):
                what = f"{e.base.id!r}" if isinstance(e.base, Name) else "this result"
                raise ExprError(f"{what} has no members: it is {_describe(base)}", "take members of a piece's result, e.g. adapt(x).z", e.pos)
            try:
                return base.member(e.name)
            except InputError as err:
                raise ExprError.at(e.pos, err) from None
        if isinstance(e, Call):
            fn = self.functions.get(e.func)
            if fn is None:
                raise self.unknown_function(e)
            args = [self.eval(a) for a in e.args]
            kwargs = [(k, self.eval(v)) for k, v in e.keywords]
            return self.apply(fn, args, kwargs, e, [a.pos for a in e.args], {k: v.pos for k, v in e.keywords})
        if isinstance(e, BinOp):
            return self.apply(self.functions[e.op], [self.eval(e.left), self.eval(e.right)], [], e, [e.left.pos, e.right.pos], {})
        if isinstance(e, Neg):
            return self.apply(self.functions["neg"], [self.eval(e.operand)], [], e, [e.operand.pos], {})
        raise TypeError(f"not an expression node: {e!r}")  # a bug: parse makes only the kinds above

    def name(self, e: Name) -> Any:
        if e.id in self.scope:
            return self.scope[e.id]
        if e.id in self.functions:
            raise ExprError(f"{e.id!r} is a function: call it, e.g. {e.id}(...)", None, e.pos)
        names = [n for n in self.scope if IDENTIFIER.match(n)]
        close = difflib.get_close_matches(e.id, names, n=3, cutoff=0.6)
        did = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        raise ExprError(f"unknown name {e.id!r}{did}", f"the names defined here are: {known or '(none)'}", e.pos)

    def unknown_function(self, e: Call) -> ExprError:
        if e.func in self.scope:
            return ExprError(f"{e.func!r} is {_describe(self.scope[e.func])}, not a function or piece; it cannot be called", None, e.pos)
        callable_names = sorted(n for n in self.functions if IDENTIFIER.match(n))
        close = difflib.get_close_matches(e.func, callable_names, n=3, cutoff=0.6)
        did = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return ExprError(
            f"unknown function or piece {e.func!r}{did}",
            f"the functions and pieces that can be called are: {', '.join(callable_names)}",
            e.pos,
        )

    def apply(self, fn: Function, args: list, kwargs: list, e: Expr, arg_pos: list[Pos], kw_pos: dict[str, Pos]) -> Any:
        bound, where = _bind(fn, args, kwargs, e.pos, arg_pos, kw_pos)
        try:
            return fn.call(**bound)
        except ArgumentError as err:
            if isinstance(err.which, int):
                at = arg_pos[err.which] if err.which < len(arg_pos) else e.pos
            else:
                at = where.get(err.which, e.pos)
            raise ExprError.at(at, err) from None
        except InputError as err:
            raise ExprError.at(e.pos, err) from None


def _describe(x: Any) -> str:
    if isinstance(x, Value):
        return f"the value {x.shown!r} ({x.type})"
    if isinstance(x, Record):
        return f"the outputs of {x.owner} ({', '.join(x.names())})"
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"the number {x}"
    if isinstance(x, (str, bool)):
        return repr(x)
    return type(x).__name__


def _bind(fn: Function, args: list, kwargs: list, pos: Pos, arg_pos: list[Pos], kw_pos: dict[str, Pos]) -> tuple[dict[str, Any], dict[str, Pos]]:
    """Match arguments to parameters and check their kinds; returns them and their positions."""
    positional = [p for p in fn.params if not p.keyword_only and p.name != fn.variadic]
    by_name = {p.name: p for p in fn.params}
    bound: dict[str, Any] = {}
    where: dict[str, Pos] = {}
    if fn.variadic is None and len(args) > len(positional):
        raise ExprError(
            f"{fn.name} takes at most {len(positional)} positional argument{'s' if len(positional) != 1 else ''}, {len(args)} given",
            f"call it as {fn.signature()}", pos,
        )
    for p, a, ap in zip(positional, args, arg_pos):
        bound[p.name], where[p.name] = a, ap
    if fn.variadic is not None:
        bound[fn.variadic] = tuple(args[len(positional):])
        for k, ap in enumerate(arg_pos[len(positional):]):
            where[f"{fn.variadic}#{k}"] = ap
    for key, value in kwargs:
        p = by_name.get(key)
        if p is None or p.name == fn.variadic:
            raise ExprError(f"{fn.name} has no argument {key!r}", f"call it as {fn.signature()}", kw_pos.get(key, pos))
        if key in bound:
            raise ExprError(f"{fn.name} got argument {key!r} twice", f"call it as {fn.signature()}", kw_pos.get(key, pos))
        bound[key], where[key] = value, kw_pos.get(key, pos)
    for p in fn.params:
        if p.name in bound or p.name == fn.variadic:
            continue
        if p.default is REQUIRED:
            raise ExprError(f"{fn.name} is missing its argument {p.name!r}", f"call it as {fn.signature()}", pos)
        bound[p.name] = p.default
    for p in fn.params:
        if p.name == fn.variadic:
            bound[p.name] = tuple(
                _check_kind(fn, p, v, where.get(f"{p.name}#{k}", pos)) for k, v in enumerate(bound[p.name])
            )
        elif p.name in where:
            bound[p.name] = _check_kind(fn, p, bound[p.name], where[p.name])
    if fn.variadic is not None and not bound[fn.variadic]:
        raise ExprError(f"{fn.name} needs at least one value", f"call it as {fn.signature()}", pos)
    return bound, where


def _check_kind(fn: Function, p: Param, v: Any, pos: Pos) -> Any:
    if p.kind in ("value", "operand"):
        if isinstance(v, Record) and v.only() is not None:
            v = v.only()
        if isinstance(v, Value):
            return v
        if p.kind == "operand" and _is_number(v):
            return v
        hint = "pick one output with .NAME" if isinstance(v, Record) else None
        raise ExprError(f"argument {p.name!r} of {fn.name} must be {KINDS[p.kind]}, not {_describe(v)}", hint, pos)
    ok = {
        "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
        "number": _is_number,
        "string": lambda x: isinstance(x, str),
        "bool": lambda x: isinstance(x, bool),
    }[p.kind](v)
    if not ok:
        raise ExprError(f"argument {p.name!r} of {fn.name} must be {KINDS[p.kind]}, not {_describe(v)}", None, pos)
    return v


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# --- building ONNX nodes ------------------------------------------------------------------------


@dataclass
class Builder:
    """Collects the nodes and initializers an expression emits, and owns the names.

    Names given by people (inputs, parameters, ``taken`` names of an existing model) are
    *fixed*: a second claim is a collision error. Names the builder makes up (``Relu_3``)
    yield: if a fixed name arrives later, the made one is renamed by :meth:`finish_names`.
    A *scope* (``hidden``, a piece's use ``adapt``) owns every name ``scope/...``."""

    taken: Iterable[str] = ()
    segments: list[Any] = field(default_factory=list)  # NodeProtos, and placeholders of callers
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    fixed: dict[str, str] = field(default_factory=dict)
    made: set[str] = field(default_factory=set)
    scopes: dict[str, str] = field(default_factory=dict)
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    _moved: set[str] = field(default_factory=set)
    _counter: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.taken:
            self.fixed.setdefault(name, "a value of the model")

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return [s for s in self.segments if isinstance(s, onnx.NodeProto)]

    def _in_scope(self, name: str) -> str | None:
        head, sep, _ = name.partition("/")
        return head if sep and head in self.scopes else None

    def claim(self, name: str, what: str) -> None:
        """Reserve a name given by a person; two claims of one name are a collision."""
        if name in self.fixed:
            raise InputError(f"name collision: {name!r} would be {what}, but it is already {self.fixed[name]}", "choose another name")
        scope = self._in_scope(name)
        if scope is not None:
            raise InputError(f"name collision: {name!r} ({what}) lies inside {self.scopes[scope]} ({scope}/...)", "choose another name")
        if name in self.made:
            self._moved.add(name)
        self.fixed[name] = what

    def scope(self, name: str | None, base: str, what: str) -> str:
        """A new scope: ``name`` exactly (a collision if taken), or ``base``, ``base_2``, ..."""
        if name is not None:
            if name in self.scopes:
                raise InputError(f"name collision: {name!r} is already {self.scopes[name]}", "give each layer and each use its own name")
            if not name or "/" in name:
                raise InputError(f"{name!r} cannot name {what}: it must be non-empty and without '/'")
            if any(k.startswith(name + "/") for k in self.fixed):
                raise InputError(f"name collision: values named {name}/... exist already", "choose another name")
            self.scopes[name] = what
            return name
        k = self._counter.get(f"scope:{base}", 0)
        while True:
            k += 1
            candidate = base if k == 1 else f"{base}_{k}"
            if candidate not in self.scopes and not any(n.startswith(candidate + "/") for n in self.fixed):
                break
        self._counter[f"scope:{base}"] = k
        self.scopes[candidate] = what
        return candidate

    def fresh(self, base: str) -> str:
        """A made-up name from ``base``: ``base``, else ``base_2``, ``base_3``..."""
        k = self._counter.get(base, 0)
        while True:
            k += 1
            name = base if k == 1 else f"{base}_{k}"
            if name not in self.fixed and name not in self.made and self._in_scope(name) in (None, self._in_scope(base)):
                break
        self._counter[base] = k
        self.made.add(name)
        return name

    def value(self, name: str, type: TensorType) -> Value:
        """An existing value (an input of the graph or the model being extended)."""
        return Value(name, type)

    def node(self, op: str, inputs: list[str], type: TensorType, hint: str | None = None, domain: str = "", **attrs: Any) -> Value:
        """Append one node with one output of the given type; returns that output."""
        out = self.fresh(hint or op)
        node = helper.make_node(op, inputs, [out], name=out, domain=domain or None, **attrs)
        self.segments.append(node)
        self.producers[out] = node
        return Value(out, type)

    def constant(self, value: float | np.ndarray, elem: int, hint: str = "Constant") -> str:
        """A Constant node (never an initializer: constants must not become parameters)."""
        array = np.asarray(value, dtype=helper.tensor_dtype_to_np_dtype(elem))
        out = self.fresh(hint)
        node = helper.make_node("Constant", [], [out], name=out, value=numpy_helper.from_array(array))
        self.segments.append(node)
        self.producers[out] = node
        return out

    def param(self, name: str, array: np.ndarray, what: str) -> Value:
        """A new initializer with a fixed name."""
        self.claim(name, what)
        self.initializers.append(numpy_helper.from_array(array, name))
        return Value(name, TensorType(helper.np_dtype_to_tensor_dtype(array.dtype), tuple(array.shape)))

    def finish_names(self, preferred: Mapping[str, str] = {}) -> dict[str, str]:
        """Rename made names: to a ``preferred`` name (a let or an output), or away from a
        fixed name that arrived after them. Applies to the builder's nodes; returns the map."""
        mapping = {old: new for old, new in preferred.items() if old in self.producers}
        for old in self._moved:
            if old not in mapping:
                self.made.discard(old)
                mapping[old] = self.fresh(old)
        if not mapping:
            return mapping
        for node in self.segments:
            if not isinstance(node, onnx.NodeProto):
                continue
            for i, n in enumerate(node.input):
                if n in mapping:
                    node.input[i] = mapping[n]
            for i, n in enumerate(node.output):
                if n in mapping:
                    node.output[i] = mapping[n]
                    node.name = mapping[n]
        return mapping

    # --- tensor operations -------------------------------------------------------------------

    def unary(self, op: str, x: Value, **attrs: Any) -> Value:
        return self.node(op, [x.name], x.type, **attrs)

    def binary(self, op: str, a: Value | float, b: Value | float) -> Value | float:
        """``a op b`` for ``+ - * / **``; numbers become Constants of the other side's type."""
        if _is_number(a) and _is_number(b):
            return fold(op, a, b)  # type: ignore[arg-type]
        onnx_op = {"+": "Add", "-": "Sub", "*": "Mul", "/": "Div", "**": "Pow"}[op]
        if isinstance(a, Value) and isinstance(b, Value):
            if a.type.elem != b.type.elem:
                raise InputError(f"cannot compute {a.shown} {op} {b.shown}: element types {a.type.dtype} and {b.type.dtype} differ")
            shape = broadcast(a.type, b.type)
            return self.node(onnx_op, [a.name, b.name], TensorType(a.type.elem, shape))
        tensor = a if isinstance(a, Value) else b
        assert isinstance(tensor, Value)
        number = b if tensor is a else a
        const = self.constant(number, tensor.type.elem)
        inputs = [tensor.name, const] if tensor is a else [const, tensor.name]
        return self.node(onnx_op, inputs, tensor.type)

    def reduce_sum(self, x: Value, axis: int = -1) -> Value:
        """The sum along one axis, kept as size 1."""
        _check_axis(x, axis)
        shape = x.type.shape
        if shape is not None:
            k = axis % len(shape)
            shape = shape[:k] + (1,) + shape[k + 1:]
        axes = self.constant(np.array([axis], dtype=np.int64), onnx.TensorProto.INT64, hint="axes")
        return self.node("ReduceSum", [x.name, axes], TensorType(x.type.elem, shape), keepdims=1)

    def softmax(self, x: Value, axis: int = -1, log: bool = False) -> Value:
        _check_axis(x, axis)
        return self.node("LogSoftmax" if log else "Softmax", [x.name], x.type, axis=axis)

    def concat(self, xs: tuple[Value, ...], axis: int = -1) -> Value:
        first = xs[0]
        for k, x in enumerate(xs[1:], 1):
            if x.type.elem != first.type.elem:
                raise ArgumentError(k, f"concat: {x.shown} is {x.type.dtype}, {first.shown} is {first.type.dtype}")
            if x.type.rank is not None and first.type.rank is not None and x.type.rank != first.type.rank:
                raise ArgumentError(k, f"concat: {x.shown} has rank {x.type.rank}, {first.shown} has rank {first.type.rank}")
        shape = _concat_shape([x.type for x in xs], axis)
        return self.node("Concat", [x.name for x in xs], TensorType(first.type.elem, shape), axis=axis)

    def cosine(self, a: Value, b: Value) -> Value:
        """Cosine similarity along the last axis, keeping it as size 1 (CNTK's cosine_distance)."""
        if a.type.elem != b.type.elem:
            raise ArgumentError(1, f"cosine: {b.shown} is {b.type.dtype}, {a.shown} is {a.type.dtype}")
        broadcast(a.type, b.type)
        dot = self.reduce_sum(self.binary("*", a, b))  # type: ignore[arg-type]
        na = self.unary("Sqrt", self.reduce_sum(self.binary("*", a, a)))  # type: ignore[arg-type]
        nb = self.unary("Sqrt", self.reduce_sum(self.binary("*", b, b)))  # type: ignore[arg-type]
        return self.binary("/", dot, self.binary("*", na, nb))  # type: ignore[return-value]


def _check_axis(x: Value, axis: int) -> None:
    if x.type.rank is not None and not -x.type.rank <= axis < x.type.rank:
        raise ArgumentError("axis", f"axis {axis} is out of range for {x.shown} ({x.type})")


def _concat_shape(types: list[TensorType], axis: int) -> tuple[Dim, ...] | None:
    shapes = [t.shape for t in types]
    if any(s is None for s in shapes):
        return None
    rank = len(shapes[0])  # type: ignore[arg-type]
    if not -rank <= axis < rank:
        raise ArgumentError("axis", f"concat: axis {axis} is out of range for rank {rank}")
    axis %= rank
    out: list[Dim] = []
    for k in range(rank):
        dims = [s[k] for s in shapes]  # type: ignore[index]
        if k == axis:
            out.append(sum(dims) if all(isinstance(d, int) for d in dims) else None)  # type: ignore[arg-type]
            continue
        known = {d for d in dims if d is not None}
        if len(known) > 1:
            raise InputError(f"concat: dimension {k} does not line up: {', '.join(_dim(d) for d in dims)}")
        out.append(known.pop() if known else None)
    return tuple(out)


def tensor_functions(builder: Builder) -> dict[str, Function]:
    """Operators, activations, ``concat`` and ``cosine`` over a builder: the functions every
    expression may use."""
    V, O = Param("x"), "operand"

    def op(symbol: str) -> Function:
        return Function(symbol, (Param("a", O), Param("b", O)), lambda a, b: builder.binary(symbol, a, b))

    def neg(a: Any) -> Any:
        return -a if _is_number(a) else builder.unary("Neg", a)

    def activation(op_type: str, doc: str) -> Function:
        return Function(op_type.lower(), (V,), lambda x: builder.unary(op_type, x), doc)

    axis = Param("axis", "int", -1)
    table = {s: op(s) for s in ("+", "-", "*", "/", "**")}
    table["neg"] = Function("neg", (Param("a", O),), neg)
    for op_type, doc in (
        ("Relu", "max(x, 0)"), ("Sigmoid", "1 / (1 + exp(-x))"), ("Tanh", "hyperbolic tangent"),
        ("Exp", "e to the x"), ("Log", "natural logarithm"), ("Sqrt", "square root"),
    ):
        table[op_type.lower()] = activation(op_type, doc)
    table["softmax"] = Function("softmax", (V, axis), lambda x, axis: builder.softmax(x, axis), "softmax along an axis (default the last)")
    table["log_softmax"] = Function(
        "log_softmax", (V, axis), lambda x, axis: builder.softmax(x, axis, log=True), "log of softmax along an axis"
    )
    table["concat"] = Function(
        "concat", (Param("xs"), Param("axis", "int", -1, keyword_only=True)), lambda xs, axis: builder.concat(xs, axis),
        "join values along an axis (default the last)", variadic="xs",
    )
    table["cosine"] = Function("cosine", (Param("a"), Param("b")), builder.cosine, "cosine similarity along the last axis")
    return table
