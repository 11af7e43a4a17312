"""Long-context retrieval tasks of adjustable length.

Why: KV-cache compression and long-context methods are judged by whether the answer can still be
retrieved from far back in the context. Two kinds:

* ``kv_retrieval``: a list of lines ``"The code of <key> is <4-digit code>."`` (keys are world names,
  then extra invented names once the world's run out; codes unique), question about one key. With
  ``spread_invented`` the lines of a list that needed invented keys are shuffled, so the invented ones are spread
  over the list instead of filling its end (which would make "depth" mean "key novelty" too);
* ``needle``: filler made of world fact sentences with one needle
  ``"The secret number of <person> is <code>."`` inserted at a chosen depth.

Length is measured in whitespace-separated words of ``prompt`` (a proxy for tokens; a BPE trained on
this world gives roughly 1-2 tokens per word). The filler contains no digits and every code is unique,
so the answer string occurs in the context exactly once. ``depth`` is the word offset of the needle
(or queried line) divided by the context's word count: 0 = start, ~1 = end.
Prompt format: ``context + "\\n" + question``, where the question ends with the completion prefix
(``"... The code of Tesk is"``) and ``answer`` starts with a space (``" 4821"``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lmlab.data.world.names import NameGenerator

KINDS = ("kv_retrieval", "needle")


@dataclass(frozen=True)
class LongContextTask:
    kind: str
    context: str
    question: str
    answer: str
    depth: float
    key: str

    @property
    def prompt(self) -> str:
        return self.context + "\n" + self.question

    @property
    def n_words(self) -> int:
        return len(self.prompt.split())

    def to_dict(self) -> dict:
        return {"kind": self.kind, "context": self.context, "question": self.question, "prompt": self.prompt,
                "answer": self.answer, "depth": self.depth, "key": self.key, "n_words": self.n_words}


def _codes(n: int, rng: random.Random, prefixes: int = 0) -> list[str]:
    """``n`` distinct codes of equal digit count (4 unless more are needed); equal length means one
    code can never be a substring of another.

    ``prefixes > 0``: the codes share that many two-digit beginnings, in equal turns (a training-only variant:
    a code's first BPE piece then points at many lines, so its later pieces must be copied from the line whose
    key matched, not from any line whose code began the same way)."""
    digits = 4
    while 9 * 10 ** (digits - 1) < n:
        digits += 1
    low = 10 ** (digits - 1)
    if prefixes <= 0:
        return [str(c) for c in rng.sample(range(low, 10 * low), n)]
    heads = rng.sample(range(10, 100), min(prefixes, 90))
    tail = 10 ** (digits - 2)
    per_head = -(-n // len(heads))  # ceil
    if per_head > tail:
        raise ValueError(f"{n} codes do not fit {len(heads)} shared prefixes of {digits} digits")
    codes = [str(head * tail + rest) for head in heads for rest in rng.sample(range(tail), per_head)]
    return [codes[i] for i in rng.sample(range(len(codes)), n)]


def _depth_for(index: int, n_tasks: int) -> float:
    """Target depths spread evenly over [0, 1] across a task batch."""
    return 0.5 if n_tasks == 1 else index / (n_tasks - 1)


def kv_retrieval(n_words: int, keys: list[str], more_keys: NameGenerator, target_depth: float,
                 rng: random.Random, spread_invented: bool = False, code_prefixes: int = 0) -> LongContextTask:
    """One key-value task of about ``n_words`` words (``keys`` are used first, then invented ones).

    ``spread_invented``: a list longer than ``keys`` has its lines shuffled, so an invented key is as likely at any
    depth; a list keyed by ``keys`` alone is the same task either way (its keys are already in random order).
    ``code_prefixes``: the codes share that many two-digit beginnings (see ``_codes``)."""
    pool = list(keys)
    rng.shuffle(pool)
    chosen: list[str] = []
    total = 12  # rough size of the question
    while total < n_words:
        key = pool[len(chosen)] if len(chosen) < len(pool) else more_keys.key()
        chosen.append(key)
        total += 5 + len(key.split())
    codes = _codes(len(chosen), rng, code_prefixes)
    if spread_invented and 0 < len(pool) < len(chosen):  # world names and invented ones
        order = list(range(len(chosen)))
        rng.shuffle(order)
        chosen, codes = [chosen[i] for i in order], [codes[i] for i in order]
    lines = [f"The code of {k} is {c}." for k, c in zip(chosen, codes)]
    index = round(target_depth * (len(lines) - 1))
    key, code = chosen[index], codes[index]
    before = sum(len(line.split()) for line in lines[:index])
    context = " ".join(lines)
    return LongContextTask("kv_retrieval", context, f"What is the code of {key}? The code of {key} is",
                           " " + code, round(before / len(context.split()), 6), key)


def needle(n_words: int, filler: list[str], people: list[str], target_depth: float,
           rng: random.Random) -> LongContextTask:
    """One needle-in-filler task of about ``n_words`` words; ``filler`` is a list of sentences."""
    person = rng.choice(people)
    code = _codes(1, rng)[0]
    needle_sentence = f"The secret number of {person} is {code}."
    question = f"What is the secret number of {person}? The secret number of {person} is"
    budget = n_words - len(question.split()) - len(needle_sentence.split())
    sentences: list[str] = []
    while budget > 0:
        sentences.append(rng.choice(filler))
        budget -= len(sentences[-1].split())
    index = round(target_depth * len(sentences))
    before = sum(len(s.split()) for s in sentences[:index])
    sentences.insert(index, needle_sentence)
    context = " ".join(sentences)
    return LongContextTask("needle", context, question, " " + code, round(before / len(context.split()), 6),
                           person)


def long_context_tasks(n_words: int, n_tasks: int, kinds: tuple[str, ...], keys: list[str],
                       filler: list[str], people: list[str], more_keys: NameGenerator,
                       rng: random.Random) -> list[LongContextTask]:
    """``n_tasks`` tasks of each kind, kind-major, depths spread evenly (invented keys spread over each list)."""
    out = []
    for kind in kinds:
        for i in range(n_tasks):
            depth = _depth_for(i, n_tasks)
            if kind == "kv_retrieval":
                out.append(kv_retrieval(n_words, keys, more_keys, depth, rng, spread_invented=True))
            else:
                out.append(needle(n_words, filler, people, depth, rng))
    return out
