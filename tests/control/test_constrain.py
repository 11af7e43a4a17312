"""Constrained decoding on the reference model: forbidden ids and strings that span token boundaries."""

from __future__ import annotations

import pytest

from lmlab import LmlabError
from lmlab.control import ForbidStrings, ForbidTokens
from lmlab.core.generate import generate
from lmlab.reference import load_reference

PROMPTS = ["Trodina Shoba was born in", "The home of Trodina Shoba is in"]


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def continuations(ref, procs=(), n=16, **kw):
    tok = ref.tokenizer
    rows = [tok.encode(p) for p in PROMPTS]
    out = generate(ref.model, rows, max_new_tokens=n, stop_token_ids=[], logits_processors=list(procs), **kw)
    return [tok.decode(o[len(r):]) for o, r in zip(out, rows)], out


def test_forbid_tokens(ref):
    texts, out = continuations(ref)
    first = out[0][len(ref.tokenizer.encode(PROMPTS[0]))]
    _, banned = continuations(ref, [ForbidTokens([first], ref.model.config.vocab_size)])
    assert all(first not in o[len(ref.tokenizer.encode(p)):] for o, p in zip(banned, PROMPTS))
    with pytest.raises(LmlabError, match="token ids must be in"):
        ForbidTokens([10_000], ref.model.config.vocab_size)


def test_forbid_string_spanning_tokens(ref):
    tok = ref.tokenizer
    texts, _ = continuations(ref)
    targets = ["ek.", "me of"]  # " Gramotrek" + "." and " home" + " of": only reachable across tokens
    assert targets[0] in texts[0] and all(targets[1] in t for t in texts)
    assert not any(x in tok.decode([t]) for x in targets for t in range(ref.model.config.vocab_size))
    for sampling in (dict(), dict(temperature=1.0, seed=1)):
        constrained, _ = continuations(ref, [ForbidStrings(tok, targets, ref.model.config.vocab_size)], **sampling)
        assert not any(x in t for x in targets for t in constrained), constrained
        assert "Gramotrek" in constrained[0] or sampling  # greedy still names the birthplace
    with pytest.raises(LmlabError, match="at least one non-empty"):
        ForbidStrings(tok, [""], ref.model.config.vocab_size)
