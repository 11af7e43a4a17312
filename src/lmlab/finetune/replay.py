"""Replay (Ibrahim et al. 2024): mix a share of old-task rows into the fine-tuning data. A data recipe, not a
regulariser."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmlab.errors import LmlabError


@dataclass
class ReplayConfig:
    """Replay: mix a fraction of old-task data into fine-tuning batches (the continual pre-training recipe,
    Ibrahim et al. 2024, "Simple and Scalable Strategies to Continually Pre-train LLMs", use 0.5-25%)."""

    ratio: float = 0.25
    seed: int = 0


def mix_replay(new_rows: Sequence[Any], old_rows: Sequence[Any], ratio: float, seed: int = 0) -> list[Any]:
    """``new_rows`` plus ``round(ratio/(1-ratio) * len(new_rows))`` rows drawn from ``old_rows`` (with
    replacement if needed), shuffled: the old rows are a ``ratio`` share of the result."""
    if not 0.0 <= ratio < 1.0:
        raise LmlabError(f"replay ratio must be in [0, 1), got {ratio}")
    n_old = int(round(ratio / (1.0 - ratio) * len(new_rows)))
    if n_old and not old_rows:
        raise LmlabError("replay: no old-task rows to mix in")
    rng = random.Random(seed)
    picked = rng.sample(list(old_rows), n_old) if n_old <= len(old_rows) else \
        [rng.choice(old_rows) for _ in range(n_old)]
    rows = list(new_rows) + picked
    rng.shuffle(rows)
    return rows
