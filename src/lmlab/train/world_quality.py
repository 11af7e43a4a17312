"""Quality of a model trained on the world, measured with the library's own scorers against the ground truth.

Every figure is a fraction in [0, 1]:

* ``train_fact_recall`` / ``heldout_paraphrase_recall``: :func:`lmlab.data.recall.recall` on
  ``world.probes("train" | "heldout")`` (greedy, exact match of the object followed by a non-word character);
* ``qa_train_accuracy`` / ``qa_heldout_accuracy``: the same scorer on ``world.qa_probes(...)``
  (``"Question: ...\\nAnswer:"``; held-out question forms never occur in training text);
* ``two_hop_direct``: the scorer on ``world.two_hop_probes()`` (phrasings never seen in training);
  ``two_hop_two_step``: an explicit two-step prompt, each step a training-template prompt: the model
  completes the first hop (``"X was born in"``), the entity it names (text before the first ".") is put
  into the second hop's prompt (``"<city> is a city in"``), and the second answer is scored;
* ``attribute_code/<axis>`` and ``attribute_instruction/<axis>``: share of generations carrying the
  requested label by the world's labelling function (:mod:`lmlab.data.world.attributes`): sampled at
  temperature 1 after a control code (``"<positive>"``), or greedy replies to a chat request
  ("Write a positive sentence about Mirova."); ``chat_politeness``: greedy replies to a held-out
  question with a polite / rude system instruction, labelled by ``label_politeness``;
* ``kv_retrieval/<tokens>/<depth>`` and ``needle/<tokens>/<depth>``: exact-match retrieval from prompts of
  about ``tokens`` tokens (measured with the model's tokenizer) with the queried line at ``depth``. A list
  longer than the world has names (1,024 tokens in the quickstart world) mixes in invented keys, spread over
  the list, so every depth asks one now and then; ``kv_retrieval_invented/<tokens>``: the same tasks at every
  depth with every key invented (a lookup by the key's tokens alone, never by a name the model knows).

``subset`` evaluates a fixed, evenly spaced subset of every probe list (for fast re-checks in tests).
"""

from __future__ import annotations

import torch

import lmlab
from lmlab.data.recall import greedy_continuations, is_exact_match, recall
from lmlab.data.world.attribute_text import AXES, LABELLERS
from lmlab.data.world.dialogues import STYLE_INSTRUCTIONS, attribute_request, render_messages
from lmlab.data.world.questions import QUESTIONS
from lmlab.data.world.templates import prompt_of

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
CONTEXT_TOKENS = (256, 512, 1024)
# long-context tasks per cell of the full evaluation: 4 until session 15, too few to judge a 90% target (a
# model scoring 4/4 in every 1,024-token cell retrieved 80-95% on 64 tasks a depth)
N_PER_CELL = 16


def evenly_spaced(items: list, n: int | None) -> list:
    """``n`` evenly spaced items (all when ``n`` is None or larger than the list)."""
    if n is None or n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _first_entity(continuation: str) -> str:
    return continuation.split(".")[0].split("\n")[0].strip()


def two_step_accuracy(model, tokenizer, world, probes) -> float:
    """Explicit two-step prompting of two-hop probes (see module doc)."""
    if not probes:
        return float("nan")
    first = [prompt_of(world.relations[p.hops[0].relation].train_templates[0], p.fact.subject) for p in probes]
    middles = [_first_entity(c) for c in greedy_continuations(model, tokenizer, first)]
    second = [prompt_of(world.relations[p.hops[1].relation].train_templates[0], m or "?")
              for p, m in zip(probes, middles)]
    answers = greedy_continuations(model, tokenizer, second)
    return sum(is_exact_match(a, p.answer) for a, p in zip(answers, probes)) / len(probes)


def _generate_text(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
                   seed: int = 0, stop: list[int] | None = None, batch_size: int = 32) -> list[str]:
    out = []
    stops = [tokenizer.eos_id, *(stop or [])]
    for start in range(0, len(prompts), batch_size):
        encoded = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts[start:start + batch_size]]
        rows = lmlab.generate(model, encoded, max_new_tokens=max_new_tokens, temperature=temperature,
                              seed=seed + start if temperature > 0 else None, stop_token_ids=stops)
        out += [tokenizer.decode([t for t in row[len(ids):] if t not in stops]) for row, ids in zip(rows, encoded)]
    return out


def attribute_scores(model, tokenizer, world, n_samples: int = 32, n_subjects: int | None = 24) -> dict[str, float]:
    """Control-code and instruction attribute generation, per axis (mean over the axis's labels)."""
    im_end = tokenizer.token_to_id("<|im_end|>")
    subjects = evenly_spaced(sorted({t.subject for t in world.attribute_texts()}), n_subjects)
    scores: dict[str, float] = {}
    for axis, labels in AXES.items():
        code_hits, instr_hits, code_n, instr_n = 0, 0, 0, 0
        for label, (value, code) in labels.items():
            texts = _generate_text(model, tokenizer, [code] * n_samples, 32, temperature=1.0, seed=label + 7)
            code_hits += sum(LABELLERS[axis](t.split("\n")[0]) == label for t in texts)
            code_n += len(texts)
            prompts = [render_messages(attribute_request(s, value), add_generation_prompt=True) for s in subjects]
            replies = _generate_text(model, tokenizer, prompts, 32, stop=[im_end] if im_end is not None else None)
            instr_hits += sum(LABELLERS[axis](r) == label for r in replies)
            instr_n += len(replies)
        scores[f"attribute_code/{axis}"] = code_hits / code_n
        scores[f"attribute_instruction/{axis}"] = instr_hits / instr_n
    return scores


def chat_politeness(model, tokenizer, world, facts) -> float:
    """Polite / rude system instruction + held-out question: share of replies with the requested label."""
    im_end = tokenizer.token_to_id("<|im_end|>")
    prompts, wanted = [], []
    for fact in facts:
        question = QUESTIONS[fact.relation].heldout[0].replace("{s}", fact.subject)
        for style, label in (("polite", 1), ("rude", -1)):
            messages = [{"role": "system", "content": STYLE_INSTRUCTIONS[style]}, {"role": "user", "content": question}]
            prompts.append(render_messages(messages, add_generation_prompt=True))
            wanted.append(label)
    replies = _generate_text(model, tokenizer, prompts, 40, stop=[im_end] if im_end is not None else None)
    return sum(LABELLERS["politeness"](r) == w for r, w in zip(replies, wanted)) / max(1, len(replies))


def words_for_tokens(world, tokenizer, target_tokens: int, invented_keys: bool = False) -> int:
    """Words of a key-value task giving about ``target_tokens`` prompt tokens with this tokenizer (``invented_keys``:
    of a list keyed only by invented names, which a world-trained BPE splits into more tokens)."""
    def task(n_words: int):
        return world.long_context_task("kv_retrieval", n_words, 0.5, seed=-1, invented_keys=invented_keys)

    sample = task(400)
    ratio = len(tokenizer.encode(sample.prompt)) / sample.n_words
    n_words = max(32, round(target_tokens / ratio))
    for _ in range(4):  # longer lists need invented keys, which a world-trained BPE splits into more tokens
        tokens = len(tokenizer.encode(task(n_words).prompt))
        if tokens <= target_tokens * 1.02:
            break
        n_words = max(32, round(n_words * target_tokens / tokens))
    return n_words


def long_context_scores(model, tokenizer, world, lengths=CONTEXT_TOKENS, depths=DEPTHS, n_per_cell: int = 8,
                        kinds=("kv_retrieval", "needle")) -> dict[str, float]:
    out: dict[str, float] = {}
    for target in lengths:
        n_words = words_for_tokens(world, tokenizer, target)
        for kind in kinds:
            for depth in depths:
                tasks = [world.long_context_task(kind, n_words, depth, seed=-1000 - i) for i in range(n_per_cell)]
                out[f"{kind}/{target}/{depth}"] = retrieved_share(model, tokenizer, tasks)
        if "kv_retrieval" in kinds:
            out[f"kv_retrieval_invented/{target}"] = invented_key_retrieval(
                model, tokenizer, world, words_for_tokens(world, tokenizer, target, invented_keys=True), depths,
                n_per_cell)
        out[f"tokens/{target}"] = round(sum(len(tokenizer.encode(world.long_context_task(
            "kv_retrieval", n_words, 0.5, seed=-1000 - i).prompt)) for i in range(4)) / 4, 1)
    return out


def invented_key_retrieval(model, tokenizer, world, n_words: int, depths=DEPTHS, n_per_cell: int = 8) -> float:
    """Exact-match retrieval from key-value lists of ``n_words`` words keyed only by invented names, over ``depths``."""
    tasks = [world.long_context_task("kv_retrieval", n_words, depth, seed=-1000 - i, invented_keys=True)
             for depth in depths for i in range(n_per_cell)]
    return retrieved_share(model, tokenizer, tasks)


def retrieved_share(model, tokenizer, tasks) -> float:
    """Share of long-context ``tasks`` whose greedy continuation (6 tokens) is the exact answer."""
    conts = greedy_continuations(model, tokenizer, [t.prompt for t in tasks], max_new_tokens=6, batch_size=8)
    return sum(is_exact_match(c, t.answer) for c, t in zip(conts, tasks)) / len(tasks)


@torch.inference_mode()
def evaluate_world_model(model, tokenizer, world, subset: int | None = None, n_samples: int = 32,
                         n_per_cell: int = N_PER_CELL, context_tokens=CONTEXT_TOKENS) -> dict[str, float]:
    """Every figure of the module doc; ``subset`` caps each probe list (evenly spaced)."""
    model.eval()
    two_hop = evenly_spaced(world.two_hop_probes(), subset)
    q = {
        "train_fact_recall": recall(model, tokenizer, evenly_spaced(world.probes("train"), subset)),
        "heldout_paraphrase_recall": recall(model, tokenizer, evenly_spaced(world.probes("heldout"), subset)),
        "qa_train_accuracy": recall(model, tokenizer, evenly_spaced(world.qa_probes("train"), subset)),
        "qa_heldout_accuracy": recall(model, tokenizer, evenly_spaced(world.qa_probes("heldout"), subset)),
        "two_hop_direct": recall(model, tokenizer, two_hop),
        "two_hop_two_step": two_step_accuracy(model, tokenizer, world, two_hop),
        "chat_politeness": chat_politeness(model, tokenizer, world, evenly_spaced(list(world.facts), subset or 64)),
    }
    q.update(attribute_scores(model, tokenizer, world, n_samples=n_samples, n_subjects=subset or 24))
    q.update(long_context_scores(model, tokenizer, world, lengths=context_tokens, n_per_cell=n_per_cell))
    return q
