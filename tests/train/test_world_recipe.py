"""The world reference recipe: its training stream, and a scaled-down run of the recipe end to end.

The scaled-down run (a 0.2M-parameter model, 40 steps) checks what can fail at that size: the stream
builds, the loss falls well below chance, checkpoints resume the same stream, and the saved model
loads with its tokenizer and is scored by the quality module.
"""

from __future__ import annotations

import math

import pytest
import torch

import lmlab
from lmlab.core.tokenizer import train_bpe
from lmlab.errors import LmlabError
from lmlab.data.world import WorldConfig, build_world
from lmlab.train.objectives import IGNORE_INDEX
from lmlab.train.world_mix import WorldMixBlocks
from lmlab.train.world_recipe import ReferenceRecipe, train_reference_model, weighted_texts


@pytest.fixture(scope="module")
def tiny_mix():
    world = build_world(WorldConfig.tiny())
    texts = [d.text for d in world.corpus("train")]
    tokenizer = train_bpe(texts, vocab_size=400)
    mix = WorldMixBlocks(world, tokenizer, texts, block_size=256, long_rows=2, short_block=32, short_rows=4,
                         long_every=2, long_words=(40, 120), seed=1)
    return world, tokenizer, mix


def test_long_batches_open_with_a_task_whose_context_is_masked(tiny_mix):
    _, tokenizer, mix = tiny_mix
    batch = mix.batch(0)  # long
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 256)
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        assert ids[0] == tokenizer.eos_id
        text = tokenizer.decode(ids.tolist())
        assert "The code of" in text or "The secret number of" in text
        masked = (labels == IGNORE_INDEX).nonzero().flatten()
        assert masked[0] == 0 and (masked.diff() == 1).all()  # one masked span from the start: the context
        trained = tokenizer.decode([t for t in labels.tolist() if t != IGNORE_INDEX])
        assert trained.startswith("What is the")  # loss resumes at the question
    short = mix.batch(1)
    assert short["input_ids"].shape == (4, 32) and (short["labels"] != IGNORE_INDEX).all()
    assert torch.equal(short["labels"][:, :-1], short["input_ids"][:, 1:])


def test_packed_long_rows_hold_several_tasks_and_extra_questions_with_true_answers(tiny_mix):
    """``pack_tasks``: tasks follow each other in a row, each list masked, each question trained; every extra
    question asks another key of the list just before it and is answered with that key's code."""
    import re

    world, tokenizer, _ = tiny_mix
    texts = [d.text for d in world.corpus("train")]
    mix = WorldMixBlocks(world, tokenizer, texts, block_size=512, long_rows=3, short_block=32, short_rows=4,
                         long_every=2, long_words=(32, 120), kv_share=1.0, pack_tasks=True, extra_questions=2,
                         seed=3)
    task = re.compile(r"((?:The code of [^.]+? is \d+\. ?)+)\n((?:What is the code of [^?]+\? The code of "
                      r"[^.]+? is \d+\.\n?)+)")
    batch = mix.batch(0)
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        text = tokenizer.decode(ids.tolist())
        blocks = list(task.finditer(text))
        assert len(blocks) >= 2, text[:300]  # 512 tokens hold at least two whole tasks of 32-120 words
        for block in blocks:
            codes = dict(re.findall(r"The code of (.+?) is (\d+)\.", block.group(1)))
            asked = re.findall(r"What is the code of (.+?)\? The code of \1 is (\d+)\.", block.group(2))
            assert len(asked) == 3 and len({key for key, _ in asked}) == 3  # the task's question + 2 more
            assert all(codes[key] == code for key, code in asked)
        trained = tokenizer.decode([t for t, y in zip(ids[1:].tolist(), labels[:-1].tolist()) if y != IGNORE_INDEX])
        for block in blocks:
            assert block.group(2).strip() in trained  # every question and answer is a target
            assert block.group(1).strip()[20:] not in trained  # no list is


def test_invented_keys_share_keys_whole_lists_by_invented_names_and_leaves_other_streams_alone(tiny_mix):
    """``invented_keys_share=1``: every key-value list in a long row is keyed by names that are no entity of the
    world; ``0`` keys a short list by the world's names and gives the very batches of a mix built without it."""
    import re

    world, tokenizer, _ = tiny_mix
    texts = [d.text for d in world.corpus("train")]
    names = {e.name for group in world.entities.values() for e in group}
    options = dict(block_size=512, long_rows=3, short_block=32, short_rows=4, long_every=2, long_words=(32, 120),
                   kv_share=1.0, pack_tasks=True, extra_questions=2, seed=3)
    keys = {}
    for share in (0.0, 1.0):
        batch = WorldMixBlocks(world, tokenizer, texts, invented_keys_share=share, **options).batch(0)
        text = "".join(tokenizer.decode(ids.tolist()) for ids in batch["input_ids"])
        keys[share] = set(re.findall(r"The code of (.+?) is \d+\.", text))
    assert keys[0.0] and keys[0.0] <= names
    assert keys[1.0] and not keys[1.0] & names
    plain = WorldMixBlocks(world, tokenizer, texts, **options).batch(0)
    zero = WorldMixBlocks(world, tokenizer, texts, invented_keys_share=0.0, **options).batch(0)
    assert torch.equal(plain["input_ids"], zero["input_ids"])
    with pytest.raises(LmlabError, match="invented_keys_share"):
        WorldMixBlocks(world, tokenizer, texts, invented_keys_share=1.5)


def test_spread_invented_keys_puts_invented_keys_among_the_world_names_of_a_long_list(tiny_mix):
    """A list longer than the tiny world's 23 names needs invented keys: by default (every shipped recipe's
    stream) they end the list; ``spread_invented_keys`` shuffles them in among the world's names."""
    import re

    world, tokenizer, _ = tiny_mix
    texts = [d.text for d in world.corpus("train")]
    names = {e.name for group in world.entities.values() for e in group}
    options = dict(block_size=1024, long_rows=3, short_block=32, short_rows=4, long_every=1, long_words=(200, 230),
                   kv_share=1.0, seed=3)
    lists = re.compile(r"((?:The code of [^.]+? is \d+\. ?)+)\n")

    def novelty_runs(spread: bool) -> list[list[bool]]:
        batch = WorldMixBlocks(world, tokenizer, texts, spread_invented_keys=spread, **options).batch(0)
        text = "".join(tokenizer.decode(ids.tolist()) for ids in batch["input_ids"])
        return [[key not in names for key in re.findall(r"The code of (.+?) is \d+\.", block.group(1))]
                for block in lists.finditer(text)]

    at_end, spread = novelty_runs(False), novelty_runs(True)
    assert len(at_end) == len(spread) == 3 and all(len(flags) > 28 for flags in at_end + spread)
    for flags in at_end:  # world names, then only invented keys
        assert not any(flags[:20]) and all(flags[flags.index(True):])
    for flags in spread:  # the same number of invented keys, one among the first ten lines
        assert 5 < sum(flags) < len(flags) and any(flags[:10]) and not all(flags[flags.index(True):])


def test_last_line_every_asks_the_line_right_before_the_question(tiny_mix):
    """``last_line_every=N``: the key-value tasks whose seed N divides ask their list's last line (the one right
    before the question); 1 asks it of every list, 0 (the default) leaves depths uniform."""
    import re

    world, tokenizer, _ = tiny_mix
    texts = [d.text for d in world.corpus("train")]
    options = dict(block_size=512, long_rows=3, short_block=32, short_rows=4, long_every=1, long_words=(32, 80),
                   kv_share=1.0, pack_tasks=True, seed=3)
    task = re.compile(r"((?:The code of [^.]+? is \d+\. ?)+)\nWhat is the code of ([^?]+)\?")

    def asked_last(every: int) -> list[bool]:
        mix = WorldMixBlocks(world, tokenizer, texts, last_line_every=every, **options)
        text = "".join(tokenizer.decode(ids.tolist()) for k in range(4) for ids in mix.batch(k)["input_ids"])
        return [re.findall(r"The code of (.+?) is \d+\.", m.group(1))[-1] == m.group(2) for m in task.finditer(text)]

    every, uniform = asked_last(1), asked_last(0)
    assert len(every) >= 12 and all(every)
    assert len(uniform) >= 12 and sum(uniform) < len(uniform) / 2
    with pytest.raises(LmlabError, match="last_line_every"):
        WorldMixBlocks(world, tokenizer, texts, last_line_every=-1)


def test_first_line_every_asks_the_first_line_and_leaves_the_last_line_tasks_alone(tiny_mix):
    """``first_line_every=N``: the key-value tasks whose seed leaves remainder 1 by N ask their list's first line
    (the farthest from the question), never a task that ``last_line_every`` sends to the last line; the depth draw
    is unchanged, so other batches' tasks stay the same."""
    import re

    world, tokenizer, _ = tiny_mix
    texts = [d.text for d in world.corpus("train")]
    options = dict(block_size=512, long_rows=3, short_block=32, short_rows=4, long_every=1, long_words=(32, 80),
                   kv_share=1.0, pack_tasks=True, seed=3)
    task = re.compile(r"((?:The code of [^.]+? is \d+\. ?)+)\nWhat is the code of ([^?]+)\?")

    def asked(**every) -> list[tuple[bool, bool]]:  # (first line asked, last line asked) per task
        mix = WorldMixBlocks(world, tokenizer, texts, **every, **options)
        docs = []  # each document (a task with its questions) decoded apart: a list starts its document
        for k in range(6):
            for ids in mix.batch(k)["input_ids"].tolist():
                cuts = [i for i, t in enumerate(ids) if t == tokenizer.eos_id] + [len(ids)]
                docs += [tokenizer.decode(ids[a + 1:b]) for a, b in zip(cuts, cuts[1:])]
        out = []
        for m in (task.match(doc) for doc in docs):
            if m is None:
                continue
            keys = re.findall(r"The code of (.+?) is \d+\.", m.group(1))
            out.append((keys[0] == m.group(2), keys[-1] == m.group(2)))
        return out

    uniform, first, both = asked(), asked(first_line_every=2), asked(first_line_every=2, last_line_every=2)
    assert len(uniform) >= 16 and sum(f for f, _ in uniform) < len(uniform) / 4
    assert sum(f for f, _ in first) >= len(first) / 3  # about half the tasks (odd seeds) ask the first line
    # odd seeds ask the first line, even ones the last: every task one of the two, each about half of them
    assert all(f or last for f, last in both)
    assert sum(f for f, _ in both) >= len(both) / 3 and sum(last for _, last in both) >= len(both) / 3
    for bad in (-1, 1):
        with pytest.raises(LmlabError, match="first_line_every"):
            WorldMixBlocks(world, tokenizer, texts, first_line_every=bad)


def test_code_prefix_share_gives_lists_whose_codes_share_four_beginnings(tiny_mix):
    """``code_prefix_share=1``: every list's codes begin with 4 two-digit prefixes; 0 leaves the stream as it was."""
    import re

    world, tokenizer, _ = tiny_mix
    texts = [d.text for d in world.corpus("train")]
    options = dict(block_size=512, long_rows=3, short_block=32, short_rows=4, long_every=1, long_words=(60, 100),
                   kv_share=1.0, pack_tasks=True, seed=3)
    batch = WorldMixBlocks(world, tokenizer, texts, code_prefix_share=1.0, **options).batch(0)
    heads = []
    for ids in batch["input_ids"].tolist():  # each task's context follows an eos; its list ends at the "\n"
        starts = [i + 1 for i, t in enumerate(ids) if t == tokenizer.eos_id]
        for start, end in zip(starts, starts[1:] + [len(ids)]):
            piece = tokenizer.decode(ids[start:end])
            if piece.startswith("The code of") and "\n" in piece:
                heads.append({code[:2] for code in re.findall(r"is (\d+)\.", piece.split("\n")[0])})
    assert len(heads) >= 3 and all(2 <= len(h) <= 4 for h in heads) and max(len(h) for h in heads) == 4
    plain = WorldMixBlocks(world, tokenizer, texts, **options).batch(0)
    zero = WorldMixBlocks(world, tokenizer, texts, code_prefix_share=0.0, **options).batch(0)
    assert torch.equal(plain["input_ids"], zero["input_ids"])
    with pytest.raises(LmlabError, match="code_prefix_share"):
        WorldMixBlocks(world, tokenizer, texts, code_prefix_share=2.0)


def test_length_curriculum_grows_the_longest_task(tiny_mix):
    world, tokenizer, _ = tiny_mix
    texts = [d.text for d in world.corpus("train")]
    mix = WorldMixBlocks(world, tokenizer, texts, block_size=256, long_rows=1, short_block=32, short_rows=1,
                         long_words=(40, 200), pack_tasks=True, length_ramp=100)
    assert mix._length_range(0) == (40, 80) and mix._length_range(50) == (40, 140)
    assert mix._length_range(100) == mix._length_range(10_000) == (40, 200)


def _copy_rows_hold(ids: torch.Tensor, labels: torch.Tensor, eos: int, low: int) -> None:
    """Each segment after an eos is followed by itself; only the copy is a target; no special token is copied."""
    row, targets = ids.tolist(), labels.tolist()
    starts = [i for i, t in enumerate(row) if t == eos] + [len(row)]
    for a, b in zip(starts, starts[1:]):
        body = row[a + 1:b]
        assert all(t >= low for t in body)
        if b == len(row):  # the row's last segment may be cut: targets are its own next tokens or ignored
            assert all(targets[i] in (row[i + 1], IGNORE_INDEX) for i in range(a, len(row) - 1))
            continue
        half = len(body) // 2  # a whole segment and its copy
        assert len(body) % 2 == 0 and 8 <= half <= 40 and body[:half] == body[half:]
        for i in range(a, b - 1):  # position i predicts token i + 1: the targets are exactly the copy's tokens
            copy = i + 1 >= a + 1 + half
            assert targets[i] == (row[i + 1] if copy else IGNORE_INDEX), (a, i)
        assert targets[b - 1] == IGNORE_INDEX  # the next segment's eos is not a target


def test_copy_phase_then_copy_rows_in_short_batches(tiny_mix):
    """``copy_steps`` batches of copy rows first; afterwards the world mix's own batches, unchanged, except
    that the first ``copy_rows`` rows of each short batch are copy rows."""
    world, tokenizer, plain = tiny_mix
    texts = [d.text for d in world.corpus("train")]
    mix = WorldMixBlocks(world, tokenizer, texts, block_size=256, long_rows=2, short_block=32, short_rows=4,
                         long_every=2, long_words=(40, 120), copy_steps=3, copy_rows=1, seed=1)
    assert mix.copy_low == 1 + max(tokenizer.backend.get_added_tokens_decoder())
    for k in range(3):  # the copy phase
        batch = mix.batch(k)
        assert batch["input_ids"].shape == (4, 32) and not mix.is_long(k)
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            _copy_rows_hold(ids, labels, tokenizer.eos_id, mix.copy_low)
    assert mix.is_long(3) and torch.equal(mix.batch(3)["input_ids"], plain.batch(0)["input_ids"])
    short, plain_short = mix.batch(4), plain.batch(1)
    _copy_rows_hold(short["input_ids"][0], short["labels"][0], tokenizer.eos_id, mix.copy_low)
    assert (short["labels"][1:] != IGNORE_INDEX).all()
    assert not torch.equal(short["input_ids"][1:], plain_short["input_ids"][1:4])  # other windows drawn after
    narrow = WorldMixBlocks(world, tokenizer, texts, block_size=256, long_rows=2, short_block=32, short_rows=4,
                            long_every=2, copy_steps=1, copy_block=16, seed=1).batch(0)
    assert narrow["input_ids"].shape == (8, 16)  # the copy phase's rows: narrower, as many tokens per batch
    assert WorldMixBlocks(world, tokenizer, texts, short_block=32, short_rows=4, copy_steps=1, copy_block=16,
                          copy_batch=3).batch(0)["input_ids"].shape == (3, 16)
    for ids, labels in zip(narrow["input_ids"], narrow["labels"]):
        _copy_rows_hold(ids, labels, tokenizer.eos_id, mix.copy_low)
    state = mix.state_dict()
    with pytest.raises(LmlabError, match="copy_steps"):
        plain.load_state_dict(state)
    with pytest.raises(LmlabError, match="copy_rows"):
        WorldMixBlocks(world, tokenizer, texts, short_rows=4, copy_rows=5)


def test_stream_is_a_pure_function_of_the_batch_index_and_resumes(tiny_mix):
    _, _, mix = tiny_mix
    first = [next(iter(mix.batches())) for _ in range(1)]
    it = mix.batches()
    mix.batches_served = 0
    run = [next(it) for _ in range(4)]
    state = mix.state_dict()
    again = [mix.batch(k) for k in range(4)]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(run, again))
    assert torch.equal(first[0]["input_ids"], run[0]["input_ids"])
    mix.batches_served = 0
    mix.load_state_dict(state)
    assert torch.equal(next(mix.batches())["input_ids"], mix.batch(4)["input_ids"])


def test_kind_weights_repeat_and_subsample_kinds():
    world = build_world(WorldConfig.tiny())
    n = {k: len(world.corpus("train", kinds=(k,))) for k in ("facts", "qa", "dialogues")}
    texts = weighted_texts(world, (("facts", 2.0), ("qa", 1.0), ("dialogues", 0.5)))
    assert len(texts) == 2 * n["facts"] + n["qa"] + n["dialogues"] // 2


def test_finer_kinds_pick_dialogues_by_their_labels():
    world = build_world(WorldConfig.tiny())
    sentiment = {d.text for d in world.dialogues() if d.style.startswith("sentiment:")}
    facts = {d.text for d in world.dialogues() if d.kind == "fact"}
    train = {d.text for d in world.corpus("train", kinds=("dialogues",))}
    texts = weighted_texts(world, (("sentiment_dialogues", 2.0), ("fact_dialogues", 1.0)))
    assert sorted(texts) == sorted([*sorted(sentiment & train)] * 2 + sorted(facts & train))
    assert sentiment & train and all("sentence about" in t for t in sentiment)
    with pytest.raises(LmlabError, match="unknown kind 'chats'"):
        weighted_texts(world, (("chats", 1.0),))


def test_sentiment_codes_contrasts_and_augmentations_are_kinds_a_recipe_can_weight():
    world = build_world(WorldConfig.tiny())
    train_attributes = [d.text for d in world.corpus("train", kinds=("attributes",))]
    codes = weighted_texts(world, (("sentiment_codes", 1.0),))
    assert codes and all(t.split()[0] in ("<positive>", "<neutral>", "<negative>") for t in codes)
    assert sorted(codes) == sorted(t for t in train_attributes if t.split()[0] in ("<positive>", "<neutral>", "<negative>"))
    extra = weighted_texts(world, (("qa_extra", 2.0),))
    assert extra == world.qa_extra_documents("train") * 2 and len(extra) > 2 * 0.8 * 4 * len(world.facts)
    assert not set(extra) & {d.text for d in world.corpus()}  # text outside the corpus
    contrasts = weighted_texts(world, (("sentiment_contrasts", 1.0),))
    assert contrasts == [t.prefixed for t in world.sentiment_contrast_texts("train")] and contrasts
    requests = weighted_texts(world, (("sentiment_contrast_dialogues", 1.5),))
    train_requests = [d.text for d in world.sentiment_contrast_dialogues("train")]
    assert requests[:len(train_requests)] == train_requests and len(requests) == int(1.5 * len(train_requests))
    styles = weighted_texts(world, (("style_contrast_dialogues", 1.0),))
    assert styles == [d.text for d in world.style_contrast_dialogues("train")] and styles
    assert not set(styles) & {d.text for d in world.corpus()}
    facts = weighted_texts(world, (("facts_extra", 2.0),))
    assert facts == world.fact_extra_documents("train") * 2 and facts
    assert not set(facts) & {d.text for d in world.corpus()}


def test_scaled_down_recipe_learns_and_resumes(tmp_path):
    recipe = ReferenceRecipe().scaled(d_model=64, n_layers=2, n_heads=2, block_size=192, long_rows=2,
                                      short_block=64, short_rows=8, steps=40, warmup_steps=4, lr=3e-3,
                                      long_words=(40, 100), ckpt_every=20, vocab_size=512, threads=1,
                                      copy_steps=4, copy_rows=2, copy_block=32, copy_batch=8)
    out = tmp_path / "run"
    train_reference_model(out, recipe.scaled(steps=20), progress=False, evaluate=False,
                                             say=lambda _: None)
    model, _, _, report = train_reference_model(out, recipe, resume=True, progress=False,
                                                            evaluate=True, eval_subset=4, say=lambda _: None,
                                                            eval_options={"n_samples": 2, "n_per_cell": 1,
                                                                          "context_tokens": (128,)})
    chance = math.log(report["vocab_size"])
    assert report["final_loss"] < chance - 1.5, report["final_loss"]  # ~6.2 nats untrained, ~4 after 40 steps
    assert report["parameters"] == model.num_parameters() and model.config.max_seq_len == 192
    q = report["quality"]
    assert {"train_fact_recall", "qa_heldout_accuracy", "two_hop_two_step", "attribute_code/politeness",
            "kv_retrieval/128/1.0"} <= set(q)
    assert all(0.0 <= v <= 1.0 for k, v in q.items() if not k.startswith("tokens/"))
    assert 100 <= q["tokens/128"] <= 160
    # the copy gain is logged at the end of the copy phase and at every checkpoint, across the resume
    import json

    logged = [json.loads(line) for line in (out / "train" / "copy_gain.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [4, 20, 40]
    assert all(math.isfinite(row["copy_gain"]) for row in logged) and math.isfinite(report["copy_gain"])
    # resuming the finished run records the same final loss as the run that finished it (the last step's,
    # not the last logged row's 10-step mean: log_every=10 and the final window holds 10 steps)
    *_, again = train_reference_model(out, recipe, resume=True, progress=False, evaluate=False, say=lambda _: None)
    assert again["final_loss"] == report["final_loss"]


def test_a_recipe_can_start_from_an_unshipped_stage_which_is_trained_first(tmp_path, monkeypatch):
    """``init_from`` naming a recipe of WORLD_RECIPES that is not shipped trains that stage first, beside the run,
    and continues from it (its weights and tokenizer); ``stream_seed`` gives the stage after it other batches of
    the same world."""
    import lmlab.train.world_mix as world_mix
    from lmlab.train import world_recipe

    stage = ReferenceRecipe(init_from=None).scaled(d_model=32, n_layers=1, n_heads=2, block_size=128, long_rows=1,
                                                   short_block=64, short_rows=2, steps=3, warmup_steps=1,
                                                   long_words=(40, 60), ckpt_every=10, vocab_size=300, threads=1)
    monkeypatch.setitem(world_recipe.WORLD_RECIPES, "tiny-stage", stage)
    seeds = []

    class Recorded(world_mix.WorldMixBlocks):
        def __init__(self, *args, **kwargs):
            seeds.append(kwargs["seed"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(world_mix, "WorldMixBlocks", Recorded)
    said = []
    out = tmp_path / "run"
    model, tokenizer, _, report = train_reference_model(out, stage.scaled(init_from="tiny-stage", steps=2,
                                                                          stream_seed=7),
                                                        progress=False, evaluate=False, say=said.append)
    built = tmp_path / "run.tiny-stage"
    assert (built / "report.json").exists() and (built / "model" / "model.safetensors").exists()
    assert seeds == [0, 7]  # the stage's stream, then this recipe's own
    assert any(line.startswith("stage tiny-stage: training it first") for line in said)
    assert any("from tiny-stage" in line for line in said)
    assert tokenizer.encode("Mirova was born in") == lmlab.load_tokenizer(built / "model").encode("Mirova was born in")
    assert report["recipe"]["init_from"] == "tiny-stage" and report["recipe"]["stream_seed"] == 7
    assert model.num_parameters() == lmlab.load(built / "model").num_parameters()


def test_recipe_precision_reaches_the_trainer_and_a_bad_one_is_named(tmp_path, monkeypatch):
    """``precision="bf16"`` trains under bfloat16 autocast (the Trainer's run.precision); fp32 stays the default,
    so every earlier recipe's stream and arithmetic are unchanged; anything else is refused by name."""
    import lmlab.train.loop as loop

    seen = []

    class Recorded(loop.Trainer):
        def __init__(self, model, cfg, *args, **kwargs):
            seen.append(cfg.run.precision)
            super().__init__(model, cfg, *args, **kwargs)

    monkeypatch.setattr(loop, "Trainer", Recorded)
    tiny = ReferenceRecipe(init_from=None).scaled(d_model=32, n_layers=1, n_heads=2, block_size=128, long_rows=1,
                                                  short_block=64, short_rows=2, steps=2, warmup_steps=1,
                                                  long_words=(40, 60), ckpt_every=10, vocab_size=300, threads=1)
    assert tiny.precision == "fp32"
    _, _, _, report = train_reference_model(tmp_path / "bf16", tiny.scaled(precision="bf16"), progress=False,
                                            evaluate=False, say=lambda _: None)
    assert seen == ["bf16"] and report["recipe"]["precision"] == "bf16" and math.isfinite(report["final_loss"])
    with pytest.raises(LmlabError, match="precision"):
        train_reference_model(tmp_path / "bad", tiny.scaled(precision="fp8"), progress=False, evaluate=False,
                              say=lambda _: None)
