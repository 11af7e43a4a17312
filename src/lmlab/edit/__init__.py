"""Knowledge editing: ROME, MEMIT and AlphaEdit over the hook points ``blocks.{i}.mlp.post`` (the key, the down
projection's input) and ``mlp.out`` -- the same names on every architecture, so no per-model templates.

    from lmlab.edit import EditRequest, edit
    req = EditRequest("{} was born in", "Trodina Shoba", "Velmora")
    delta = edit(model, tok, [req], method="memit", corpus=world.training_documents())   # applied
    delta.revert(model)                                                                    # exact original

Statistics of the keys come from a local corpus and are cached as artefacts (:mod:`lmlab.edit.stats`).
"""

from lmlab.edit.alphaedit import AlphaEditState
from lmlab.edit.api import edit
from lmlab.edit.registry import available_editors
from lmlab.edit.requests import EditRequest, make_request, read_edits

__all__ = ["AlphaEditState", "EditRequest", "available_editors", "edit", "make_request", "read_edits"]
