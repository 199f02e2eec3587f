"""Turning the names a user writes into values of the model (SPEC section 1).

A name is an exact value name, else an exact node name (its output; ``NODE:INDEX`` for a
node with several), else an alias: CNTK's rule (``.``, ``[`` and ``]`` may each be written
``_``) extended so that every value can be named in an expression: any character that
cannot stand in an identifier may be written ``_``, and a name that starts with a digit may
get a leading ``_`` (``gpu_0_softmax_1`` for ``gpu_0/softmax_1``, ``_layer1_Add_output_0``
for ``/layer1/Add_output_0``). All names are resolved before any work and every miss is
reported at once.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass
from functools import cached_property

from onnxsurgeon.errors import InputError
from onnxsurgeon.graph import GraphIndex

_NOT_IDENTIFIER = re.compile(r"\W")  # \w: the characters that may continue a Python identifier
_NODE_INDEX = re.compile(r"^(.*):(\d+)$")


_ASCII_NOT_IDENTIFIER = {c: "_" for c in range(128) if c != ord("\n") and _NOT_IDENTIFIER.match(chr(c))}
_LEADING_DIGIT = re.compile(r"\n(?=[0-9])")  # (not "^" in MULTILINE mode: ten times slower)


def alias_lines(text: str) -> str:
    """:func:`alias` of every line of `text` (names joined by line breaks), all at once: one
    translation of the text instead of a regular expression call per name (a second on a
    200k-node graph)."""
    if text.isascii():  # each character \W becomes _, and only a digit cannot start an identifier
        out = _LEADING_DIGIT.sub("\n_", text.translate(_ASCII_NOT_IDENTIFIER))
        return "_" + out if out[:1].isdigit() else out
    table = {ord(c): "_" for c in set(text) if c != "\n" and _NOT_IDENTIFIER.match(c)}
    return "\n".join([a if not a or a[:1].isidentifier() else "_" + a for a in text.translate(table).split("\n")])


def alias(name: str) -> str:
    """The alias of a name, an identifier: every character that cannot stand in one written
    ``_`` (CNTK's ``.``, ``[`` and ``]`` among them), and a ``_`` in front of a leading digit.

    Two names denote the same value by alias when their aliases are equal; the alias of an
    alias is itself, so ``alias(query) == alias(name)`` is the whole rule (``0_x``, ``_0_x``
    and ``0.x`` all match ``0/x``).
    """
    out = _NOT_IDENTIFIER.sub("_", name)
    if out and not out[0].isidentifier():  # a digit (or a mark) cannot start an identifier
        out = "_" + out
    return out


@dataclass(frozen=True)
class Resolved:
    """How one name the user wrote was understood."""

    query: str
    value: str
    how: str  # "value", "node", "node-output" or "alias"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class Resolver:
    """Resolves names against one graph; builds its look-up tables only when needed."""

    def __init__(self, index: GraphIndex, model_hint: str = "MODEL") -> None:
        self.index = index
        self.model_hint = model_hint

    @cached_property
    def _aliases(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in self.index.value_names():
            out.setdefault(alias(name), []).append(name)
        for name, i in self.index.node_by_name.items():
            outputs = [o for o in self.index.nodes[i].output if o]
            if len(outputs) == 1 and name not in outputs:
                out.setdefault(alias(name), []).append(outputs[0])
        return {k: sorted(set(v)) for k, v in out.items()}

    def resolve(self, query: str) -> Resolved:
        """Resolve one name, or raise an :class:`InputError` that explains the miss."""
        problem = self._try(query)
        if isinstance(problem, Resolved):
            return problem
        raise InputError(problem, self._hint(query))

    def resolve_all(self, queries: list[str]) -> list[Resolved]:
        """Resolve every name, reporting all misses in one error."""
        results: list[Resolved] = []
        problems: list[str] = []
        missed: list[str] = []
        for q in queries:
            r = self._try(q)
            if isinstance(r, Resolved):
                results.append(r)
            else:
                problems.append(r)
                missed.append(q)
        if problems:
            if len(problems) == 1:
                raise InputError(problems[0], self._hint(missed[0]))
            raise InputError(
                f"{len(problems)} names could not be resolved:\n" + "\n".join(f"  - {p}" for p in problems),
                self._hint(None),
            )
        return results

    def _hint(self, query: str | None) -> str:
        grep = f" --grep {_short(query)}" if query else " --grep TEXT"
        return f"list the names with: onnxsurgeon nodes {self.model_hint}{grep}"

    def _try(self, query: str) -> Resolved | str:
        index = self.index
        if index.has_value(query):
            return Resolved(query, query, "value")
        node_i = index.node_by_name.get(query)
        if node_i is not None:
            outputs = [o for o in index.nodes[node_i].output if o]
            if len(outputs) == 1:
                return Resolved(query, outputs[0], "node")
            listed = ", ".join(f"{query}:{i} = {o}" for i, o in enumerate(outputs))
            return f"node {query!r} has {len(outputs)} outputs; name one of them: {listed}"
        m = _NODE_INDEX.match(query)
        if m and m.group(1) in index.node_by_name:
            node = index.nodes[index.node_by_name[m.group(1)]]
            k = int(m.group(2))
            if k < len(node.output) and node.output[k]:
                return Resolved(query, node.output[k], "node-output")
            return f"node {m.group(1)!r} has no output {k} (it has {len(node.output)})"
        candidates = self._aliases.get(alias(query), [])
        if len(candidates) == 1:
            return Resolved(query, candidates[0], "alias")
        if candidates:
            return f"{query!r} is ambiguous: it is the alias of " + ", ".join(repr(c) for c in candidates)
        close = self.suggest(query)
        suggestion = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"no value or node named {query!r}{suggestion}"

    def suggest(self, query: str, n: int = 5) -> list[str]:
        """Up to n names that look like the query."""
        key = alias(query).lower()
        names = {alias(k).lower(): v[0] for k, v in self._aliases.items()}
        close = difflib.get_close_matches(key, list(names), n=n, cutoff=0.6)
        if len(close) < n:  # a name the query is part of is a likely target too
            close += [k for k in names if key in k and k not in close][: n - len(close)]
        return [names[c] for c in close]


def _short(query: str) -> str:
    word = re.split(r"[^A-Za-z0-9]+", query)
    best = max(word, key=len) if word else query
    return best or query


def resolve(model, /, names: list[str]) -> list[Resolved]:
    """Resolve names against a model's main graph (SPEC section 1); all misses at once."""
    return Resolver(GraphIndex(model.graph)).resolve_all(list(names))
