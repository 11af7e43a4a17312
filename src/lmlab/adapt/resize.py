"""Build a model whose embedding and output layer have a new vocabulary, each new row a weighted sum of old rows.

Why one mechanism: vocabulary extension, tokenizer swaps and every initialisation (WECHSEL, mean, overlap copy)
are all "new row i = sum_j w_ij * old row j" (plus optional random rows).  Expressing them as one sparse
``RowMapping`` means the same rule is applied to the input embedding, an untied output layer and its bias, so
tied and untied checkpoints are handled alike.  Copied rows (weight exactly 1 on one source row) are copied
bit-for-bit, which is what makes the "old logits unchanged" invariants exact.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lmlab.core.model import Transformer
from lmlab.errors import LmlabError


@dataclass
class RowMapping:
    """How each of ``n_rows`` new vocabulary rows is made from the old rows.

    ``sources[i]`` / ``weights[i]``: old row ids and their weights for new row i (an empty list = a random row,
    drawn from a normal with the old rows' mean and std, the WECHSEL paper's random baseline).
    """

    n_rows: int
    sources: list[list[int]]
    weights: list[list[float]]
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.sources) != self.n_rows or len(self.weights) != self.n_rows:
            raise LmlabError(f"RowMapping: sources/weights must have {self.n_rows} entries")

    @classmethod
    def identity(cls, n_rows: int) -> RowMapping:
        return cls(n_rows, [[i] for i in range(n_rows)], [[1.0] for _ in range(n_rows)])


def _map_rows(old: torch.Tensor, mapping: RowMapping) -> torch.Tensor:
    """``old`` [V_old, ...] -> [n_rows, ...] following ``mapping`` (copies exact, sums in float64)."""
    out = torch.empty((mapping.n_rows, *old.shape[1:]), dtype=old.dtype)
    mean, std = old.double().mean(0), old.double().std(0) if old.shape[0] > 1 else torch.zeros_like(old[0]).double()
    gen = torch.Generator().manual_seed(mapping.seed)
    n_old = old.shape[0]
    sums: dict[tuple, torch.Tensor] = {}  # rows sharing one sources list object (mean init) are computed once
    for i, (ids, ws) in enumerate(zip(mapping.sources, mapping.weights)):
        if any(not 0 <= j < n_old for j in ids):
            raise LmlabError(f"RowMapping: row {i} refers to an old row outside 0..{n_old - 1}")
        if len(ids) == 1 and ws[0] == 1.0:
            out[i] = old[ids[0]]  # exact copy
        elif ids:
            key = (id(ids), id(ws)) if len(ids) > 16 else None  # the lists stay alive during the loop
            if key is None or key not in sums:
                w = torch.tensor(ws, dtype=torch.float64).reshape(-1, *([1] * (old.dim() - 1)))
                row = (old[ids].double() * w).sum(0).to(old.dtype)
                if key is None:
                    out[i] = row
                    continue
                sums[key] = row
            out[i] = sums[key]
        else:
            out[i] = (mean + std * torch.randn(mean.shape, generator=gen, dtype=torch.float64)).to(old.dtype)
    return out


def apply_row_mapping(model: Transformer, mapping: RowMapping) -> Transformer:
    """A new Transformer (same weights elsewhere) whose vocabulary rows are ``mapping`` of ``model``'s.

    Tied models get one mapped matrix used for both ends; untied ones map the output layer (and its bias) with
    the same rule.  The source model is not modified.
    """
    c = model.config
    if mapping.n_rows < 1:
        raise LmlabError(f"new vocabulary size must be >= 1, got {mapping.n_rows}")
    config = dataclasses.replace(c, vocab_size=mapping.n_rows)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()  # clone: never share with the source
             if not k.startswith(("embed.", "lm_head."))}
    with torch.no_grad():
        embed = model.embed.weight.detach().cpu()  # [V_old, d_model]
        state["embed.weight"] = _map_rows(embed, mapping)  # [V_new, d_model]
        head = model.lm_head.weight.detach().cpu()
        state["lm_head.weight"] = state["embed.weight"] if c.tie_embeddings else _map_rows(head, mapping)
        if model.lm_head.bias is not None:
            state["lm_head.bias"] = _map_rows(model.lm_head.bias.detach().cpu()[:, None], mapping)[:, 0]
    with torch.device("meta"):
        new = Transformer(config)
    new.load_state_dict(state, assign=True)
    new.tie_weights()
    new._inv_freq = {}
    new.to(device=model.device)
    return new.train(model.training)


def resize_vocabulary(model: Transformer, n_rows: int, seed: int = 0) -> Transformer:
    """Grow the vocabulary to ``n_rows``: old rows copied exactly, new rows random (see ``RowMapping``)."""
    old = model.config.vocab_size
    if not isinstance(n_rows, int) or n_rows < old:
        raise LmlabError(f"resize: new vocabulary size {n_rows} is below the model's existing {old} rows; "
                         "shrinking would drop trained tokens (use swap_tokenizer to change vocabularies)")
    sources = [[i] for i in range(old)] + [[] for _ in range(n_rows - old)]
    weights = [[1.0] for _ in range(old)] + [[] for _ in range(n_rows - old)]
    return apply_row_mapping(model, RowMapping(n_rows, sources, weights, seed))
