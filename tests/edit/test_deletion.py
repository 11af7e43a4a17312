"""ROME deletion with the sensitive-information paper's objectives: each defended objective reduces what it targets,
measured on the edited model (not on the search's own log): fact erasure lowers the answer's probability; the
head-projection defence takes the answer out of the logit lens's top-k at the defence layers; the max-entropy
defence raises the lens entropy; input rephrasing lowers the answer under the rephrased prompts more than deletion
without it. Errors are one line and leave the model untouched."""

import pytest
import torch

from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe
from lmlab.edit import EditRequest, edit
from lmlab.edit.attacks import layer_logprobs
from lmlab.edit.deletion import lens_entropy, margin_loss
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


def test_head_projection_takes_the_answer_out_of_every_defence_layers_top_k(model, tok, requests, tmp_path):
    """With k = 50 the margin defence must push the answer below rank 50 at every defence layer's logit lens;
    plain fact erasure only lowers it a few ranks (it targets the output probability, not the lens's top-k)."""
    ans, k = _answer_ids(tok, requests), 50
    layers = [1, 2]  # the lens after the edited layer 0 (the only ones delta reaches at the last position)

    def margin_and_hits(lens):
        rows = lens[layers].reshape(-1, lens.shape[-1])
        answers = ans.repeat(len(layers))
        hits = (rows.topk(k, -1).indices == answers[:, None]).any(-1).sum()
        return float(margin_loss(rows, answers, k)), int(hits)

    m0, hits0 = margin_and_hits(_lens(model, tok, requests))
    assert hits0 == 4 and m0 > 0.5  # the answer is in every defence layer's top-k for both prompts
    erased = _deleted(model, tok, requests, tmp_path, objective="fact_erasure")
    _, hits_erased = margin_and_hits(_lens(model, tok, requests))
    erased.revert(model)
    delta = _deleted(model, tok, requests, tmp_path, objective="head_projection", defence_k=k)
    try:
        m1, hits1 = margin_and_hits(_lens(model, tok, requests))
    finally:
        delta.revert(model)
    # the defence removes the answer from most of the 4 (layer, prompt) top-k lists and nearly all of the margin
    # (on an AVX-512 CPU 2 of 4 remain, margin 0.94 -> 0.011; without AVX-512 none, fp32 rounding on this toy)
    assert hits1 <= hits0 // 2 and m1 < 0.02 * m0 and hits_erased > hits1, (m0, m1, hits0, hits_erased, hits1)


def test_max_entropy_raises_the_lens_entropy(model, tok, requests, tmp_path):
    def entropy(lens):
        return float(lens_entropy(lens[1:].reshape(-1, lens.shape[-1])))

    e0 = entropy(_lens(model, tok, requests))
    erased = _deleted(model, tok, requests, tmp_path, objective="fact_erasure")
    e_erased = entropy(_lens(model, tok, requests))
    erased.revert(model)
    delta = _deleted(model, tok, requests, tmp_path, objective="max_entropy")
    try:
        e1 = entropy(_lens(model, tok, requests))
    finally:
        delta.revert(model)
    assert e1 > e0 + 0.2 and e1 > e_erased, (e0, e_erased, e1)


def test_input_rephrasing_lowers_the_answer_under_the_rephrasings(model, tok, requests, tmp_path):
    prompts = [t.replace("{}", r.subject) for r, group in zip(requests, REPHRASINGS) for t in group]
    ans = _answer_ids(tok, requests).repeat_interleave(2)

    def p_answer():
        return layer_logprobs(model, tok, prompts)[-1].exp().gather(-1, ans[:, None])[:, 0].mean()

    plain = _deleted(model, tok, requests, tmp_path, objective="fact_erasure")
    p_plain = p_answer()
    plain.revert(model)
    defended = _deleted(model, tok, requests, tmp_path, objective="fact_erasure", rephrasings=REPHRASINGS)
    try:
        p_defended = p_answer()
        assert defended.metadata["log"][0]["n_rephrasings"] == 2
    finally:
        defended.revert(model)
    assert p_defended < 0.5 * p_plain, (p_plain, p_defended)


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
