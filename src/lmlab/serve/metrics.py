"""Prometheus text-format metrics (exposition format 0.0.4), without a client library.

Counters only grow; gauges are read from the engine when ``/metrics`` is scraped, so they are never stale.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable


class Metrics:
    """Counters the app and the engine bump; ``render`` adds the engine's live gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)  # (endpoint, status) -> count
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.steps = 0
        self.step_rows = 0  # sum over steps of the batch size (mean batch size = step_rows / steps)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.cancelled = 0
        self.rejected_overload = 0

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def add(self, name: str, value: float) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + value)

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self.latency_sum += seconds
            self.latency_count += 1

    def render(self, gauges: dict[str, tuple[str, Callable[[], float]]]) -> str:
        """The exposition text; ``gauges`` maps a metric name to (help, read function). A sample's "labels"
        string is appended to the name as is (``{a="b"}``, or ``_sum`` / ``_count`` for the summary)."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {_number(value)}")

        with self._lock:
            reqs = sorted(self.requests.items())
            metric("lmlab_requests_total", "counter", "HTTP requests answered, by endpoint and status",
                   [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in reqs] or [("", 0)])
            metric("lmlab_prompt_tokens_total", "counter", "prompt tokens processed", [("", self.prompt_tokens)])
            metric("lmlab_generation_tokens_total", "counter", "tokens generated", [("", self.generation_tokens)])
            metric("lmlab_decode_steps_total", "counter", "decoding steps of the running batch", [("", self.steps)])
            metric("lmlab_decode_rows_total", "counter", "rows decoded, summed over steps", [("", self.step_rows)])
            metric("lmlab_requests_cancelled_total", "counter", "requests whose client went away",
                   [("", self.cancelled)])
            metric("lmlab_requests_rejected_total", "counter", "requests refused because the queue was full",
                   [("", self.rejected_overload)])
            metric("lmlab_request_latency_seconds", "summary", "time from arrival to the last token",
                   [("_sum", self.latency_sum), ("_count", self.latency_count)])
        for name, (help_text, read) in gauges.items():
            metric(name, "gauge", help_text, [("", read())])
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
