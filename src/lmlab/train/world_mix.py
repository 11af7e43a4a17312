"""The reference model's training stream: short packed batches of world text, and long batches that open
with a long-context task.

Why: the world's text (facts, QA, dialogues, attribute text) is made of short documents, cheap to train on
in short windows; long-context retrieval needs whole tasks of up to ~1K tokens, seen with their question,
at every depth. So every ``long_every``-th batch holds ``long_rows`` windows of ``block_size`` tokens that
each open with one long-context task (key-value list or needle, its length and depth drawn at random, so
every position up to the block length is exercised), the rest filled with world text; every other batch
holds ``short_rows`` windows of ``short_block`` tokens of world text. Loss is not taken on a long task's
context (its random codes carry no learnable signal); it is on the question and answer and on all text.

A copy phase can come first (``copy_steps``) and copy rows can stay in every short batch afterwards
(``copy_rows``): rows of random token segments, each followed by its copy, loss on the copies only -- the
classic trigger of induction heads (Olsson et al. 2022), which retrieval needs and which the world's
templated text never rewards (docs/claims.md, issue 11: without it the reference retrieves nothing).

World text comes from a token stream of ``epochs`` per-epoch shuffled passes over the corpus (each document
after an end-of-text token, as at inference); a window starts at a seeded random offset of it. Batch ``k``
is a pure function of ``(seed, k)``, so the stream's state is just ``k`` and resuming continues it exactly.
"""

from __future__ import annotations

import random
import re
from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.train.objectives import IGNORE_INDEX

DEPTH_BINS = 11  # depths drawn from {0, 0.1, ..., 1}
CODE_PREFIXES = 4  # a list with shared code beginnings (code_prefix_share) has this many, a quarter of its lines each
_KV_LINE = re.compile(r"The code of (.+?) is (\d+)\.")


class WorldMixBlocks:
    """``batches(_)`` yields ``{"input_ids": [B, T], "labels": [B, T]}`` (LongTensors) for the Trainer."""

    def __init__(self, world, tokenizer, texts: list[str], *, block_size: int = 1152, long_rows: int = 8,
                 short_block: int = 256, short_rows: int = 32, long_every: int = 4,
                 long_words: tuple[int, int] = (60, 680), kv_share: float = 0.75, epochs: int = 8,
                 pack_tasks: bool = False, extra_questions: int = 0, length_ramp: int = 0, copy_steps: int = 0,
                 copy_rows: int = 0, copy_block: int | None = None, copy_batch: int | None = None,
                 invented_keys_share: float = 0.0, spread_invented_keys: bool = False, last_line_every: int = 0,
                 first_line_every: int = 0, code_prefix_share: float = 0.0, seed: int = 0) -> None:
        if not texts:
            raise LmlabError("texts: the training corpus is empty")
        if short_block < 16 or block_size < short_block or long_rows < 1 or short_rows < 1 or long_every < 1:
            raise LmlabError("world mix: need 16 <= short_block <= block_size and positive row counts")
        if copy_steps < 0 or not 0 <= copy_rows <= short_rows:
            raise LmlabError(f"world mix: need copy_steps >= 0 and 0 <= copy_rows <= short_rows ({short_rows}), "
                             f"got {copy_steps} and {copy_rows}")
        self.world, self.tokenizer = world, tokenizer
        self.block_size, self.long_rows, self.short_block, self.short_rows = block_size, long_rows, short_block, short_rows
        self.long_every, self.long_words, self.kv_share, self.seed = long_every, tuple(long_words), kv_share, seed
        self.pack_tasks, self.extra_questions, self.length_ramp = pack_tasks, extra_questions, length_ramp
        self.copy_steps, self.copy_rows = copy_steps, copy_rows
        if not 0.0 <= invented_keys_share <= 1.0:
            raise LmlabError(f"world mix: invented_keys_share must be in [0, 1], got {invented_keys_share}")
        self.invented_keys_share = invented_keys_share
        self.spread_invented_keys = spread_invented_keys
        if last_line_every < 0:
            raise LmlabError(f"world mix: last_line_every must be >= 0, got {last_line_every}")
        self.last_line_every = last_line_every
        if first_line_every < 0 or first_line_every == 1:  # remainder 1 of 1 never occurs
            raise LmlabError(f"world mix: first_line_every must be 0 or >= 2, got {first_line_every}")
        self.first_line_every = first_line_every
        if not 0.0 <= code_prefix_share <= 1.0:
            raise LmlabError(f"world mix: code_prefix_share must be in [0, 1], got {code_prefix_share}")
        self.code_prefix_share = code_prefix_share
        # the copy phase's batches: copy_batch rows (default: a short batch's tokens) of copy_block tokens
        # (default short_block); short rows form the circuit sooner than long ones, and too small a batch
        # stalls it (docs/claims.md, issue 11, session 8: 56 x 64 formed, 24 x 64 and 14 x 256 did not)
        self.copy_block = short_block if copy_block is None else copy_block
        self.copy_batch = short_rows * short_block // self.copy_block if copy_batch is None else copy_batch
        if copy_steps and self.copy_batch < 1:
            raise LmlabError(f"world mix: copy_batch must be positive, got {copy_batch}")
        if copy_steps and not 16 <= self.copy_block <= short_block:
            raise LmlabError(f"world mix: need 16 <= copy_block <= short_block ({short_block}), got {copy_block}")
        # copy rows draw from every ordinary token (special tokens -- eos, chat markers -- sit at the low ids)
        self.copy_low = 1 + max(tokenizer.backend.get_added_tokens_decoder(), default=-1)
        self.vocab = len(tokenizer)
        if pack_tasks:  # tokens per word of a task, to draw task lengths that fit the rest of a row
            sample = world.long_context_task("kv_retrieval", 400, 0.5, seed=-7)
            self.tokens_per_word = len(tokenizer.encode(sample.prompt)) / sample.n_words
        self.eos = tokenizer.eos_id
        if self.eos is None:
            raise LmlabError("tokenizer: an eos token is needed to separate documents")
        docs = [np.asarray([self.eos, *ids], dtype=np.int32) for ids in tokenizer.encode_batch(texts)]
        rng = random.Random(f"world-mix:{seed}:order")
        passes = []
        for _ in range(epochs):
            order = list(range(len(docs)))
            rng.shuffle(order)
            passes += [docs[i] for i in order]
        self.stream = np.concatenate(passes)  # [N] world text, every document after an eos
        if len(self.stream) <= block_size + 1:
            raise LmlabError(f"texts: {len(self.stream)} tokens, fewer than one block of {block_size + 1}")
        self.batches_served = 0

    def is_long(self, k: int) -> bool:
        """Batch ``k`` is a long batch (counted from the end of the copy phase)."""
        return k >= self.copy_steps and (k - self.copy_steps) % self.long_every == 0

    def _copy_row(self, rng: random.Random, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Random segments of 8-40 ordinary tokens, each after an eos and followed by its copy; only the copies
        are trained (the segments themselves are unpredictable)."""
        ids: list[int] = []
        keep: list[bool] = []
        while len(ids) < width:
            segment = [rng.randrange(self.copy_low, self.vocab) for _ in range(rng.randint(8, 40))]
            ids += [self.eos, *segment, *segment]
            keep += [False] * (1 + len(segment)) + [True] * len(segment)
        return np.asarray(ids[:width], dtype=np.int32), np.asarray(keep[:width], dtype=bool)

    def _window(self, rng: random.Random, n: int) -> np.ndarray:
        start = rng.randrange(len(self.stream) - n)
        return self.stream[start:start + n]

    def _long_row(self, k: int, r: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        """One long row: a long-context task (or, with ``pack_tasks``, as many as fit) at its start, world text
        after it; the tasks' contexts are not trained on (their random codes carry no learnable signal)."""
        width = self.block_size + 1
        row = self._window(rng, width).copy()  # [T + 1]
        trained = np.ones(width, dtype=bool)  # [T + 1]: is this token a training target
        pos = 0
        kind = "kv_retrieval" if rng.random() < self.kv_share else "needle"
        for attempt in range(64 if self.pack_tasks else 8):  # redraw until it fits
            lo, hi = self._length_range(k)
            if self.pack_tasks:  # later tasks of a row get lengths that fit what is left of it
                hi = min(hi, int((width - pos) / self.tokens_per_word) - 16)
                if hi < lo:
                    break
            n_words, depth = rng.randint(lo, hi), rng.randrange(DEPTH_BINS) / 10
            # drawn only when asked for, so that recipes without it keep their exact stream
            invented = kind == "kv_retrieval" and self.invented_keys_share > 0 and rng.random() < self.invented_keys_share
            seed = self._task_seed(k, r, attempt)
            if kind == "kv_retrieval" and self.last_line_every and seed % self.last_line_every == 0:
                depth = 1.0  # the list's last line, right before the question (see last_line_every)
            elif kind == "kv_retrieval" and self.first_line_every and seed % self.first_line_every == 1:
                depth = 0.0  # the list's first line, the farthest from the question (see first_line_every)
            # drawn only when asked for, like ``invented``
            shared = kind == "kv_retrieval" and self.code_prefix_share > 0 and rng.random() < self.code_prefix_share
            task = self.world.long_context_task(kind, n_words, depth, seed=seed, invented_keys=invented,
                                                spread_invented=self.spread_invented_keys,
                                                code_prefixes=CODE_PREFIXES if shared else 0)
            context = [self.eos, *self.tokenizer.encode(task.context)]
            tail = self.tokenizer.encode("\n" + task.question + task.answer + "." + self._more_questions(task, rng))
            n = len(context) + len(tail)
            if pos + n <= width:
                row[pos:pos + n] = context + tail
                trained[pos + 1:pos + len(context) + 1] = False  # targets inside the context (and its closing "\n")
                pos = pos + n
                if not self.pack_tasks:
                    break
                kind = "kv_retrieval" if rng.random() < self.kv_share else "needle"
        return row, trained

    def _length_range(self, k: int) -> tuple[int, int]:
        """Task lengths (words) drawn for batch ``k``: with ``length_ramp`` a curriculum, the longest task
        growing linearly from 2x the shortest to ``long_words[1]`` over the first ``length_ramp`` batches --
        many short lists first, so the copy mechanism forms on cheap examples before it must reach far."""
        lo, hi = self.long_words
        if self.length_ramp <= 0 or k >= self.length_ramp:
            return lo, hi
        return lo, max(2 * lo, round(2 * lo + (hi - 2 * lo) * k / self.length_ramp))

    def _task_seed(self, k: int, r: int, attempt: int) -> int:
        if self.pack_tasks:  # up to 64 attempts per row (long_rows <= 10)
            return 2_000_000_000 + self.seed * 100_000_000 + k * 1000 + r * 100 + attempt
        return 1_000_000 + self.seed * 10_000_000 + k * 100 + r * 10 + attempt

    def _more_questions(self, task, rng: random.Random) -> str:
        """``extra_questions`` more questions about other keys of a key-value task, each with its answer
        (more retrieval targets per context token; the evaluation asks one)."""
        if self.extra_questions <= 0 or task.kind != "kv_retrieval":
            return ""
        pairs = [(key, code) for key, code in _KV_LINE.findall(task.context) if key != task.key]
        lines = [f"\nWhat is the code of {key}? The code of {key} is {code}."
                 for key, code in rng.sample(pairs, min(self.extra_questions, len(pairs)))]
        return "".join(lines)

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        """Batch ``k`` of the stream (a pure function of ``seed`` and ``k``)."""
        if k < self.copy_steps:
            rng = random.Random(f"world-mix:{self.seed}:copy:{k}")
            rows = [self._copy_row(rng, self.copy_block + 1) for _ in range(self.copy_batch)]
        else:
            k -= self.copy_steps  # the world mix after the copy phase: its batches as without one
            rng = random.Random(f"world-mix:{self.seed}:batch:{k}")
            if k % self.long_every == 0:
                rows = [self._long_row(k, r, rng) for r in range(self.long_rows)]
            else:
                width = self.short_block + 1
                rows = [self._copy_row(rng, width) for _ in range(self.copy_rows)]
                rows += [(self._window(rng, width), np.ones(width, dtype=bool))
                         for _ in range(self.short_rows - self.copy_rows)]
        w = np.stack([row for row, _ in rows])  # [B, T + 1]
        keep = np.stack([trained for _, trained in rows])  # [B, T + 1]
        w_t = torch.from_numpy(w.astype(np.int64))
        labels = torch.where(torch.from_numpy(keep[:, 1:]), w_t[:, 1:], torch.full_like(w_t[:, 1:], IGNORE_INDEX))
        return {"input_ids": w_t[:, :-1].contiguous(), "labels": labels.contiguous()}  # [B, T] each

    def batches(self, _micro_batch: int | None = None):
        """Endless batches from the current position (the Trainer's micro-batch size is not used: each
        batch kind has its own row count)."""
        while True:
            k = self.batches_served
            self.batches_served += 1
            yield self.batch(k)

    def state_dict(self) -> dict[str, Any]:
        return {"batches_served": self.batches_served, "seed": self.seed, "block_size": self.block_size,
                "short_block": self.short_block, "long_every": self.long_every, "stream_tokens": len(self.stream),
                "copy_steps": self.copy_steps, "copy_rows": self.copy_rows, "copy_block": self.copy_block,
                "copy_batch": self.copy_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "block_size", "short_block", "long_every", "stream_tokens", "copy_steps", "copy_rows"):
            mine = self.state_dict()[key]
            if state.get(key, 0 if key.startswith("copy") else None) != mine:
                raise LmlabError(f"cannot resume the world mix: saved with {key}={state.get(key)!r}, this one has {mine!r}")
        self.batches_served = int(state["batches_served"])
