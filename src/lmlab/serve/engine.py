"""The engine: one background thread that owns the model and runs the continuous-batching ``Decoder``.

HTTP handlers (asyncio) never touch the model. They ``submit`` a :class:`Job` and read its events from an
asyncio queue; the engine thread admits waiting jobs into the running batch whenever rows are free, steps
the decoder, and posts every new token to its job's queue (``loop.call_soon_threadsafe``). A job whose
client went away is ``cancel``-led: its rows leave the batch at the next step.

Scheduling: first come, first served, with at most ``max_batch_size`` rows running in all. A job joins the
main batch (one ``Decoder``, the full KV cache) when its rows fit and it names the adapter the batch runs with;
a job naming another adapter waits (and holds back the jobs behind it) until the batch has drained, then the
engine switches adapters. Steering vectors and guides need no such care: they act on their own rows only
(``methods.SteeringTable``, ``guides.RowSubset``). A job naming a KV policy gets a *lane* of its own: a
Decoder whose cache runs a fresh copy of the policy (``kv_policies``), stepped in turn with the main batch
(one forward per lane per step), with its own adapter, steering rows and guide.
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
from lmlab.serve.guides import GuideTable, RowSubset
from lmlab.serve.kv_policies import KVPolicyTable
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
    guide: str | None = None  # a guide of the config (lmlab.control)
    kv_policy: str | None = None  # a kv_policies entry of the config (None: the full cache)
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


class Lane:
    """One decoder (and its KV cache) and the rows of the jobs running in it. Lane 0 is the main batch (the
    full cache, one adapter at a time, guides on row subsets); every other lane holds one job that named a
    KV policy. A lane's decoder numbers its rows from 0, so row ids are only unique within a lane."""

    def __init__(self, key: int, decoder: Decoder, guides: dict[str, RowSubset], adapter: str | None = None) -> None:
        self.key, self.decoder, self.guides, self.adapter = key, decoder, guides, adapter
        decoder.logits_processors.extend(guides.values())
        self.recorder = _LogprobRecorder()
        self.next_row = 0  # the decoder numbers rows consecutively from 0, add after add
        self.rows: dict[int, tuple[Job, int]] = {}  # decoder row id -> (job, choice index)
        self.counts: dict[int, int] = {}  # decoder row id -> tokens generated

    def record_logprobs(self, rows: list[int], k: int) -> None:
        for r in rows:
            self.recorder.wanted[r] = k
        if self.recorder not in self.decoder.logits_processors:  # first: the model's own distribution
            self.decoder.logits_processors.insert(0, self.recorder)

    def forget(self, rows: list[int]) -> None:
        for r in rows:
            self.rows.pop(r, None)
            self.counts.pop(r, None)
            self.recorder.wanted.pop(r, None)
        if not self.recorder.wanted and self.recorder in self.decoder.logits_processors:
            self.decoder.logits_processors.remove(self.recorder)
        for guide in self.guides.values():
            guide.release(rows)


class Engine:
    """Owns the model, tokenizer, decoders and loaded methods; ``start()`` runs the loop in a daemon thread."""

    def __init__(self, model, tokenizer, config: ServeConfig, model_name: str) -> None:
        self.model, self.tokenizer, self.config, self.model_name = model.eval(), tokenizer, config, model_name
        self.context_length = config.context_length or model.config.max_seq_len
        if self.context_length > model.config.max_seq_len:
            raise LmlabError(f"serve config: context_length {self.context_length} exceeds the model's "
                             f"max_seq_len {model.config.max_seq_len}")
        self.metrics = Metrics()
        self.adapters = AdapterSet(model, config.adapters)
        self.steering = SteeringTable(model, config.steering)
        self.guides = GuideTable(model, tokenizer, config.guides)
        self.kv_policies = KVPolicyTable(config.kv_policies, config.default_kv_policy)
        self.stop_token_ids = default_stop_ids(model, tokenizer)
        self.main = self._new_main()
        self._lanes: dict[int, Lane] = {0: self.main}
        self._next_lane = 1
        self._pending: collections.deque[Job] = collections.deque()
        self._cancels: list[Job] = []
        self._left: dict[int, int] = {}  # id(job) -> choices still running
        self._job_rows: dict[int, list[int]] = {}  # id(job) -> its decoder row ids (in its lane)
        self._job_lane: dict[int, Lane] = {}  # id(job) -> the lane it runs in
        self._score_id = -1  # row ids for prompt-scoring forwards (negative: never a decoder row)
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.failure: str | None = None  # set if the loop itself died

    def _new_decoder(self, cache_policy=None) -> Decoder:
        return Decoder(self.model, max_len=self.context_length, tokenizer=self.tokenizer,
                       prefill_chunk_size=self.config.prefill_chunk_size, cache_policy=cache_policy)

    def _new_main(self) -> Lane:
        return Lane(0, self._new_decoder(), self.guides.wrappers(), adapter=self.adapters.active)

    @property
    def decoder(self) -> Decoder:
        """The main batch's decoder."""
        return self.main.decoder

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
        """Rows running, in all lanes."""
        return sum(lane.decoder.num_active for lane in list(self._lanes.values()))

    @property
    def running_jobs(self) -> int:
        return len(self._left)

    @property
    def policy_lanes(self) -> int:
        return len(self._lanes) - 1

    def gauges(self) -> dict:
        return {"lmlab_queue_depth": ("requests waiting for a row", lambda: self.queue_depth),
                "lmlab_batch_size": ("rows in the running batch", lambda: self.batch_size),
                "lmlab_running_requests": ("requests in the running batch", lambda: self.running_jobs),
                "lmlab_max_batch_size": ("rows the batch may hold", lambda: self.config.max_batch_size),
                "lmlab_kv_policy_lanes": ("requests decoding in a KV-policy cache of their own",
                                          lambda: self.policy_lanes)}

    # -- the engine thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    if self._closing:
                        break
                    if not self._pending and not self._cancels and self.batch_size == 0:
                        self._cv.wait(timeout=0.5)
                        continue
                    cancels, self._cancels = self._cancels, []
                for job in cancels:
                    self._drop(job)
                self._admit()
                for lane in list(self._lanes.values()):
                    if lane.decoder.num_active:
                        self._step(lane)
                self._close_idle_lanes()
        except Exception as e:  # noqa: BLE001 - the loop must report its death, not vanish
            self.failure = f"{type(e).__name__}: {e}"
            self._fail_everything(500, f"engine failure: {self.failure}")
            return
        self._fail_everything(503, "the server is shutting down")

    def _use(self, lane: Lane) -> None:
        """Before any forward in ``lane``: its adapter, and its rows for the steering hooks."""
        self.adapters.select(lane.adapter)
        self.steering.use(lane.key)

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
        lane = self._job_lane.get(id(job))
        if lane is not None:
            active = set(lane.decoder.active)
            live = [r for r in self._job_rows.get(id(job), []) if r in active]
            if live:
                lane.decoder.cancel(live)
        self._finish_job(job)
        self.metrics.add("cancelled", 1)

    def _finish_job(self, job: Job) -> None:
        rows = self._job_rows.pop(id(job), [])
        lane = self._job_lane.pop(id(job), None)
        if lane is not None:
            lane.forget(rows)
            self.steering.use(lane.key)
            self.steering.detach(rows)
            self.steering.use(0)
        self._left.pop(id(job), None)
        job.done = True

    def _admit(self) -> None:
        while True:
            with self._cv:
                if not self._pending:
                    return
                job = self._pending[0]
                if self.batch_size + job.rows > self.config.max_batch_size:
                    return
                if job.kv_policy is None and job.adapter != self.main.adapter and self.main.decoder.num_active:
                    return  # another adapter: wait until the main batch drains
                self._pending.popleft()
            lane = self.main
            try:
                if job.kv_policy is None:
                    lane.adapter = job.adapter
                else:
                    lane = self._open_lane(job)
                self._start(job, lane)
            except Exception as e:  # noqa: BLE001 - this job fails alone; the running batch is untouched
                status = 400 if isinstance(e, LmlabError) else 500  # LmlabError: the decoder refused the request
                self._finish_job(job)
                self._post(job, Failed(status, str(e) if status == 400 else f"{type(e).__name__}: {e}"), DONE)

    def _open_lane(self, job: Job) -> Lane:
        """A decoder whose cache runs a fresh copy of the job's KV policy, with the job's adapter and guide."""
        key, self._next_lane = self._next_lane, self._next_lane + 1
        guides = {job.guide: self.guides.subset(job.guide)} if job.guide else {}
        lane = Lane(key, self._new_decoder(self.kv_policies.policy(job.kv_policy)), guides, adapter=job.adapter)
        self._lanes[key] = lane
        return lane

    def _close_idle_lanes(self) -> None:
        for key, lane in list(self._lanes.items()):
            if key != 0 and lane.decoder.num_active == 0:
                del self._lanes[key]
                self.steering.drop_lane(key)

    def _start(self, job: Job, lane: Lane) -> None:
        self._use(lane)
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
        planned = list(range(lane.next_row, lane.next_row + job.rows))
        self._job_rows[id(job)] = planned
        self._job_lane[id(job)] = lane
        if job.steer is not None:  # before the prefill, which already runs steered
            self.steering.attach(planned, *job.steer)
        if job.guide is not None:  # before add(), which starts the guide on the claimed rows
            lane.guides[job.guide].claim(planned)
        if job.logprobs is not None:
            lane.record_logprobs(planned, job.logprobs)
        ids = lane.decoder.add(job.prompts, job.params, max_new_tokens=job.max_tokens,
                               stop_token_ids=job.stop_token_ids, stop_strings=job.stop_strings,
                               generators=gens, num_samples=job.n)
        if ids != planned:
            raise RuntimeError(f"Decoder numbered rows {ids}, expected {planned}: the engine's row bookkeeping "
                               "assumes consecutive ids")
        lane.next_row += len(ids)
        for i, r in enumerate(ids):
            lane.rows[r] = (job, i)
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

    def _step(self, lane: Lane) -> None:
        self._use(lane)
        try:
            out = lane.decoder.step()
        except Exception as e:  # noqa: BLE001 - fail the lane's jobs, carry on with a fresh decoder
            self._fail_lane(lane, 500, f"decoding step failed: {type(e).__name__}: {e}")
            if lane is self.main:
                self.main = self._lanes[0] = self._new_main()
            else:
                self._lanes.pop(lane.key, None)
                self.steering.drop_lane(lane.key)
            return
        self.metrics.add("steps", 1)
        self.metrics.add("step_rows", len(out.tokens))
        self.metrics.add("generation_tokens", len(out.tokens))
        logps, lane.recorder.last = lane.recorder.last, {}
        finished = set(out.finished)
        per_job: dict[int, list] = {}
        jobs: dict[int, Job] = {}
        for rid, tok in zip(out.row_ids.tolist(), out.tokens.tolist()):
            job, idx = lane.rows[rid]
            ev = Token(idx, tok)
            lane.counts[rid] = lane.counts.get(rid, 0) + 1
            if rid in logps:
                row = logps[rid]
                ev.logprob, ev.top = float(row[tok]), top_list(row, lane.recorder.wanted.get(rid, 0))
            events = per_job.setdefault(id(job), [])
            jobs[id(job)] = job
            events.append(ev)
            if rid in finished:
                reason = "stop" if tok in job.stop_token_ids else (
                    "length" if lane.counts[rid] >= job.max_tokens else "stop")
                events.append(Finish(idx, reason))
                self._left[id(job)] -= 1
        for key, events in per_job.items():
            job = jobs[key]
            if self._left.get(key) == 0:
                self._finish_job(job)
                events.append(DONE)
                self.metrics.observe_latency(time.perf_counter() - job.arrived)
            self._post(job, *events)

    def _fail_lane(self, lane: Lane, status: int, message: str) -> None:
        for job in {id(j): j for j, _ in lane.rows.values()}.values():
            self._finish_job(job)
            self._post(job, Failed(status, message), DONE)

    def _fail_running(self, status: int, message: str) -> None:
        for lane in list(self._lanes.values()):
            self._fail_lane(lane, status, message)

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
