"""One check shared by the guided processors: a coefficient must not turn finite base logits non-finite.

Why: ``base + c * guide`` with a huge ``c`` (or GenARM's ``w / beta`` with a tiny ``beta``) overflows fp32 to
inf, and inf - inf is NaN; sampling from such logits silently returns garbage or the first token. Tokens that
were already -inf (forbidden by another processor) stay allowed to be -inf.
"""

from __future__ import annotations

import torch

from lmlab.errors import LmlabError


def check_finite(where: str, knob: str, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """``after`` [B, V], or one LmlabError when it has a NaN or a non-finite value where ``before`` was finite."""
    if bool(torch.isfinite(after).all()):
        return after  # the common case: one reduction, no [B, V] masks
    bad = torch.isnan(after) | (~torch.isfinite(after) & torch.isfinite(before))
    if bool(bad.any()):
        raise LmlabError(f"{where}: {knob} makes the logits non-finite (use a smaller coefficient)")
    return after
