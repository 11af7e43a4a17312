"""Knowledge editing: ROME, MEMIT and AlphaEdit over the hook points ``blocks.{i}.mlp.post`` (the key, the down
projection's input) and ``mlp.out`` -- the same names on every architecture, so no per-model templates.

    from lmlab.edit import EditRequest, edit
    req = EditRequest("{} was born in", "Trodina Shoba", "Velmora")
    delta = edit(model, tok, [req], method="memit", corpus=world.training_documents())   # applied
    delta.revert(model)                                                                    # exact original

Statistics of the keys come from a local corpus and are cached as artefacts (:mod:`lmlab.edit.stats`).
IKE (``method="ike"``, :mod:`lmlab.edit.ike`) edits by prompting and returns an :class:`InContextEdit`.
Unlearning (:mod:`lmlab.edit.unlearn`: Who's Harry Potter, gradient ascent) and the extraction attacks
(:mod:`lmlab.edit.attacks`) work on a slice of knowledge (:mod:`lmlab.edit.world_slice`); deleting facts with ROME
under the sensitive-information paper's defence objectives is ``method="rome_delete"`` (:mod:`lmlab.edit.deletion`);
real facts in CounterFact format and their scores are in :mod:`lmlab.edit.counterfact`.
"""

from lmlab.edit.alphaedit import AlphaEditState
from lmlab.edit.api import edit
from lmlab.edit.ike import InContextEdit
from lmlab.edit.registry import available_editors
from lmlab.edit.requests import EditRequest, make_request, read_edits

__all__ = ["AlphaEditState", "EditRequest", "InContextEdit", "available_editors", "edit", "make_request", "read_edits"]
