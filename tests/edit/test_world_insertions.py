"""Insertion edits for counts beyond the world's true facts: new people only, targets of the reference world,
distinct (subject, relation) pairs, reproducible, and a clear error when the other worlds run out."""

import pytest

from lmlab.data.world.templates import prompt_of
from lmlab.edit.world_insertions import insertion_edits
from lmlab.errors import LmlabError
from lmlab.reference import load_reference


@pytest.fixture(scope="module")
def world():
    return load_reference().world


def test_a_thousand_insertions_about_unknown_people(world):
    edits = insertion_edits(world, 1000, seed=0)
    assert len(edits) == 1000
    known = {f.subject for f in world.facts}
    pairs = {(e.request.subject, e.request.prompt) for e in edits}
    assert len(pairs) == 1000  # each (person, relation) once
    for e in edits:
        subject = e.request.subject
        assert subject not in known
        relation = next(r for r, rel in world.relations.items() if prompt_of(rel.train_templates[0], "{}") ==
                        e.request.prompt)
        objects = {f.object for f in world.facts if f.relation == relation}
        assert e.request.target in objects and e.old.strip() in objects and e.old.strip() != e.request.target
        assert e.paraphrases and all(subject in p for p in e.paraphrases)
        assert e.neighbours and all(subject not in p for p, _ in e.neighbours)
    assert [e.request for e in insertion_edits(world, 50, seed=3)] == [e.request for e in insertion_edits(world, 50, seed=3)]


def test_running_out_of_new_people_is_one_clear_error(world):
    with pytest.raises(LmlabError, match="insertion_edits: n=100000 but 1 other worlds hold only"):
        insertion_edits(world, 100000, max_worlds=1)
