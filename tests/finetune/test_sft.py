import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.finetune import (SFTData, SFTObjective, load_chat_jsonl, pack_examples, sft_token_losses,
                            tokenize_conversation)
from lmlab.train.objectives import IGNORE_INDEX


def _spans(ex):
    out, cur = [], []
    for i, keep in zip(ex.ids, ex.assistant):
        if keep:
            cur.append(i)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def test_mask_is_exactly_the_assistant_turns(tok, convs):
    ex = tokenize_conversation(tok, convs[1])
    assert ex.ids == tok.encode(tok.apply_chat_template(convs[1]))  # same ids as the plain rendering
    spans = [tok.decode(s, skip_special_tokens=False) for s in _spans(ex)]
    assert spans == ["I am fine<|im_end|>", "Four, thanks.<|im_end|>"]


def test_packed_logits_and_loss_equal_separate(tok, tiny, convs):
    exs = [tokenize_conversation(tok, c) for c in convs]
    (row,) = pack_examples(exs, block_size=256, pad_id=tok.pad_id)
    assert row["segment_ids"].max() == 3 and (row["positions"] == 0).sum() >= 3
    batch = {k: v[None] for k, v in row.items()}
    packed_logits = tiny(batch["input_ids"], segment_ids=batch["segment_ids"], positions=batch["positions"])
    start, total_sep, n_sep = 0, 0.0, 0
    for ex in exs:
        (alone,) = pack_examples([ex], block_size=len(ex.ids) - 1, pad_id=tok.pad_id)
        n = len(ex.ids) - 1
        logits = tiny(alone["input_ids"][None])
        torch.testing.assert_close(packed_logits[0, start:start + n], logits[0], rtol=1e-5, atol=1e-5)
        s, k = sft_token_losses(tiny, {k: v[None] for k, v in alone.items()})
        total_sep, n_sep, start = total_sep + float(s.detach()), n_sep + int(k), start + n
    s, k = sft_token_losses(tiny, batch)
    assert int(k) == n_sep == sum(sum(ex.assistant[1:]) for ex in exs)
    assert float(s.detach()) == pytest.approx(total_sep, rel=1e-5)
    loss, _ = SFTObjective()(tiny, batch)
    assert float(loss.detach()) == pytest.approx(total_sep / n_sep, rel=1e-5)


def test_sft_data_batches_and_labels(tok, convs):
    data = SFTData(convs * 4, tok, block_size=128, seed=1)
    b = next(data.batches(2))
    assert b["input_ids"].shape == (2, 128) and set(b) == {"input_ids", "labels", "segment_ids", "positions"}
    assert data.n_assistant_tokens > 0
    assert ((b["labels"] != IGNORE_INDEX) <= (b["segment_ids"] > 0)).all()  # no loss on padding


def test_errors_name_the_problem(tok, tmp_path, convs):
    no_template = type(tok).__new__(type(tok))
    no_template.__dict__.update(tok.__dict__)
    no_template._chat_templates = {}
    with pytest.raises(LmlabError, match="no chat_template"):
        tokenize_conversation(no_template, convs[0])
    with pytest.raises(LmlabError, match="role 'bot'"):
        tokenize_conversation(tok, [{"role": "bot", "content": "x"}])
    with pytest.raises(LmlabError, match="no assistant message"):
        tokenize_conversation(tok, [{"role": "user", "content": "x"}])
    p = tmp_path / "chat.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}\n')
    with pytest.raises(LmlabError, match=r"chat.jsonl:1: message 1 \(assistant\) has no string 'content'") as e:
        load_chat_jsonl(p)
    assert "\n" not in str(e.value)
    with pytest.raises(LmlabError, match="do not fit block_size"):
        SFTData(convs, tok, block_size=8)
