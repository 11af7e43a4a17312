"""Read any steering file: an ActAdd / concept vector (:class:`SteeringVector`) or an ICL state vector
(:class:`StateVector`), told apart by the header's ``kind``. Both share one format (safetensors + JSON naming the
hook point(s), width and model fingerprint), so ``lmlab generate --steer FILE --coeff C`` takes either.

``--coeff`` means the vector's coefficient for a vector and the patch strength for a state vector (0 leaves the
model unchanged, 1 is the paper's replacement at the query's separator positions).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from lmlab.steer.state_vector import KIND as STATE_KIND
from lmlab.steer.state_vector import StateVector
from lmlab.steer.vector import SteeringVector, read_steering_file


def load_steering(path: str | os.PathLike, model=None) -> SteeringVector | StateVector:
    """The steering object in ``path``; with ``model``, checked to fit it (hook, width, fingerprint)."""
    header, _ = read_steering_file(path)
    if header.get("kind") == STATE_KIND:
        return StateVector.load(path, model)
    return SteeringVector.load(path, model)


def apply_steering(vec: SteeringVector | StateVector, model, coeff: float, positions: str | Sequence[int] = "front",
                   rows: Sequence[int] | None = None) -> contextlib.AbstractContextManager:
    """The context manager that steers ``model`` with ``vec`` (``positions`` is ignored by a state vector: it
    patches the query's separator positions)."""
    if isinstance(vec, StateVector):
        return vec.apply(model, strength=coeff, rows=rows)
    return vec.apply(model, coeff=coeff, positions=positions, rows=rows)
