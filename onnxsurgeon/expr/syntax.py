"""The syntax of expressions: positions and errors, the tree, :func:`parse` (Python's
:mod:`ast` in ``eval`` mode, only the allowed node kinds kept) and constant folding.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

from onnxsurgeon.errors import InputError

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
