"""ActAdd (Turner et al. 2023, "Steering Language Models With Activation Engineering", arXiv:2308.10248).

The steering vector is the difference of the residual stream (hook ``blocks.{layer}.resid_pre``) of a
prompt pair, e.g. "Love" - "Hate", taken at every position of the pair; the shorter prompt is padded at the
end with a space token so both have the same length (the paper pads with spaces). At generation time the
[n, d] difference is added, times a coefficient, to the first n positions of the user's prompt (positions
"front", the paper's injection site); the vector can also be added at all, prompt or generated positions.

Paper defaults (Table 1 and the Love-Hate example in GPT-2-XL): layer 6 of 48, coefficient 5, front
injection. Layer and coefficient are model dependent; this function takes the layer explicitly.
"""

from __future__ import annotations

import torch

from lmlab.errors import LmlabError
from lmlab.steer.vector import SteeringVector, model_fingerprint


def pad_token_for(tokenizer, pad_text: str = " ") -> int:
    """The single token of ``pad_text`` (the paper pads with a space), else the tokenizer's pad/eos id."""
    ids = tokenizer.encode(pad_text)
    if len(ids) == 1:
        return ids[0]
    for alt in (tokenizer.pad_id, tokenizer.eos_id):
        if alt is not None:
            return alt
    raise LmlabError(f"actadd: {pad_text!r} is not one token and the tokenizer has no pad or eos token to pad with")


def encode_pair(tokenizer, positive: str, negative: str, pad_text: str = " ") -> tuple[list[int], list[int]]:
    """Both prompts' token ids, the shorter right-padded with the pad token to the longer's length."""
    a, b = tokenizer.encode(positive), tokenizer.encode(negative)
    if not a or not b:
        raise LmlabError(f"actadd: {'positive' if not a else 'negative'} prompt encodes to no tokens")
    pad = pad_token_for(tokenizer, pad_text)
    n = max(len(a), len(b))
    return a + [pad] * (n - len(a)), b + [pad] * (n - len(b))


def layer_hook(model, layer: int, site: str = "resid_pre") -> str:
    n = model.config.n_layers
    if not 0 <= int(layer) < n:
        raise LmlabError(f"layer must be in [0, {n}), got {layer}")
    return f"blocks.{int(layer)}.{site}"


@torch.no_grad()
def actadd(model, tokenizer, positive: str, negative: str, layer: int, *, site: str = "resid_pre",
           pad_text: str = " ") -> SteeringVector:
    """The ActAdd vector [n, d_model]: resid(positive) - resid(negative) at ``blocks.{layer}.{site}``."""
    hook = layer_hook(model, layer, site)
    a, b = encode_pair(tokenizer, positive, negative, pad_text)
    ids = torch.tensor([a, b], device=model.device)  # [2, n]
    _, acts = model.run_with_cache(ids, names=[hook])
    act = acts[hook].float()  # [2, n, d]
    return SteeringVector(act[0] - act[1], hook, model_fingerprint(model),
                          meta={"method": "actadd", "positive": positive, "negative": negative, "layer": int(layer),
                                "site": site})
