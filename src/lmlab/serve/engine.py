"""The engine: one background thread that owns the model and runs the continuous-batching ``Decoder``.

HTTP handlers (asyncio) never touch the model. They ``submit`` a :class:`Job` and read its events from an
asyncio queue; the engine thread admits waiting jobs into the running batch whenever rows are free, steps
the decoder, and posts every new token to its job's queue (``loop.call_soon_threadsafe``). A job whose
client went away is ``cancel``-led: its rows leave the batch at the next step.

Scheduling: first come, first served. A job joins the running batch when its rows fit (``max_batch_size``)
and it names the adapter the batch runs with; a job naming another adapter waits (and holds back the jobs
behind it) until the batch has drained, then the engine switches adapters. Steering vectors need no such
care: they act on their own rows only (``lmlab.serve.methods.SteeringTable``).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field

import torch

from lmlab.core.decoder import Decoder
from lmlab.core.hooks import forward_context
from lmlab.core.sampling import SamplingParams
from lmlab.errors import LmlabError
from lmlab.serve.config import ServeConfig
from lmlab.serve.errors import APIError
from lmlab.serve.methods import AdapterSet, SteeringTable
from lmlab.serve.metrics import Metrics

TopList = list[tuple[int, float]]  # (token id, log-probability), best first


@dataclass
class Job:
    """One API request: ``prompts`` (token-id lists), each sampled ``n`` times; choice ``i * n + j`` is
    sample j of prompt i."""

    prompts: list[list[int]]
    params: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 16
    n: int = 1
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: tuple[str, ...] = ()
    logprobs: int | None = None  # top-k log-probs of generated tokens (None = none)
    prompt_logprobs: int | None = None  # log-probs of the prompt tokens with this top-k (None = none)
    adapter: str | None = None
    steer: tuple[str, float] | None = None  # (steering vector name, coefficient)
    # set by the engine
    queue: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    arrived: float = 0.0
    cancelled: bool = False
    done: bool = False

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n


# events a job's queue receives, in order; DONE ends the stream
@dataclass
class PromptLogprobs:
    prompt: int  # index into Job.prompts
    tokens: list[int]
    logprobs: list[float | None]  # None for the first token
    top: list[TopList | None]


@dataclass
class Token:
    index: int  # choice index
    token: int
    logprob: float | None = None
    top: TopList | None = None


@dataclass
class Finish:
    index: int
    reason: str  # "stop" (stop token or string) or "length" (max_tokens)


@dataclass
class Failed:
    status: int
    message: str


DONE = object()


class _LogprobRecorder:
    """A logits processor that keeps log-softmax rows of the requests that asked for log-probs (the model's
    distribution after the repetition penalty, before temperature and truncation, as in vLLM)."""

    def __init__(self) -> None:
        self.wanted: dict[int, int] = {}  # request row id -> top-k
        self.last: dict[int, torch.Tensor] = {}  # row id -> [V] log-probs of the step just taken

    def step(self, ids: torch.Tensor, logits: torch.Tensor, info) -> torch.Tensor:
        self.last = {}
        if self.wanted:
            rows = [(b, rid) for b, rid in enumerate(info.row_ids.tolist()) if rid in self.wanted]
            if rows:
                logp = torch.log_softmax(logits[[b for b, _ in rows]].float(), dim=-1)  # [R, V]
                self.last = {rid: logp[i] for i, (_, rid) in enumerate(rows)}
        return logits


def top_list(logp: torch.Tensor, k: int) -> TopList:
    """The k most likely tokens of a [V] log-prob row."""
    if k <= 0:
        return []
    vals, idx = torch.topk(logp, min(k, logp.shape[-1]))
    return list(zip(idx.tolist(), vals.tolist()))


class Engine:
    """Owns the model, tokenizer, decoder and loaded methods; ``start()`` runs the loop in a daemon thread."""

    def __init__(self, model, tokenizer, config: ServeConfig, model_name: str) -> None:
        self.model, self.tokenizer, self.config, self.model_name = model.eval(), tokenizer, config, model_name
        self.context_length = config.context_length or model.config.max_seq_len
        if self.context_length > model.config.max_seq_len:
            raise LmlabError(f"serve config: context_length {self.context_length} exceeds the model's "
                             f"max_seq_len {model.config.max_seq_len}")
        self.metrics = Metrics()
        self.adapters = AdapterSet(model, config.adapters)
        self.steering = SteeringTable(model, config.steering)
        self.stop_token_ids = default_stop_ids(model, tokenizer)
        self._recorder = _LogprobRecorder()
        self._next_row = 0  # the decoder numbers rows consecutively from 0, add after add
        self.decoder = self._new_decoder()
        self._pending: collections.deque[Job] = collections.deque()
        self._cancels: list[Job] = []
        self._rows: dict[int, tuple[Job, int]] = {}  # decoder row id -> (job, choice index)
        self._counts: dict[int, int] = {}  # decoder row id -> tokens generated
        self._left: dict[int, int] = {}  # id(job) -> choices still running
        self._job_rows: dict[int, list[int]] = {}  # id(job) -> its decoder row ids
        self._score_id = -1  # row ids for prompt-scoring forwards (negative: never a decoder row)
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.failure: str | None = None  # set if the loop itself died

    def _new_decoder(self) -> Decoder:
        self._next_row = 0
        return Decoder(self.model, max_len=self.context_length, tokenizer=self.tokenizer,
                       prefill_chunk_size=self.config.prefill_chunk_size)

    # -- the HTTP side (any thread) ---------------------------------------------------------------------------
    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lmlab-serve-engine", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._fail_everything(503, "the server is shutting down")  # jobs still waiting (the loop has ended)
        self.steering.close()

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        """Queue ``job``; its events arrive on the returned queue. A full queue is a 429, a dead engine a 503."""
        job.loop, job.queue, job.arrived = loop, asyncio.Queue(), time.perf_counter()
        with self._cv:
            if self.failure is not None or self._closing:
                raise APIError(503, f"the engine is not running ({self.failure or 'shutting down'})")
            if len(self._pending) >= self.config.max_queue:
                self.metrics.add("rejected_overload", 1)
                raise APIError(429, f"server busy: {len(self._pending)} requests already waiting "
                                    f"(max_queue {self.config.max_queue}); retry later", code="queue_full")
            self._pending.append(job)
            self._cv.notify_all()
        return job.queue

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if waiting, free its rows if running (at the next step)."""
        with self._cv:
            if job.done or job.cancelled:
                return
            job.cancelled = True
            self._cancels.append(job)
            self._cv.notify_all()

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def batch_size(self) -> int:
        return self.decoder.num_active

    @property
    def running_jobs(self) -> int:
        return len(self._left)

    def gauges(self) -> dict:
        return {"lmlab_queue_depth": ("requests waiting for a row", lambda: self.queue_depth),
                "lmlab_batch_size": ("rows in the running batch", lambda: self.batch_size),
                "lmlab_running_requests": ("requests in the running batch", lambda: self.running_jobs),
                "lmlab_max_batch_size": ("rows the batch may hold", lambda: self.config.max_batch_size)}

    # -- the engine thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    if self._closing:
                        break
                    if not self._pending and not self._cancels and self.decoder.num_active == 0:
                        self._cv.wait(timeout=0.5)
                        continue
                    cancels, self._cancels = self._cancels, []
                for job in cancels:
                    self._drop(job)
                self._admit()
                if self.decoder.num_active:
                    self._step()
        except Exception as e:  # noqa: BLE001 - the loop must report its death, not vanish
            self.failure = f"{type(e).__name__}: {e}"
            self._fail_everything(500, f"engine failure: {self.failure}")
            return
        self._fail_everything(503, "the server is shutting down")

    def _post(self, job: Job, *events) -> None:
        if job.loop is None or job.loop.is_closed():
            return
        try:
            job.loop.call_soon_threadsafe(_put_all, job.queue, events)
        except RuntimeError:  # the handler's loop closed meanwhile
            pass

    def _drop(self, job: Job) -> None:
        if job.done:  # it finished between the client's hang-up and now
            return
        with self._cv:
            if job in self._pending:
                self._pending.remove(job)
        rows = [r for r in self._job_rows.get(id(job), []) if r in self._rows]
        active = set(self.decoder.active)
        if any(r in active for r in rows):
            self.decoder.cancel([r for r in rows if r in active])
        self._finish_job(job, rows)
        self.metrics.add("cancelled", 1)

    def _finish_job(self, job: Job, rows: list[int]) -> None:
        for r in self._job_rows.pop(id(job), []):
            self._rows.pop(r, None)
            self._counts.pop(r, None)
        self._recorder_forget(rows)
        self.steering.detach(rows)
        self._left.pop(id(job), None)
        job.done = True

    def _recorder_forget(self, rows) -> None:
        for r in rows:
            self._recorder.wanted.pop(r, None)
        if not self._recorder.wanted and self._recorder in self.decoder.logits_processors:
            self.decoder.logits_processors.remove(self._recorder)

    def _admit(self) -> None:
        while True:
            with self._cv:
                if not self._pending:
                    return
                job = self._pending[0]
                if job.adapter != self.adapters.active and self.decoder.num_active:
                    return  # another adapter: wait until the batch drains
                if self.decoder.num_active + job.rows > self.config.max_batch_size:
                    return
                self._pending.popleft()
            self.adapters.select(job.adapter)
            try:
                self._start(job)
            except Exception as e:  # noqa: BLE001 - this job fails alone; the running batch is untouched
                status = 400 if isinstance(e, LmlabError) else 500  # LmlabError: the decoder refused the request
                self._finish_job(job, list(self._job_rows.get(id(job), [])))
                self._post(job, Failed(status, str(e) if status == 400 else f"{type(e).__name__}: {e}"), DONE)

    def _start(self, job: Job) -> None:
        self.metrics.add("prompt_tokens", sum(len(p) for p in job.prompts))
        if job.prompt_logprobs is not None:
            for i, prompt in enumerate(job.prompts):
                self._post(job, self._score(job, i, prompt))
        if job.max_tokens == 0:
            events = [Finish(i, "length") for i in range(job.rows)]
            job.done = True
            self._post(job, *events, DONE)
            self.metrics.observe_latency(time.perf_counter() - job.arrived)
            return
        gens = None
        if job.seed is not None:  # row r of the job draws from seed + r, as lmlab.generate does
            gens = [torch.Generator(device=self.model.device).manual_seed(job.seed + r) for r in range(job.rows)]
        planned = list(range(self._next_row, self._next_row + job.rows))
        if job.steer is not None:  # before the prefill, which already runs steered
            self.steering.attach(planned, *job.steer)
        self._job_rows[id(job)] = planned
        if job.logprobs is not None:
            for r in planned:
                self._recorder.wanted[r] = job.logprobs
            if self._recorder not in self.decoder.logits_processors:
                self.decoder.logits_processors.append(self._recorder)
        ids = self.decoder.add(job.prompts, job.params, max_new_tokens=job.max_tokens,
                               stop_token_ids=job.stop_token_ids, stop_strings=job.stop_strings,
                               generators=gens, num_samples=job.n)
        if ids != planned:
            raise RuntimeError(f"Decoder numbered rows {ids}, expected {planned}: the engine's row bookkeeping "
                               "assumes consecutive ids")
        self._next_row += len(ids)
        for i, r in enumerate(ids):
            self._rows[r] = (job, i)
        self._left[id(job)] = len(ids)

    @torch.no_grad()
    def _score(self, job: Job, index: int, prompt: list[int]) -> PromptLogprobs:
        """Log-probability of every prompt token given the ones before it (one forward, no cache)."""
        k = job.prompt_logprobs or 0
        sid, self._score_id = self._score_id, self._score_id - 1
        if job.steer is not None:
            self.steering.attach([sid], *job.steer)
        try:
            ids = torch.tensor([prompt], device=self.model.device)
            with forward_context(phase="forward", row_ids=torch.tensor([sid])):
                logits = self.model(ids)[0]  # [T, V]
        finally:
            self.steering.detach([sid])
        logp = torch.log_softmax(logits.float(), dim=-1)[:-1]  # [T-1, V]: predicts tokens 1..T-1
        nxt = torch.tensor(prompt[1:], device=logp.device)
        chosen = logp.gather(1, nxt[:, None])[:, 0].tolist() if len(prompt) > 1 else []
        tops: list[TopList | None] = [None]
        if k > 0 and len(prompt) > 1:
            vals, idx = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)  # [T-1, k]
            tops += [list(zip(i, v)) for i, v in zip(idx.tolist(), vals.tolist())]
        else:
            tops += [[] for _ in chosen]
        return PromptLogprobs(index, list(prompt), [None] + chosen, tops)

    def _step(self) -> None:
        try:
            out = self.decoder.step()
        except Exception as e:  # noqa: BLE001 - fail the running jobs, carry on with a fresh decoder
            self._fail_running(500, f"decoding step failed: {type(e).__name__}: {e}")
            self.decoder = self._new_decoder()
            return
        self.metrics.add("steps", 1)
        self.metrics.add("step_rows", len(out.tokens))
        self.metrics.add("generation_tokens", len(out.tokens))
        logps, self._recorder.last = self._recorder.last, {}
        finished = set(out.finished)
        per_job: dict[int, list] = {}
        jobs: dict[int, Job] = {}
        for rid, tok in zip(out.row_ids.tolist(), out.tokens.tolist()):
            job, idx = self._rows[rid]
            ev = Token(idx, tok)
            self._counts[rid] = self._counts.get(rid, 0) + 1
            if rid in logps:
                row = logps[rid]
                ev.logprob, ev.top = float(row[tok]), top_list(row, self._recorder.wanted.get(rid, 0))
            events = per_job.setdefault(id(job), [])
            jobs[id(job)] = job
            events.append(ev)
            if rid in finished:
                reason = "stop" if tok in job.stop_token_ids else (
                    "length" if self._counts[rid] >= job.max_tokens else "stop")
                events.append(Finish(idx, reason))
                self._left[id(job)] -= 1
        for key, events in per_job.items():
            job = jobs[key]
            if self._left.get(key) == 0:
                self._finish_job(job, list(self._job_rows.get(key, [])))
                events.append(DONE)
                self.metrics.observe_latency(time.perf_counter() - job.arrived)
            self._post(job, *events)

    def _fail_running(self, status: int, message: str) -> None:
        for job in {id(j): j for j, _ in self._rows.values()}.values():
            self._finish_job(job, list(self._job_rows.get(id(job), [])))
            self._post(job, Failed(status, message), DONE)

    def _fail_everything(self, status: int, message: str) -> None:
        self._fail_running(status, message)
        with self._cv:
            pending, self._pending = list(self._pending), collections.deque()
        for job in pending:
            job.done = True
            self._post(job, Failed(status, message), DONE)


def _put_all(queue: asyncio.Queue, events) -> None:
    for ev in events:
        queue.put_nowait(ev)


def default_stop_ids(model, tokenizer) -> list[int]:
    """The ids that end a reply: the model's eos, the tokenizer's eos and a chat template's ``<|im_end|>``."""
    stops: list[int] = []
    eos = model.config.eos_token_id
    if eos is not None:
        stops += list(eos) if isinstance(eos, tuple) else [eos]
    if tokenizer is not None:
        if tokenizer.eos_id is not None:
            stops.append(tokenizer.eos_id)
        for name in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
            tid = tokenizer.token_to_id(name)
            if tid is not None:
                stops.append(tid)
    return sorted(set(stops))
