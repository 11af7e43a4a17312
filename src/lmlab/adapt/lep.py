"""Learned Embedding Propagation (LEP; Tikhomirov & Chernyshev 2024, "Facilitating large language model Russian
adaptation with Learned Embedding Propagation", arXiv:2412.21140): adapt a BASE model to a new language (vocabulary
extension + continued pretraining), then implant what it learned into an INSTRUCT-tuned variant of the same base
without instruction-tuning in the new language.

The propagation, in the three variants we implement (the paper compares several; ``projection`` is its "vocabulary
conversion projection", the one it recommends):
  * ``"swap"``: the instruct model takes the adapted base's embedding and output rows as they are;
  * ``"overlap"``: rows of old tokens keep the instruct model's values, new tokens take the adapted base's;
  * ``"projection"``: E_instruct_new = E_adapted + P (E_instruct_old - E_base_old), where P [V_new, V_old] writes
    each new-vocabulary token as its old-tokenizer pieces (the identity on old tokens, the subword mean on new
    ones -- the same P that initialised the extension), so the instruct model's own shift of every piece
    follows the token into the new vocabulary.
Transformer blocks: with ``body="instruct"`` (default) the instruct model keeps its own blocks (the schedule where
continued pretraining trained the embeddings only); ``body="task_arithmetic"`` adds the adapted base's change of
every block weight (theta_instruct + theta_adapted - theta_base), for the paper's second stage, where the whole
model was trained.  The paper's schedule -- embeddings first, then the whole model -- is the caller's training
loop (see ``embedding_parameters``).
"""

from __future__ import annotations

import copy

import torch

from lmlab.adapt.resize import RowMapping
from lmlab.errors import LmlabError

PROPAGATIONS = ("swap", "overlap", "projection")
BODIES = ("instruct", "task_arithmetic")


def embedding_parameters(model) -> list[torch.nn.Parameter]:
    """The vocabulary parameters (input embedding, and the output layer when untied): LEP's first stage trains
    only these."""
    params = [model.embed.weight]
    if model.lm_head.weight is not model.embed.weight:
        params.append(model.lm_head.weight)
        if model.lm_head.bias is not None:
            params.append(model.lm_head.bias)
    return params


def subword_mapping(old_tokenizer, new_tokenizer, n_old: int, n_new: int) -> RowMapping:
    """P for ``projection``: old ids map to themselves; every id >= ``n_old`` to the mean of the pieces the OLD
    tokenizer splits its string into (a token with no pieces gets an empty row, i.e. no shift)."""
    sources, weights = [[i] for i in range(n_old)], [[1.0] for _ in range(n_old)]
    for i in range(n_old, n_new):
        token = new_tokenizer.id_to_token(i)
        pieces = [j for j in (old_tokenizer.encode(token) if token is not None else []) if j < n_old]
        sources.append(pieces)
        weights.append([1.0 / len(pieces)] * len(pieces) if pieces else [])
    return RowMapping(n_new, sources, weights)


def _projection_matrix(mapping: RowMapping, n_old: int) -> torch.Tensor:
    p = torch.zeros(mapping.n_rows, n_old, dtype=torch.float64)  # [V_new, V_old]
    for i, (ids, ws) in enumerate(zip(mapping.sources, mapping.weights)):
        for j, w in zip(ids, ws):
            p[i, j] += w
    return p


def _check_same_shape(a, b, what: str) -> None:
    ca, cb = a.config, b.config
    fields = ("d_model", "n_layers", "n_heads", "d_mlp", "tie_embeddings")
    diff = [f for f in fields if getattr(ca, f) != getattr(cb, f)]
    if diff:
        raise LmlabError(f"propagate_embeddings: {what} differ in {', '.join(diff)}; LEP needs variants of one base")


def propagate_embeddings(base, adapted, instruct, mapping: RowMapping, method: str = "projection",
                         body: str = "instruct"):
    """A copy of ``instruct`` with ``adapted``'s new vocabulary (see module doc).

    ``base`` / ``instruct``: the old-vocabulary models (V_old rows); ``adapted``: the base after vocabulary
    extension and continued pretraining (V_new rows); ``mapping``: new row -> old rows (``RowMapping``; old rows
    first, copied).  Inputs are not modified.
    """
    if method not in PROPAGATIONS:
        raise LmlabError(f"propagate_embeddings: method must be one of {', '.join(PROPAGATIONS)}, got {method!r}")
    if body not in BODIES:
        raise LmlabError(f"propagate_embeddings: body must be one of {', '.join(BODIES)}, got {body!r}")
    _check_same_shape(base, instruct, "base and instruct")
    _check_same_shape(base, adapted, "base and adapted")
    n_old, n_new = base.config.vocab_size, adapted.config.vocab_size
    if instruct.config.vocab_size != n_old:
        raise LmlabError(f"propagate_embeddings: instruct has {instruct.config.vocab_size} vocabulary rows, base {n_old}")
    if mapping.n_rows != n_new or n_new < n_old:
        raise LmlabError(f"propagate_embeddings: mapping has {mapping.n_rows} rows, adapted model {n_new} "
                         f"(must be >= the base's {n_old})")
    out = copy.deepcopy(adapted)
    sd_out, sd_base, sd_inst = out.state_dict(), base.state_dict(), instruct.state_dict()
    vocab_keys = [k for k in sd_out if k.startswith(("embed.", "lm_head."))]
    p = _projection_matrix(mapping, n_old) if method == "projection" else None
    with torch.no_grad():
        for key, value in sd_out.items():
            if key in vocab_keys:
                continue
            if body == "instruct":
                value.copy_(sd_inst[key])
            else:  # task arithmetic: the instruct model's weights plus the adapted base's change
                value.copy_((sd_inst[key].double() + value.double() - sd_base[key].double()).to(value.dtype))
        for key in vocab_keys:
            if out.config.tie_embeddings and key.startswith("lm_head."):
                continue  # tied: the same tensor as embed.weight
            value = sd_out[key]  # [V_new, ...] the adapted base's rows
            inst, old = sd_inst[key], sd_base[key]  # [V_old, ...]
            if method == "overlap":
                value[:n_old] = inst
            elif method == "projection":
                shift = (inst.double() - old.double()).reshape(n_old, -1)  # [V_old, rest]
                value.copy_((value.double() + (p @ shift).reshape(value.shape)).to(value.dtype))
    out.tie_weights()
    return out
