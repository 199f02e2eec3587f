"""Einsum written as ReduceSum, Transpose, Unsqueeze, MatMul and Squeeze for training:
onnxruntime-training 1.19 has no gradient for Einsum (transformer exports use it for
attention scores and for linear layers over sequences).

With one operand, the letters missing from the output are summed and the rest transposed.
With two, letters of one operand that neither the other nor the output has are summed
first; then each letter is a batch letter (both operands and the output), a free letter of
one operand (it and the output) or the contracted letter (both operands, not the output).
Both operands are laid out for one MatMul, ``[batch, free of A but its last, free of B but
its last, last free of A, contracted] @ [batch, ..., contracted, last free of B]``, with
size-1 axes where an operand lacks a letter (MatMul broadcasts over them), and the result
is squeezed and transposed into the output's order. Every op used has a gradient with a
CPU kernel. Refused with the reason: more than two operands, a letter repeated within one
operand (a diagonal), more than one contracted letter, ``...`` where the rank is not
known, and equations that are not valid ONNX (a character other than a letter, an output
letter no operand has), which onnxruntime's own Einsum refuses as well.
"""

from __future__ import annotations

import onnx

from onnxsurgeon.train.rewrite_core import Builder, Context, Unsupported, attrs_of, text

ONE = "_"  # a size-1 axis an operand lacks


def _letters(equation: str, node: onnx.NodeProto, cx: Context) -> tuple[list[str], str]:
    """The operands' letters and the output's, with ``...`` spelled out in letters the
    equation does not use."""
    equation = equation.replace(" ", "")
    lhs, arrow, out = equation.partition("->")
    terms = lhs.split(",")
    for term in (*terms, out):  # the model is not valid ONNX; onnxruntime's Einsum refuses it too
        bad = "".join(dict.fromkeys(c for c in term.replace("...", "", 1) if not (c.isascii() and c.isalpha())))
        if bad:
            raise Unsupported(f"{bad!r} in {equation!r} is not a letter (a-z, A-Z) or one '...' per term")
    if len(terms) != len(node.input):
        raise Unsupported(f"equation {equation!r} names {len(terms)} operands for {len(node.input)} inputs")
    ellipsis = ""
    for k, term in enumerate(terms):
        if "..." in term:
            rank = cx.rank(node.input[k])
            if rank is None:
                raise Unsupported(f"'...' in {equation!r} and the rank of {node.input[k]!r} is not known")
            width = rank - (len(term) - 3)
            if ellipsis and width != len(ellipsis):
                raise Unsupported(f"'...' stands for axes of different counts in {equation!r}")
            unused = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in equation]
            ellipsis = "".join(unused[:width])
            terms[k] = term.replace("...", ellipsis)
    if not arrow:  # implicit output: the ellipsis, then the letters seen once, in order
        joined = "".join(terms)
        out = ellipsis + "".join(sorted(c for c in set(joined) if joined.count(c) == 1 and c not in ellipsis))
    out = out.replace("...", ellipsis)
    missing = "".join(c for c in out if c not in "".join(terms))
    if missing:
        raise Unsupported(f"the output's {missing!r} is in no operand of {equation!r}")
    for term in (*terms, out):
        if len(set(term)) != len(term):
            raise Unsupported(f"a letter repeats within {term!r} (a diagonal) in {equation!r}")
    return terms, out


def _sum_out(b: Builder, x: str, term: str, keep: str) -> tuple[str, str]:
    """`x` summed over the axes of letters not in `keep`."""
    gone = [k for k, c in enumerate(term) if c not in keep]
    if not gone:
        return x, term
    return b.reduce("ReduceSum", x, gone, keepdims=0), "".join(c for c in term if c in keep)


def _arrange(b: Builder, x: str, term: str, layout: list[str]) -> str:
    """`x` (axes `term`) transposed into the order of `layout`, with size-1 axes at its ONEs."""
    order = [c for c in layout if c != ONE]
    perm = [term.index(c) for c in order]
    if perm != list(range(len(perm))):
        x = b.op("Transpose", x, perm=perm)
    ones = [k for k, c in enumerate(layout) if c == ONE]
    return b.op("Unsqueeze", x, b.ints(ones)) if ones else x


def _to_output(b: Builder, x: str, term: list[str] | str, out: str, name: str) -> None:
    """`x` (axes `term`) transposed into the output's order, written to `name`."""
    perm = [list(term).index(c) for c in out]
    if perm == list(range(len(perm))):
        b.op("Identity", x, out=name)
    else:
        b.op("Transpose", x, out=name, perm=perm)


def einsum(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    equation = text(attrs_of(node).get("equation", ""))
    terms, out = _letters(equation, node, cx)
    b = Builder(node, cx)
    if len(terms) == 1:
        x, term = _sum_out(b, node.input[0], terms[0], out)
        _to_output(b, x, term, out, node.output[0])
        return b.nodes
    if len(terms) != 2:
        raise Unsupported(f"{len(terms)} operands (one or two are rewritten)")
    x, tx = _sum_out(b, node.input[0], terms[0], terms[1] + out)
    y, ty = _sum_out(b, node.input[1], terms[1], tx + out)
    batch = [c for c in out if c in tx and c in ty]
    free_x = [c for c in out if c in tx and c not in ty]
    free_y = [c for c in out if c in ty and c not in tx]
    contracted = [c for c in tx if c in ty and c not in out]
    if len(contracted) > 1:
        raise Unsupported(f"{''.join(contracted)!r} are all contracted in {equation!r} (one letter is rewritten)")
    inner = contracted or [ONE]
    last_x, last_y = free_x[-1:] or [ONE], free_y[-1:] or [ONE]
    lead_x, lead_y = free_x[:-1], free_y[:-1]
    left = _arrange(b, x, tx, [*batch, *lead_x, *[ONE] * len(lead_y), *last_x, *inner])
    right = _arrange(b, y, ty, [*batch, *[ONE] * len(lead_x), *lead_y, *inner, *last_y])
    product = b.op("MatMul", left, right)
    result = [*batch, *lead_x, *lead_y, *last_x, *last_y]
    squeezed = [i for i, c in enumerate(result) if c == ONE]
    if squeezed:
        product = b.op("Squeeze", product, b.ints(squeezed))
    _to_output(b, product, [c for c in result if c != ONE], out, node.output[0])
    return b.nodes
