"""Decoding-time control: logits processors (some owning a second model and its cache) for ``generate``.

- :class:`ProxyTuning` -- base + alpha (tuned - untuned) (Liu et al. 2024; EFT up-scaling).
- :class:`ForbidTokens`, :class:`ForbidStrings` -- constrained decoding (strings across token boundaries).
- :class:`GeDi` -- generative-discriminator guided decoding (Krause et al. 2021).
- :class:`GenARM` -- base + (1/beta) sum_i w_i log ARM_i (Xu et al. 2024), several objectives.
- :class:`VAS` -- value augmented sampling (Han et al. 2024): a value estimator (:class:`ValueModel`, fit on
  the base's own samples by :func:`fit_value_model`) re-scores the top-k candidates.
"""

from lmlab.control.constrain import ForbidStrings, ForbidTokens
from lmlab.control.gedi import GeDi, GeDiConfig
from lmlab.control.genarm import GenARM
from lmlab.control.proxy import ProxyTuning
from lmlab.control.vas import VAS, ValueModel, fit_value_model

__all__ = ["VAS", "ForbidStrings", "ForbidTokens", "GeDi", "GeDiConfig", "GenARM", "ProxyTuning", "ValueModel",
           "fit_value_model"]
