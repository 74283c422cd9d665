"""The storage's submission parser: one parse per distinct graph, same validation as the core."""

from __future__ import annotations

import pytest

from orbweaver import _core
from orbweaver.storage.submissions import SubmissionParser
from support import graphs


def test_jobs_of_one_graph_share_one_parse() -> None:
    parser = SubmissionParser()
    g = graphs.compressed(graphs.diamond())
    subs = [parser.parse(g, graphs.int_inputs(x)) for x in range(5)]
    assert len(parser) == 1
    assert all(s.num_inputs == 1 and s.graph.num_tasks == 4 for s in subs)
    parser.parse(graphs.compressed(graphs.single()), graphs.int_inputs(1))
    assert len(parser) == 2


def test_cached_graph_still_validates_each_submissions_inputs() -> None:
    parser = SubmissionParser()
    g = graphs.compressed(graphs.single())
    parser.parse(g, graphs.int_inputs(1))
    with pytest.raises(_core.InvalidGraphError, match="expects 1 graph inputs but 2"):
        parser.parse(g, graphs.int_inputs(1, 2))
    with pytest.raises(_core.InvalidGraphError, match="not valid zstd"):
        parser.parse(g, b"junk")


def test_invalid_graphs_are_refused_and_not_remembered() -> None:
    parser = SubmissionParser()
    with pytest.raises(_core.InvalidGraphError):
        parser.parse(_core.compress(b"not json"), graphs.int_inputs(1))
    assert len(parser) == 0


def test_the_cache_is_bounded() -> None:
    parser = SubmissionParser(max_graphs=2, max_graph_bytes=10_000)
    for n in range(1, 5):
        parser.parse(
            graphs.compressed(graphs.graph([graphs.task("t")] * n)), graphs.int_inputs(*range(n))
        )
    assert len(parser) == 2
    tiny = SubmissionParser(max_graph_bytes=1)
    tiny.parse(graphs.compressed(graphs.single()), graphs.int_inputs(1))
    assert len(tiny) == 0
