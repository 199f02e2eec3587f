"""`nodes --grep` searches all names as one text; it must find exactly the nodes that a
search of every name and alias, one by one, finds."""

from __future__ import annotations

import random
import re

import onnx
import pytest

import onnxsurgeon as osg
from onnxsurgeon import inspection
from onnxsurgeon.names import alias

PATTERNS = ["L4_y", "A_b", "X$", "^B", "a\\.B", "[@-_]", "A.{2}b", "x|A1", "(Ab)+", "(a)\\1", "[a-z]_", "^_0", "x$", "a.b", "^1", "0_x", "layers_0__W", "^_", "_$", "a*", "", "b?a", "^x_1$",
            "[0-9]_", "ab|ba", "\\.", "a.{2}b", "::", "^", "^_.$", "_x$", "é_", "x_[0-9]+$", "\\s", "(?i)A", "\\Ab", "b\\Z",
            "[a\\x0a]*+$", "(a|\\012)++$", "[a\\n]?+$", "(b|\\u000a){1,3}+$"]


def _one_by_one(pattern: re.Pattern[str], nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    return [n for n in nodes if any(pattern.search(x) or pattern.search(alias(x)) for x in [n.name, *n.output, *n.input] if x)]


@pytest.mark.parametrize("seed,alphabet", [(0, "ab0_./[]:x1é٣"), (1, "ab0_./[]:x1é٣"), (2, "ab0_./[]:x1é٣"),
                                           (3, "aAbB0_./[]:x1@`"), (4, "aAbB0_./[]:x1@`")])
def test_grep_finds_what_a_search_of_each_name_finds(seed, alphabet):
    """Names of non-ASCII characters (searched as they are) and of ASCII (searched in lower case)."""
    rng = random.Random(seed)

    def name() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))

    nodes = [
        onnx.helper.make_node("Relu", [name() for _ in range(rng.randint(0, 3))], [name() or "o" for _ in range(rng.randint(1, 2))], name=name())
        for _ in range(1500)
    ]
    for p in PATTERNS:
        pattern = re.compile(p, re.IGNORECASE)
        assert [id(n) for n in inspection._grep(pattern, nodes)] == [id(n) for n in _one_by_one(pattern, nodes)], p


def test_nodes_report_is_unchanged_on_the_fixtures():
    """Listing with types as before: every line of the autoencoder fixture and a grep."""
    from tests.corpus import corpus_models

    for model_id, path in corpus_models()[:12]:
        model = osg.load(path)
        full = osg.nodes(model)
        assert len(full.nodes) == len(model.graph.node)
        for p in ("MatMul", "^/", "_1$", "weight"):
            got = osg.nodes(model, grep=p)
            pattern = re.compile(p, re.IGNORECASE)
            want = {id(n) for n in _one_by_one(pattern, list(model.graph.node))}
            assert len(got.nodes) == len(want), (model_id, p)
            by_output = {n.outputs: n for n in full.nodes}
            for line in got.nodes:
                assert line == by_output[line.outputs]  # same types as in the full listing
