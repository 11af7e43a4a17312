"""Activation steering: vectors read from the residual stream and added back at chosen positions and rows.

- :func:`actadd` -- ActAdd (Turner et al. 2023): the difference of a prompt pair's activations.
- :func:`concept_direction` -- a concept direction by PCA over contrasting activations (Schramowski et al.
  2022, the "moral direction"); scores text by projection and steers as a vector.
- :func:`in_context_vector` -- the ICL state vector (Li et al. 2024) from demonstrations, refined by inner and
  momentum optimisation, patched into zero-shot queries (:class:`StateVector`).
- :class:`SteeringVector` -- the vector, its file format (safetensors + JSON metadata) and ``apply``;
  :func:`load_steering` reads either kind of steering file (a vector or a state vector).
"""

from lmlab.steer.actadd import actadd
from lmlab.steer.concept import ConceptDirection, concept_direction
from lmlab.steer.files import apply_steering, load_steering
from lmlab.steer.state_vector import StateVector, in_context_vector
from lmlab.steer.vector import SteeringVector, model_fingerprint

__all__ = ["ConceptDirection", "StateVector", "SteeringVector", "actadd", "apply_steering", "concept_direction",
           "in_context_vector", "load_steering", "model_fingerprint"]
