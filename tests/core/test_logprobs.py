"""sequence_logprobs: equals gathered per-token log-softmax of a plain forward, differentiable, padding-proof."""

import pytest
import torch

import lmlab
from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.errors import LmlabError

V = 61


def _model(tie: bool = True, seed: int = 0) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                                 tie_embeddings=tie)
    return Transformer(cfg).init_weights(std=0.2, seed=seed).float()


def _reference(model, rows, prompt_lens):
    """Each row alone, unpadded, through the full forward: sum of log-softmax at the completion tokens."""
    out = []
    for row, p in zip(rows, prompt_lens):
        ids = torch.tensor([row])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).float(), -1)[0]  # [T, vocab]
        out.append(sum(float(logp[t - 1, row[t]]) for t in range(p, len(row))))
    return torch.tensor(out, dtype=torch.float64)


ROWS = [[3, 9, 4, 17, 22, 5, 8, 30, 2], [7, 1, 12, 40], [5, 5, 6, 33, 21, 11], [9, 2]]
PROMPTS = [4, 2, 1, 1]  # index of the first completion token per row


def _right_padded(rows, pad=0):
    T = max(map(len, rows))
    return torch.tensor([r + [pad] * (T - len(r)) for r in rows]), torch.tensor([len(r) for r in rows])


def test_sum_and_mean_match_per_row_forwards_with_right_padding():
    torch.manual_seed(0)
    model = _model()
    ids, lengths = _right_padded(ROWS, pad=V - 1)  # a pad id that is a real vocabulary entry
    want = _reference(model, ROWS, PROMPTS)
    got = lmlab.sequence_logprobs(model, ids, prompt_lengths=torch.tensor(PROMPTS), lengths=lengths)
    assert got.shape == (4,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    # the same through an attention mask, and through an explicit loss mask
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    got2 = lmlab.sequence_logprobs(model, ids, prompt_lengths=PROMPTS, attention_mask=mask)
    torch.testing.assert_close(got2.double(), want, rtol=0, atol=1e-5)
    loss_mask = (torch.arange(ids.shape[1])[None] >= torch.tensor(PROMPTS)[:, None]) & mask.bool()
    got3 = lmlab.sequence_logprobs(model, ids, loss_mask=loss_mask)
    torch.testing.assert_close(got3, got, rtol=0, atol=1e-6)
    counts = torch.tensor([len(r) - p for r, p in zip(ROWS, PROMPTS)])
    mean = lmlab.sequence_logprobs(model, ids, prompt_lengths=PROMPTS, lengths=lengths, reduction="mean")
    torch.testing.assert_close(mean, got / counts, rtol=0, atol=1e-6)


def test_equals_gathered_log_softmax_of_the_batched_forward_within_1e6():
    """The issue's criterion: the same batch through model(ids), log-softmax, gather, masked sum (fp32)."""
    model = _model(tie=False, seed=3)
    ids, lengths = _right_padded(ROWS)
    prompts = torch.tensor(PROMPTS)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).float(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # [B, T-1]
        t = torch.arange(1, ids.shape[1])[None]
        keep = (t >= prompts[:, None]) & (t < lengths[:, None])
        want = (logp * keep).sum(-1)
        got = lmlab.sequence_logprobs(model, ids, prompt_lengths=prompts, lengths=lengths)
    # 1e-6, or one fp32 ulp of a sum of magnitude ~16 (2e-6): the two sum in different orders, which round
    # differently on CPUs with and without AVX-512
    torch.testing.assert_close(got, want, rtol=2.4e-7, atol=1e-6)
    # a wrong implementation (off-by-one alignment, or scoring the padding) would differ by far more
    wrong = (torch.log_softmax(model(ids).float(), -1)[:, 1:].gather(-1, ids[:, 1:, None])[..., 0] * keep).sum(-1)
    assert (wrong - got).abs().max() > 1e-2


def test_left_padding_through_attention_mask():
    model = _model(seed=1)
    T = max(map(len, ROWS))
    ids = torch.tensor([[0] * (T - len(r)) + r for r in ROWS])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in ROWS])
    prompts = torch.tensor([T - len(r) + p for r, p in zip(ROWS, PROMPTS)])
    got = lmlab.sequence_logprobs(model, ids, prompt_lengths=prompts, attention_mask=mask)
    torch.testing.assert_close(got.double(), _reference(model, ROWS, PROMPTS), rtol=0, atol=1e-5)


def test_every_trainable_parameter_gets_a_gradient_and_lm_head_skips_prompt_positions():
    model = _model(tie=False)
    model.train()
    ids, lengths = _right_padded(ROWS)
    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, a, out: seen.append(tuple(a[0].shape)))
    try:
        out = lmlab.sequence_logprobs(model, ids, prompt_lengths=PROMPTS, lengths=lengths)
    finally:
        handle.remove()
    n_completion = sum(len(r) - p for r, p in zip(ROWS, PROMPTS))
    assert seen == [(n_completion, 32)]  # the lm_head ran on completion-predicting positions only
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert missing == []


def test_hooks_on_logits_are_honoured():
    model = _model()
    ids, lengths = _right_padded(ROWS)
    base = lmlab.sequence_logprobs(model, ids, prompt_lengths=PROMPTS, lengths=lengths)
    with model.hooks([("logits", lambda x, n: x * 0.0)]):  # uniform distribution over the vocabulary
        flat = lmlab.sequence_logprobs(model, ids, prompt_lengths=PROMPTS, lengths=lengths, reduction="mean")
    torch.testing.assert_close(flat, torch.full((4,), -torch.log(torch.tensor(float(V)))))
    assert not torch.allclose(base, flat)


def test_lora_adapters_train_through_it():
    from lmlab.peft import LoraConfig, add_adapter

    model = _model()
    ids, lengths = _right_padded(ROWS)
    base = lmlab.sequence_logprobs(model, ids, prompt_lengths=PROMPTS, lengths=lengths).detach()
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj", "lm_head"],
                                  init_b="random"))
    out = lmlab.sequence_logprobs(model, ids, prompt_lengths=PROMPTS, lengths=lengths)
    assert not torch.allclose(out, base)  # the adapters act, the lm_head's included
    out.sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("adapters" in n for n, _ in trainable)
    assert [n for n, p in trainable if p.grad is None or p.grad.abs().sum() == 0] == []
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"prompt_lengths": [1, 1], "loss_mask": torch.ones(4, 9)}, "not both"),
    ({"prompt_lengths": [0, 1, 1, 1]}, "prompt_lengths must lie"),
    ({"prompt_lengths": [1, 1]}, "prompt_lengths must be an integer tensor of shape [4]"),
    ({"loss_mask": torch.ones(4, 9)}, "token 0"),
    ({"loss_mask": torch.ones(4, 8)}, "loss_mask must have shape"),
    ({"prompt_lengths": [9, 2, 2, 2]}, "no scored token"),
    ({"reduction": "avg"}, "reduction must be one of"),
    ({"lengths": [9, 4, 6, 2], "attention_mask": torch.ones(4, 9)}, "not both"),
])
def test_bad_input_is_one_line(kwargs, fragment):
    model = _model()
    ids, _ = _right_padded(ROWS)
    with pytest.raises(LmlabError, match=None) as err:
        lmlab.sequence_logprobs(model, ids, **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)
