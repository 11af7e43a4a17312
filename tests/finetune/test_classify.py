import torch

from lmlab.finetune.classify import ClassificationObjective, ClassifierConfig, SequenceClassifier


def test_causal_hidden_states_match_model_and_pool_last_real_token(tiny):
    clf = SequenceClassifier(tiny, ClassifierConfig(n_labels=3))
    ids = torch.randint(2, tiny.config.vocab_size, (2, 7))
    h = clf.hidden_states(ids)
    torch.testing.assert_close(tiny.lm_head(h), tiny(ids))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    out = clf(ids, mask)
    alone = clf(ids[1:, :4])
    torch.testing.assert_close(out[1:], alone, rtol=1e-5, atol=1e-5)  # right padding is invisible


def test_bidirectional_sees_the_future_causal_does_not(tiny):
    ids = torch.randint(2, tiny.config.vocab_size, (1, 6))
    ids2 = ids.clone()
    ids2[0, -1] = (ids[0, -1] + 1) % tiny.config.vocab_size
    causal = SequenceClassifier(tiny, ClassifierConfig(token_level=True))
    bi = SequenceClassifier(tiny, ClassifierConfig(token_level=True, bidirectional=True))
    bi.score = causal.score
    torch.testing.assert_close(causal(ids)[0, 0], causal(ids2)[0, 0])
    assert not torch.allclose(bi(ids)[0, 0], bi(ids2)[0, 0])
    # with a single token there is no future: both agree
    torch.testing.assert_close(bi(ids[:, :1]), causal(ids[:, :1]), rtol=1e-5, atol=1e-5)


def test_classification_objective_learns_a_rule(tiny):
    torch.manual_seed(0)
    clf = SequenceClassifier(tiny, ClassifierConfig(n_labels=2, bidirectional=True))
    ids = torch.randint(2, tiny.config.vocab_size, (16, 5))
    labels = (ids[:, 0] % 2).long()  # depends on the first token: needs information from the left
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-2)
    obj = ClassificationObjective()
    for _ in range(60):
        loss, metrics = obj(clf, {"input_ids": ids, "labels": labels})
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(metrics["accuracy"]) == 1.0


def test_decoder_and_lora_get_gradients_through_the_head(tiny):
    """Issue 10 item 2: hidden states used to come through run_with_cache (detached): 0 of 20 decoder
    parameters received a gradient."""
    clf = SequenceClassifier(tiny, ClassifierConfig(n_labels=3))
    ids = torch.randint(2, tiny.config.vocab_size, (3, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    clf(ids, mask).square().sum().backward()
    decoder = [(n, p) for n, p in tiny.named_parameters() if n != "lm_head.weight" or not tiny.config.tie_embeddings]
    no_grad = [n for n, p in decoder if p.grad is None or p.grad.abs().sum() == 0]
    # the lm_head is not on the head's path (tied here: its weight is the embedding, which is)
    assert no_grad == [] and len(decoder) >= 20

    from lmlab.peft import LoraConfig, add_adapter

    tiny.zero_grad(set_to_none=True)
    add_adapter(tiny, LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"], init_b="random"))
    clf(ids, mask).square().sum().backward()
    adapters = [(n, p) for n, p in tiny.named_parameters() if "adapters" in n]
    assert adapters and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in adapters)
    assert all(p.grad is None for n, p in tiny.named_parameters() if "adapters" not in n)  # base frozen


def test_lm_head_is_not_computed(tiny):
    seen = []
    handle = tiny.lm_head.register_forward_hook(lambda *a: seen.append(1))
    try:
        SequenceClassifier(tiny, ClassifierConfig(n_labels=2))(torch.randint(2, 50, (2, 5)))
    finally:
        handle.remove()
    assert seen == []


def test_scalar_head_for_reward_models(tiny):
    import pytest

    from lmlab.errors import LmlabError

    torch.manual_seed(0)
    clf = SequenceClassifier(tiny, ClassifierConfig(n_labels=1))
    ids = torch.randint(2, tiny.config.vocab_size, (8, 5))
    target = (ids[:, -1] % 3).float()
    out = clf(ids)
    assert out.shape == (8, 1)
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-2)
    obj = ClassificationObjective()
    first, _ = obj(clf, {"input_ids": ids, "labels": target})
    for _ in range(40):
        loss, metrics = obj(clf, {"input_ids": ids, "labels": target})
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first.item() and "mse" in metrics
    with pytest.raises(LmlabError, match="n_labels must be an integer >= 1"):
        SequenceClassifier(tiny, ClassifierConfig(n_labels=0))
