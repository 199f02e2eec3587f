"""Functions an expression may call, and :func:`evaluate`, which walks a tree against a
table of them (binding arguments, checking their kinds).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from onnxsurgeon.errors import InputError
from onnxsurgeon.expr.syntax import (
    IDENTIFIER,
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
    Str,
)
from onnxsurgeon.expr.types import Record, Value

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
        if p.kind == "operand" and is_number(v):
            return v
        hint = "pick one output with .NAME" if isinstance(v, Record) else None
        raise ExprError(f"argument {p.name!r} of {fn.name} must be {KINDS[p.kind]}, not {_describe(v)}", hint, pos)
    ok = {
        "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
        "number": is_number,
        "string": lambda x: isinstance(x, str),
        "bool": lambda x: isinstance(x, bool),
    }[p.kind](v)
    if not ok:
        raise ExprError(f"argument {p.name!r} of {fn.name} must be {KINDS[p.kind]}, not {_describe(v)}", None, pos)
    return v


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
