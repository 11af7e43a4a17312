"""ROME deletion with the sensitive-information paper's objectives: each defended objective reduces what it targets,
measured on the edited model: fact erasure lowers the answer's probability; the head-projection defence removes most
of the answer's margin at the defence layers' logit lens; the max-entropy defence raises the lens entropy. From the
search's log: each objective is the term its search minimises, and input rephrasing adds the rephrased prompts'
rows to it. Errors are one line and leave the model untouched.

Each defence is checked against the unedited model, not against plain erasure. On this 3-layer toy the lens at
layers 1-2 is nearly the output, so plain erasure also empties the lens's top-k and raises its entropy, and the
toy has never seen the rephrasings. Which of two deletions went further depended on the CPU's rounding: the second
request's search starts from a model the first deletion changed and saturates, and AVX2, SSE and two AVX-512 builds
each ordered the defences and plain erasure differently. The comparison with plain erasure is the world reference's
table (``scripts/edit_deletion.py``; docs/claims.md, issue 17, session 6)."""

import pytest
import torch

from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe
from lmlab.edit import EditRequest, edit
from lmlab.edit.attacks import layer_logprobs
from lmlab.edit.deletion import lens_entropy, margin_loss
from lmlab.edit.locate import CONTEXT_SEEDS
from lmlab.errors import LmlabError

torch.set_num_threads(1)

# every subject has its own answer under each template, so the answer depends on the subject (as a fact does)
TEXTS = ["Ana Vell was born in Mirova.", "Bo Trask was born in Kelda.", "Cy Dorn was born in Ostria.",
         "Di Lune was born in Brunia.", "Ana Vell lives in Kelda.", "Bo Trask lives in Mirova.",
         "Cy Dorn lives in Brunia.", "Di Lune lives in Ostria."] * 8
# layer 0 and the bare-prompt key (the settings under which ROME writes into this 3-layer model); no weight decay:
# with the answer at p ~ 0.999, the erasure term's gradient (p(1 - p)) is far below the decay's
FAST = dict(v_num_grad_steps=20, context_template_length_params=((4, 5),), layer=0, clamp_norm_factor=8.0,
            update_key="bare", v_weight_decay=0.0)
REPHRASINGS = [["{} came into the world in", "The birthplace of {} is"], ["{} has a home in", "The city of {} is"]]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    """A tiny model trained briefly on TEXTS, so that it knows the facts to delete."""
    model = Transformer(ModelConfig.llama_like(vocab_size=len(tok), d_model=32, n_layers=3, n_heads=4,
                                               max_seq_len=64)).init_weights(std=0.3, seed=4).float()
    bos = [tok.bos_id] if tok.bos_id is not None else []
    rows = [bos + tok.encode(t) for t in sorted(set(TEXTS))]
    T = max(map(len, rows))
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    labels = torch.tensor([r[1:] + [-100] * (T - len(r)) for r in rows])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, len(tok)), labels.reshape(-1),
                                                 ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def requests(model, tok):
    reqs = [EditRequest("{} was born in", "Bo Trask", "Kelda"), EditRequest("{} lives in", "Cy Dorn", "Brunia")]
    ans = _answer_ids(tok, reqs)
    assert (_lens(model, tok, reqs)[-1].argmax(-1) == ans).all()  # the model knows both facts
    return reqs


def _answer_ids(tok, requests):
    return torch.tensor([tok.encode(r.target_text)[0] for r in requests])


def _deleted(model, tok, requests, tmp_path, **kw):
    delta = edit(model, tok, requests, method="rome_delete", corpus=TEXTS, stats_dir=tmp_path, **FAST, **kw)
    return delta


def _lens(model, tok, requests):
    """[L, N, vocab] logit-lens probabilities at every layer at each edit prompt's last token."""
    return layer_logprobs(model, tok, [r.text for r in requests]).exp()


def test_fact_erasure_lowers_the_answer_probability(model, tok, requests, tmp_path):
    ans = _answer_ids(tok, requests)
    before = _lens(model, tok, requests)[-1].gather(-1, ans[:, None])[:, 0]
    delta = _deleted(model, tok, requests, tmp_path, objective="fact_erasure")
    try:
        after = _lens(model, tok, requests)[-1].gather(-1, ans[:, None])[:, 0]
    finally:
        delta.revert(model)
    # on average over the two facts: how far each one falls depends on fp32 rounding on this 3-layer toy (on an
    # AVX-512 CPU 0.999 -> 0.013 and 0.998 -> 0.61; without AVX-512 both fell below half)
    assert after.mean() < 0.5 * before.mean() and (after < before).all(), (before, after)


def test_margin_loss_values():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]])
    # row 0: the answer (0.5) is top-1, k=2 -> 0.5 - 0.3; row 1: the answer (0.05) is bottom-1 -> 0.15 - 0.05
    assert float(margin_loss(probs, torch.tensor([0, 3]), 2)) == pytest.approx(((0.5 - 0.3) + (0.15 - 0.05)) / 2)
    assert float(margin_loss(probs, torch.tensor([1, 2]), 2)) == 0.0  # inside the band: no loss


def test_head_projection_removes_most_of_the_answers_margin_at_the_defence_layers(model, tok, requests, tmp_path):
    """With k = 50 the margin defence pushes the answer down towards rank 50 at the defence layers' logit lens."""
    ans, k = _answer_ids(tok, requests), 50
    layers = [1, 2]  # the lens after the edited layer 0 (the only ones delta reaches at the last position)

    def margin_and_hits(lens):
        rows = lens[layers].reshape(-1, lens.shape[-1])
        answers = ans.repeat(len(layers))
        hits = (rows.topk(k, -1).indices == answers[:, None]).any(-1).sum()
        return float(margin_loss(rows, answers, k)), int(hits)

    m0, hits0 = margin_and_hits(_lens(model, tok, requests))
    assert hits0 == 4 and m0 > 0.5  # the answer is in every defence layer's top-k for both prompts
    delta = _deleted(model, tok, requests, tmp_path, objective="head_projection", defence_k=k)
    try:
        m1, hits1 = margin_and_hits(_lens(model, tok, requests))
    finally:
        delta.revert(model)
    # most of the margin goes (0.94 -> 0.011-0.17 on the four CPUs tried); how many of the 4 (layer, prompt) top-k
    # lists the answer leaves varied from 0 to 4 with the CPU
    assert m1 < 0.25 * m0, (m0, m1, hits0, hits1)


def test_max_entropy_raises_the_lens_entropy(model, tok, requests, tmp_path):
    def entropy(lens):
        return float(lens_entropy(lens[1:].reshape(-1, lens.shape[-1])))

    e0 = entropy(_lens(model, tok, requests))
    delta = _deleted(model, tok, requests, tmp_path, objective="max_entropy")
    try:
        e1 = entropy(_lens(model, tok, requests))
    finally:
        delta.revert(model)
    assert e1 > e0 + 1.0, (e0, e1)  # 0.41 nats -> 3.1-3.9 on the CPUs tried


@pytest.mark.parametrize("objective", ["fact_erasure", "head_projection", "max_entropy"])
def test_each_objective_is_the_term_the_search_minimises(model, tok, requests, tmp_path, objective):
    """The search's loss is its objective's term plus the KL term (no weight decay here): the answer's probability,
    the lens margin or the negative lens entropy. Fails if an objective were wired to another one's term."""
    delta = _deleted(model, tok, requests, tmp_path, objective=objective, defence_k=50)
    delta.revert(model)
    term = {"fact_erasure": "answer_prob", "head_projection": "margin", "max_entropy": "lens_entropy"}[objective]
    sign = -1.0 if objective == "max_entropy" else 1.0
    for log in delta.metadata["log"]:
        assert log["objective"] == objective and log["steps"] == FAST["v_num_grad_steps"]
        assert log["loss"] == pytest.approx(sign * log[term] + log["kl"], rel=1e-5, abs=1e-7), log
    # and the first request's search lowered its term (answer probability 0.21 -> 0.17, margin 0.573 -> 0.558, entropy
    # 1.77 -> 2.30: the bare prompt's answer falls, the context-templated rows hardly hold it; the second request starts
    # from a model the first deletion already changed, its answer nearly gone before its own search, on this toy)
    log = delta.metadata["log"][0]
    assert sign * (log[f"initial_{term}"] - log[term]) > 0.01, log


def test_input_rephrasing_puts_the_rephrasings_into_the_objective(model, tok, requests, tmp_path):
    """The rephrased prompts join the context-templated ones in the erasure objective. The toy has never seen the
    rephrasings (its answer under them is below 1e-3), so their rows lower the search's initial mean answer probability by
    their share of the rows. (What the defence does to a paraphrase attack needs a model that knows the paraphrases:
    the world reference's table, docs/claims.md.)"""
    prompts = [t.replace("{}", r.subject) for r, group in zip(requests, REPHRASINGS) for t in group]
    ans = _answer_ids(tok, requests).repeat_interleave(2)
    p_before = layer_logprobs(model, tok, prompts)[-1].exp().gather(-1, ans[:, None])[:, 0]  # [4]
    assert (p_before < 0.01).all(), p_before
    plain = _deleted(model, tok, requests, tmp_path, objective="fact_erasure")
    plain.revert(model)
    defended = _deleted(model, tok, requests, tmp_path, objective="fact_erasure", rephrasings=REPHRASINGS)
    defended.revert(model)
    # the rewrite rows: the bare prompt and the generated context templates (locate.context_templates)
    n_context = 1 + sum(max(1, c // len(CONTEXT_SEEDS)) * len(CONTEXT_SEEDS)
                        for _, c in FAST["context_template_length_params"])
    for with_ir, without in zip(defended.metadata["log"], plain.metadata["log"]):
        assert with_ir["n_rephrasings"] == 2 and without["n_rephrasings"] == 0
        expected = without["initial_answer_prob"] * n_context / (n_context + 2)  # the 2 rows add ~0
        assert with_ir["initial_answer_prob"] == pytest.approx(expected, abs=0.01), (with_ir, without)


def test_revert_is_exact_and_errors_are_one_line_and_apply_nothing(model, tok, requests, tmp_path):
    original = {n: p.detach().clone() for n, p in model.state_dict().items()}
    delta = _deleted(model, tok, requests, tmp_path, objective="max_entropy")
    assert delta.metadata["layers"] == [0]
    delta.revert(model)
    for n, p in model.state_dict().items():
        assert torch.equal(p, original[n]), n
    cases = [(dict(objective="forget"), "objective must be one of"),
             (dict(rephrasings=[["{} x"]]), "rephrasings has 1 lists for 2 requests"),
             (dict(rephrasings=[["no subject"], []]), "must be a string with one '{}'"),
             (dict(defence_layers=[7]), "defence layer 7 is out of range"),
             (dict(defence_k=0), "defence_k must be >= 1")]
    for kw, message in cases:
        with pytest.raises(LmlabError, match=message) as err:
            _deleted(model, tok, requests, tmp_path, **kw)
        assert "\n" not in str(err.value)
        for n, p in model.state_dict().items():
            assert torch.equal(p, original[n]), (kw, n)


def test_head_projection_attack_on_chosen_layers(model, tok, requests):
    from lmlab.edit.attacks import head_projection_candidates

    prompts = [r.text for r in requests]
    lens = layer_logprobs(model, tok, prompts)  # [L, N, vocab]
    last = head_projection_candidates(model, tok, prompts, 3, layers=[2])
    assert last == [set(lens[2, i].topk(3).indices.tolist()) for i in range(len(prompts))]
    every = head_projection_candidates(model, tok, prompts, 3)
    assert all(a <= b for a, b in zip(last, every)) and every == [
        set(lens[:, i].topk(3, -1).indices.reshape(-1).tolist()) for i in range(len(prompts))]
