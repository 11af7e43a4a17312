"""The step-level decoder: prefill, then step, over an external KV cache; rows join and leave at any step.

Everything that decodes is a thin layer over :class:`Decoder`: ``generate`` / ``stream_generate`` (one
batch of rows added at once), best-of-N (``num_samples``: one prefill per prompt, cache rows forked), guided
decoding (a stateful logits processor, see ``lmlab.core.processors``), a server (requests are rows).

    dec = Decoder(model, max_len=256)
    a = dec.add([prompt_a], SamplingParams(temperature=0.8), max_new_tokens=64, generators=[g])  # -> [0]
    out = dec.step()                 # one token for every active row: out.row_ids [B], out.tokens [B]
    b = dec.add([prompt_b])          # joins the running batch at this step (continuous batching)
    while dec.num_active:
        out = dec.step()             # out.finished: request ids that stopped at this step

Each row has its own sampling settings, stop conditions (stop token ids, stop strings, ``max_new_tokens``)
and ``torch.Generator``: a seeded request yields the same tokens whatever else shares its batch. A finished
row leaves the cache (``KVCache.select_rows``) and costs no more compute; a joining row is prefilled in a
cache of its own (optionally in chunks of ``prefill_chunk_size`` tokens, so a long prompt streams through a
bounded cache policy) and appended (``KVCache.append_rows``).

Per step the Python work is proportional to the number of distinct sampling settings and of seeded rows
(one ``torch.multinomial`` each), not to the batch size; the bookkeeping of rows is redone only when rows
join or leave.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from lmlab.core.cache import CachePolicy, KVCache
from lmlab.core.hooks import forward_context
from lmlab.core.processors import StepInfo, notify, run_processors
from lmlab.core.sampling import RowSampler, SamplingParams
from lmlab.errors import LmlabError


@dataclass(frozen=True)
class StepOutput:
    """One decoding step: ``tokens[i]`` is the new token of request ``row_ids[i]`` (both [B]); ``finished``
    lists the request ids that stopped at this step (their last token is in ``tokens``)."""

    row_ids: torch.Tensor
    tokens: torch.Tensor
    finished: list[int]

    def as_dict(self) -> dict[int, int]:
        return dict(zip(self.row_ids.tolist(), self.tokens.tolist()))


class _History:
    """Every active row's prompt + generated ids, right-aligned at a shared end column, left-padded.

    All active rows gain one token per step, so they can share the end column ``end``; ``view`` is then the
    left-padded id history that logits processors expect, without per-row copying.
    """

    def __init__(self, max_len: int, pad: int, device: torch.device) -> None:
        self.max_len, self.pad = max_len, pad
        self.buf = torch.full((0, 2 * max_len), pad, dtype=torch.long, device=device)  # [B, W]
        self.end = max_len  # invariant: end >= max_len, so any prompt fits to its left

    def view(self, width: int) -> torch.Tensor:
        return self.buf[:, self.end - width:self.end]  # [B, width]

    def append(self, tokens: torch.Tensor) -> None:
        if self.end == self.buf.shape[1]:  # full: keep the last max_len columns (no row is longer)
            fresh = torch.full_like(self.buf, self.pad)
            fresh[:, :self.max_len] = self.buf[:, self.end - self.max_len:self.end]
            self.buf, self.end = fresh, self.max_len
        self.buf[:, self.end] = tokens
        self.end += 1

    def add_rows(self, rows: list[list[int]]) -> None:
        new = torch.full((len(rows), self.buf.shape[1]), self.pad, dtype=torch.long, device=self.buf.device)
        for i, r in enumerate(rows):
            new[i, self.end - len(r):self.end] = torch.tensor(r, dtype=torch.long)
        self.buf = torch.cat([self.buf, new])

    def select(self, idx: torch.Tensor) -> None:
        self.buf = self.buf[idx]


class Decoder:
    """Continuous-batching decoder over one model and one KV cache (``self.cache``, None until rows exist).

    - ``max_len``: tokens per row (prompt + new tokens) the cache is sized for; a request that needs more is
      refused by name when it is added, and the running rows are untouched.
    - ``cache_policy``: a ``CachePolicy`` (each cache works on its own fresh copy).
    - ``logits_processors``: plain ``fn(ids, logits)`` or stateful processors (``lmlab.core.processors``);
      a list the caller may change between steps.
    - ``prefill_chunk_size``: stream prompts through the cache this many tokens at a time (None = one shot).
    - ``tokenizer``: needed only by requests with stop strings.
    """

    def __init__(self, model, *, max_len: int, cache_policy: CachePolicy | None = None,
                 logits_processors: Sequence = (), pad_token_id: int | None = None,
                 prefill_chunk_size: int | None = None, tokenizer=None) -> None:
        if max_len < 1:
            raise LmlabError(f"Decoder: max_len must be >= 1, got {max_len}")
        if prefill_chunk_size is not None and prefill_chunk_size < 1:
            raise LmlabError(f"Decoder: prefill_chunk_size must be >= 1, got {prefill_chunk_size}")
        self.model, self.max_len, self.cache_policy = model, max_len, cache_policy
        self.logits_processors = list(logits_processors)
        self.prefill_chunk_size, self.tokenizer = prefill_chunk_size, tokenizer
        self.pad = pad_token_id if pad_token_id is not None else (model.config.pad_token_id or 0)
        self.device = model.device
        self.cache: KVCache | None = None
        self.steps = 0  # decoding steps taken by this decoder
        self._next_id = 0
        dev, long = self.device, torch.long
        # per-row state, aligned with the batch order (tensors [B, ...] and Python lists of length B)
        self._ids = torch.zeros(0, dtype=long, device=dev)  # request ids
        self._prompt_len = torch.zeros(0, dtype=long, device=dev)
        self._join = torch.zeros(0, dtype=long, device=dev)  # self.steps when the row joined
        self._deadline = torch.zeros(0, dtype=long, device=dev)  # self.steps at which max_new_tokens is reached
        self._stop = torch.zeros(0, 0, dtype=long, device=dev)  # [B, S] stop token ids, -1 = none
        self._logits: torch.Tensor | None = None  # [B, V] next-token logits
        self._seen: torch.Tensor | None = None  # [B, V] bool, for the repetition penalty
        self._params: list[SamplingParams] = []
        self._gens: list[torch.Generator | None] = []
        self._stop_strings: list[tuple[str, ...]] = []
        self._lens: list[int] = []  # prompt length + self.steps at join, per row (history length = this + age)
        self._history = _History(max_len, self.pad, dev)
        self._sampler = RowSampler([], [], dev)
        self._min_deadline: int | None = None
        self._broken: str | None = None  # set when a decode forward raised after the step was committed

    # -- inspection -----------------------------------------------------------------------------------------
    @property
    def num_active(self) -> int:
        return len(self._params)

    @property
    def active(self) -> list[int]:
        """Request ids of the active rows, in batch order."""
        return self._ids.tolist()

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise LmlabError(f"Decoder: unusable after a model forward failed during a step ({self._broken}); "
                             "start a new Decoder")

    # -- joining ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def add(self, prompts: Sequence[Sequence[int]],
            params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
            *, max_new_tokens: int = 32, stop_token_ids: Sequence[int] | None = None,
            stop_strings: Sequence[str] = (), generators=None, num_samples: int = 1) -> list[int]:
        """Prefill ``prompts`` (token-id lists) and add them to the running batch; returns their request ids.

        ``params``: one ``SamplingParams`` for all, or one per prompt. ``stop_token_ids`` None = the model's
        eos. ``generators``: None (global RNG), one ``torch.Generator`` shared by every new row, or one per
        row (``len(prompts) * num_samples``, grouped by prompt). ``num_samples=N``: each prompt is prefilled
        once and its cache row forked N ways; the ids come back grouped by prompt (prompt-major).
        """
        self._check_usable()
        rows = [list(map(int, p)) for p in prompts]
        n = len(rows)
        if n == 0:
            return []
        if any(len(r) == 0 for r in rows):
            raise LmlabError("Decoder.add: every prompt must contain at least one token")
        if num_samples < 1:
            raise LmlabError(f"Decoder.add: num_samples must be >= 1, got {num_samples}")
        if max_new_tokens < 1:
            raise LmlabError(f"Decoder.add: max_new_tokens must be >= 1, got {max_new_tokens}")
        plist = [params] * n if isinstance(params, SamplingParams) else list(params)
        if len(plist) != n:
            raise LmlabError(f"Decoder.add: {len(plist)} SamplingParams for {n} prompts")
        for p in plist:
            p.validate()
        if stop_strings and self.tokenizer is None:
            raise LmlabError("stop_strings need tokenizer= to decode the output")
        total = n * num_samples
        gens = self._generators(generators, total)
        ids = list(range(self._next_id, self._next_id + total))
        vocab = self.model.config.vocab_size
        for i, r in enumerate(rows):
            if min(r) < 0 or max(r) >= vocab:
                raise LmlabError(f"request {ids[i * num_samples]}: token id {min(r) if min(r) < 0 else max(r)} "
                                 f"is outside the model's vocabulary [0, {vocab})")
            if len(r) + max_new_tokens > self.max_len:
                rid = ids[i * num_samples]
                raise LmlabError(f"request {rid}: prompt of {len(r)} tokens + max_new_tokens {max_new_tokens} = "
                                 f"{len(r) + max_new_tokens} exceeds the decoder's max_len {self.max_len}")
        lengths = torch.tensor([len(r) for r in rows], device=self.device)
        head_ids = torch.tensor(ids[::num_samples], device=self.device)  # with N > 1 the prefill reports sample 0
        cache = self.model.new_cache(n, self.max_len, policy=self.cache_policy)
        try:
            with forward_context(phase="prefill", row_ids=head_ids, prompt_lengths=lengths):
                logits = self._prefill(rows, lengths, cache)  # [n, V], in a cache of their own
        except LmlabError as e:  # e.g. a prompt that does not fit a bounded cache: the running rows are untouched
            named = f"request {ids[0]}" if total == 1 else f"requests {ids[0]}..{ids[-1]}"
            raise LmlabError(f"{named}: {e}") from e
        if num_samples > 1:
            cache = cache.fork(repeats=num_samples)
            logits = logits.repeat_interleave(num_samples, dim=0)
            rows = [r for r in rows for _ in range(num_samples)]
            plist = [p for p in plist for _ in range(num_samples)]
            lengths = lengths.repeat_interleave(num_samples)
        # nothing of the running batch has changed so far: a processor refusing the rows leaves it intact
        try:
            notify(self.logits_processors, "start", rows, [max_new_tokens] * total, ids)
        except LmlabError:
            try:  # processors that did start these rows forget them again
                notify(self.logits_processors, "finish", ids)
            except LmlabError:
                pass
            raise
        self._next_id += total
        self._join_rows(ids, rows, lengths, cache, logits, plist, gens, max_new_tokens, stop_token_ids, stop_strings)
        return ids

    def _generators(self, generators, total: int) -> list[torch.Generator | None]:
        if generators is None or isinstance(generators, torch.Generator):
            return [generators] * total
        gens = list(generators)
        if len(gens) != total:
            raise LmlabError(f"Decoder.add: {len(gens)} generators for {total} rows")
        return gens

    def _prefill(self, rows: list[list[int]], lengths: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run the prompts [n] through ``cache``; logits of each row's last prompt token [n, V]."""
        n, T = len(rows), max(len(r) for r in rows)
        right = torch.full((n, T), self.pad, dtype=torch.long, device=self.device)  # right-padded prompts
        for b, r in enumerate(rows):
            right[b, :len(r)] = torch.tensor(r, device=self.device)
        chunk = self.prefill_chunk_size or T
        if chunk >= T:
            ragged = int(lengths.min()) < T
            return self.model(right, cache=cache, input_lengths=lengths if ragged else None,
                              logits_at=lengths - 1)[:, 0]
        last = None
        for i in range(0, T, chunk):
            width = min(chunk, T - i)
            real = (lengths - i).clamp(0, width)  # [n] real tokens of each row in this chunk
            at = (lengths - 1 - i).clamp(0, width - 1)  # where each row's last prompt token would be
            out = self.model(right[:, i:i + width], cache=cache,
                             input_lengths=real if bool((real < width).any()) else None, logits_at=at)[:, 0]
            ends_here = ((lengths - 1 >= i) & (lengths - 1 < i + width))[:, None]  # [n, 1]
            last = out if last is None else torch.where(ends_here, out, last)
        return last

    def _join_rows(self, ids, rows, lengths, cache, logits, plist, gens, max_new, stop_token_ids, stop_strings):
        dev, total = self.device, len(ids)
        if self.cache is None or self.num_active == 0:
            self.cache = cache
        else:
            self.cache.append_rows(cache)
        self._ids = torch.cat([self._ids, torch.tensor(ids, device=dev)])
        self._prompt_len = torch.cat([self._prompt_len, lengths])
        self._join = torch.cat([self._join, torch.full((total,), self.steps, device=dev)])
        self._deadline = torch.cat([self._deadline, torch.full((total,), self.steps + max_new, device=dev)])
        stops = sorted(set(self._default_stops() if stop_token_ids is None else stop_token_ids))
        width = max(self._stop.shape[1], len(stops))
        old = torch.cat([self._stop, self._stop.new_full((self._stop.shape[0], width - self._stop.shape[1]), -1)], 1)
        new = torch.full((total, width), -1, dtype=torch.long, device=dev)
        new[:, :len(stops)] = torch.tensor(stops, dtype=torch.long, device=dev)
        self._stop = torch.cat([old, new])
        running = self._logits is not None and self._logits.shape[0] > 0
        self._logits = torch.cat([self._logits, logits]) if running else logits
        self._params += plist
        self._gens += gens
        self._stop_strings += [tuple(stop_strings)] * total
        self._lens += [len(r) - self.steps for r in rows]
        self._history.add_rows(rows)
        if self._seen is not None or any(p.repetition_penalty != 1.0 for p in plist):
            vocab = self.model.config.vocab_size
            if self._seen is None:
                self._seen = torch.zeros(self.num_active - total, vocab, dtype=torch.bool, device=dev)
            seen = torch.zeros(total, vocab, dtype=torch.bool, device=dev)
            for b, r in enumerate(rows):
                seen[b, r] = True
            self._seen = torch.cat([self._seen, seen])
        self._rebuild()

    def _default_stops(self) -> list[int]:
        eos = self.model.config.eos_token_id
        if eos is None:
            return []
        return list(eos) if isinstance(eos, tuple) else [eos]

    def _rebuild(self) -> None:
        self._sampler = RowSampler(self._params, self._gens, self.device)
        self._min_deadline = int(self._deadline.min()) if self.num_active else None
        self._strings_rows = [b for b, s in enumerate(self._stop_strings) if s]
        self._width = max((n + self.steps for n in self._lens), default=0)  # history width

    # -- stepping --------------------------------------------------------------------------------------------
    def step(self) -> StepOutput:
        """Choose one token for every active row, retire the rows that stopped, forward the others."""
        with torch.inference_mode():
            out = self._step()
        # the decoder's state lives in inference mode (no autograd bookkeeping: ~1 ms a step on GPT-2's 12
        # layers); what leaves it is a normal tensor, which a caller may change in place or train on
        return StepOutput(row_ids=out.row_ids.clone(), tokens=out.tokens.clone(), finished=out.finished)

    def _step(self) -> StepOutput:
        self._check_usable()
        if self.num_active == 0:
            raise LmlabError("Decoder.step: no active rows (add requests first)")
        logits = self._logits.float()  # [B, V]
        if self._sampler.needs_seen:
            logits = self._sampler.penalise(logits, self._seen)
        if self.logits_processors:
            if logits is self._logits:
                logits = logits.clone()  # a processor editing in place and then raising must not touch our state
            info = StepInfo(row_ids=self._ids, prompt_lengths=self._prompt_len, new_tokens=self.steps - self._join,
                            step=self.steps)
            logits = run_processors(self.logits_processors, self._history.view(self._width), logits, info)
        tokens = self._sampler.choose(logits)  # [B]
        # -- from here on the step is committed ----------------------------------------------------------
        row_ids = self._ids
        self._history.append(tokens)
        self._width += 1
        self.steps += 1
        if self._seen is not None:
            self._seen[torch.arange(len(tokens), device=self.device), tokens] = True
        done = self._stopped(tokens)
        finished: list[int] = []
        if done is not None:
            keep = (~done).nonzero().squeeze(1)
            finished = row_ids[done].tolist()
            self._select(keep)
            tokens_next = tokens[keep]
            notify(self.logits_processors, "finish", finished)
        else:
            tokens_next = tokens
        if self.num_active:
            try:
                with forward_context(phase="decode", row_ids=self._ids, prompt_lengths=self._prompt_len):
                    self._logits = self.model(tokens_next[:, None], cache=self.cache)[:, -1]  # [B', V]
            except Exception as e:
                # the cache has already taken this step's tokens: the rows cannot be decoded consistently
                self._broken = f"{type(e).__name__}: {e}"
                raise
        return StepOutput(row_ids=row_ids, tokens=tokens, finished=finished)

    def _stopped(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """[B] bool of rows that stop at this step, or None when none does."""
        done = None
        if self._stop.shape[1]:
            done = (tokens[:, None] == self._stop).any(dim=1)
        if self._strings_rows:
            flags = [False] * len(tokens)
            for b in self._strings_rows:  # Python per row, but only for rows that asked for stop strings
                text = self.tokenizer.decode(self._generated(b))
                flags[b] = any(s in text for s in self._stop_strings[b])
            hit = torch.tensor(flags, device=self.device)
            done = hit if done is None else done | hit
        if self._min_deadline is not None and self.steps >= self._min_deadline:
            late = self._deadline <= self.steps
            done = late if done is None else done | late
        if done is None or not bool(done.any()):
            return None
        return done

    def _generated(self, b: int) -> list[int]:
        """Row b's generated tokens so far (Python list; used by stop strings)."""
        n_new = self.steps - int(self._join[b])
        return self._history.buf[b, self._history.end - n_new:self._history.end].tolist()

    # -- leaving ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def cancel(self, request_ids: Sequence[int]) -> None:
        """Remove requests from the batch (processors are told through ``finish``); unknown ids are an error."""
        active = self._ids.tolist()
        missing = [r for r in request_ids if r not in active]
        if missing:
            raise LmlabError(f"Decoder.cancel: requests {missing} are not active (active: {active})")
        gone = set(request_ids)
        keep = torch.tensor([i for i, r in enumerate(active) if r not in gone], dtype=torch.long, device=self.device)
        self._select(keep)
        notify(self.logits_processors, "finish", list(request_ids))

    def _select(self, keep: torch.Tensor) -> None:
        """Keep batch rows ``keep`` [B'] (in order) in the cache and every per-row state."""
        idx = keep.tolist()
        if len(idx):
            self.cache.select_rows(keep)
        else:
            self.cache = None
        for name in ("_ids", "_prompt_len", "_join", "_deadline", "_stop", "_logits", "_seen"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[keep])
        self._history.select(keep)
        for name in ("_params", "_gens", "_stop_strings", "_lens"):
            value = getattr(self, name)
            setattr(self, name, [value[i] for i in idx])
        self._rebuild()
