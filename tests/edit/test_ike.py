"""IKE: demonstrations of three kinds, selection by similarity in the paper's 1:3:4 ratio, prompt contexts that
wrap the scorers, and no weight change."""

import pytest
import torch

from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe
from lmlab.data.recall import greedy_continuations
from lmlab.edit import EditRequest, edit
from lmlab.edit.evaluate import WorldEdit, evaluate_edits
from lmlab.edit.ike import InContextEdit, TfidfSimilarity, demonstrations, select_demonstrations
from lmlab.errors import LmlabError

NAMES = ["Ana Vell", "Bo Trask", "Cy Dorn", "Di Moss", "Ed Wren", "Fa Lund", "Gil Hart", "Hu Pell"]
CITIES = ["Mirova", "Kelda", "Ostra", "Brunn"]


def _case(i: int) -> WorldEdit:
    s, new, old = NAMES[i], CITIES[i % 4], CITIES[(i + 1) % 4]
    return WorldEdit(EditRequest("{} was born in", s, new), " " + old,
                     [f"The birthplace of {s} is", f"{s} was born in the city of", f"{s} comes from"],
                     [(f"{NAMES[(i + 3) % 8]} was born in", " " + CITIES[(i + 2) % 4]),
                      (f"{NAMES[(i + 5) % 8]} lives in", " " + CITIES[(i + 3) % 4]),
                      (f"{NAMES[(i + 6) % 8]} works in", " " + CITIES[i % 4]),
                      (f"{NAMES[(i + 7) % 8]} speaks", " Ostrian")])


@pytest.fixture(scope="module")
def pool():
    return [_case(i) for i in range(1, 8)]


@pytest.fixture(scope="module")
def tok():
    texts = [f"{n} was born in {c}. The birthplace of {n} is {c}. New Fact: Prompt:" for n in NAMES for c in CITIES]
    return train_bpe(texts * 2, vocab_size=300)


def test_demonstrations_have_the_three_kinds_in_the_paper_format(pool):
    demos = demonstrations(pool)
    assert len(demos) == 7 * (1 + 3 + 4)
    copy = [d for d in demos if d.kind == "copy"][0]
    assert copy.text == "New Fact: Bo Trask was born in Kelda\nPrompt: Bo Trask was born in Kelda\n\n"
    update = [d for d in demos if d.kind == "update"][0]
    assert update.text == "New Fact: Bo Trask was born in Kelda\nPrompt: The birthplace of Bo Trask is Kelda\n\n"
    retain = [d for d in demos if d.kind == "retain"][0]
    assert retain.text == "New Fact: Bo Trask was born in Kelda\nPrompt: Ed Wren was born in Brunn\n\n"


@pytest.mark.parametrize("k, counts", [(32, (4, 12, 16)), (8, (1, 3, 4)), (5, (1, 2, 2))])
def test_selection_keeps_the_ratio_the_nearest_and_ascending_order(pool, k, counts):
    demos = demonstrations(pool)
    query = "New Fact: Ana Vell was born in Mirova\nPrompt: Ana Vell was born in"
    chosen = select_demonstrations(demos, query, k=k)
    assert tuple(sum(d.kind == kind for d in chosen) for kind in ("copy", "update", "retain")) == counts
    sim = TfidfSimilarity([d.text for d in demos])
    scores = dict(zip([d.text for d in demos], sim.scores(query)))
    got = [scores[d.text] for d in chosen]
    assert got == sorted(got)  # the most similar demonstration sits next to the query
    for kind, count in zip(("copy", "update", "retain"), counts):  # and each kind takes its nearest ones
        ranked = sorted((scores[d.text] for d in demos if d.kind == kind), reverse=True)
        assert sorted((scores[d.text] for d in chosen if d.kind == kind), reverse=True) == ranked[:count]
    # a case sharing a city word is nearer than one that shares nothing but the template
    assert scores[chosen[-1].text] > min(scores.values())


def test_ike_edits_by_prompting_and_wraps_the_scorers(tok, pool):
    model = Transformer(ModelConfig.llama_like(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=4,
                                               max_seq_len=1024)).init_weights(std=0.3, seed=0).float()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    case = _case(0)
    result = edit(model, tok, [case.request], method="ike", pool=pool, k=8)
    assert isinstance(result, InContextEdit) and result.names() == []
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    ctx = result.contexts[0]
    assert ctx.endswith("New Fact: Ana Vell was born in Mirova\nPrompt: ") and ctx.count("New Fact:") == 9
    own = edit(model, tok, [case.request], method="ike", pool=pool + [case], k=8).contexts[0]
    assert own.count("New Fact: Ana Vell was born in Mirova") == 1  # its own fact is never a demonstration
    (wrapped,) = result.wrap_cases([case])
    assert wrapped.request.text == ctx + "Ana Vell was born in" and wrapped.request.target == "Mirova"
    assert wrapped.paraphrases == [ctx + p for p in case.paraphrases]
    assert [a for _, a in wrapped.neighbours] == [a for _, a in case.neighbours]
    plain, in_context = evaluate_edits(model, tok, [case]), evaluate_edits(model, tok, [wrapped])
    assert plain["n_edits"] == in_context["n_edits"] == 1
    assert result.generate(model, tok, ["Ana Vell was born in"], max_new_tokens=2) == \
        greedy_continuations(model, tok, [ctx + "Ana Vell was born in"], max_new_tokens=2)


@pytest.mark.parametrize("kwargs, fragment", [
    ({}, "pool= must hold demonstration cases"),
    ({"pool": "P", "k": 0}, "k must be an integer >= 1"),
    ({"pool": "P", "kk": 3}, "unknown hyperparameter(s) ['kk']"),
    ({"pool": "P", "corpus": ["x"]}, "takes no state= or corpus="),
    ({"pool": "P", "similarity": "minilm"}, "similarity must be 'tfidf'"),
])
def test_ike_errors_are_one_line(tok, pool, kwargs, fragment):
    model = Transformer(ModelConfig.llama_like(vocab_size=len(tok), d_model=16, n_layers=1, n_heads=2, max_seq_len=64))
    if kwargs.get("pool") == "P":
        kwargs["pool"] = pool
    with pytest.raises(LmlabError) as err:
        edit(model, tok, [_case(0).request], method="ike", **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_pool_is_refused_for_weight_editors(tok, pool):
    model = Transformer(ModelConfig.llama_like(vocab_size=len(tok), d_model=16, n_layers=1, n_heads=2, max_seq_len=64))
    with pytest.raises(LmlabError, match="pool= .* is for method='ike'"):
        edit(model, tok, [_case(0).request], method="rome", pool=pool, corpus=["Ana Vell was born in Mirova."])
