"""Causal tracing of MLP states (Meng et al. 2022, ROME, Sec. 2.1): which layer's MLP at the subject's last token
carries the fact -- the criterion by which ROME chose its edit layer (layer 17 of GPT-2 XL, 5 of GPT-J).

Why: the depth-fraction default transfers GPT-J's choice to any depth, but on a 4-layer model that lands on a
layer whose MLP barely writes at the subject token (docs/claims.md: ROME's v* is then capped by its norm clamp and
the edit does not take). ``RomeConfig(layer="trace")`` picks the layer this way instead.

Procedure (paper Sec. 2.1): a clean run; a corrupted run with Gaussian noise ``N(0, nu^2)`` added to the embeddings
of every subject token, ``nu = noise_scale`` x the standard deviation of the embedding matrix (paper: 3 sigma of
the subject embeddings); corrupted runs in which the clean MLP output (``blocks.{l}.mlp.out``) at the subject's last
token is restored for a window of layers centred on ``l`` (paper: 10 of GPT-2 XL's 48 layers; here the same
fraction, at least 1). The indirect effect of layer ``l`` is ``p_restored(o) - p_corrupted(o)`` for the clean
prediction ``o`` at the prompt's last token, averaged over noise samples and requests.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lmlab.edit.locate import encode_rows
from lmlab.edit.requests import EditRequest


def trace_window(n_layers: int) -> int:
    """GPT-2 XL's 10-of-48 restoration window at the same fraction of ``n_layers`` (at least 1)."""
    return max(1, round(10 / 48 * n_layers))


@torch.no_grad()
def mlp_indirect_effects(model: nn.Module, tokenizer, requests: Sequence[EditRequest], noise_samples: int = 10,
                         noise_scale: float = 3.0, window: int | None = None, seed: int = 0) -> torch.Tensor:
    """[n_layers] average indirect effect of restoring the MLP output at the subject's last token (see module)."""
    dev = model.device
    n_layers = model.config.n_layers
    window = trace_window(n_layers) if window is None else window
    enc = encode_rows(tokenizer, [r.prompt for r in requests], [r.subject for r in requests], device=dev)
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    # [n] first subject token (the space before a subject belongs to its first token, so the prefix is stripped)
    starts = torch.tensor([len(bos + tokenizer.encode(r.prompt[: r.prompt.index("{}")].rstrip()))
                           for r in requests], device=dev)
    T = enc.ids.shape[1]
    pos = torch.arange(T, device=dev)[None]
    subject = (pos >= starts[:, None]) & (pos <= enc.lookup[:, None])  # [n, T]
    last = enc.lengths - 1  # [n]
    names = [f"blocks.{i}.mlp.out" for i in range(n_layers)]
    logits, clean = model.run_with_cache(enc.ids, names=names)
    rows = torch.arange(len(requests), device=dev)
    answer = logits[rows, last].argmax(-1)  # [n] the clean prediction
    S = noise_samples
    ids = enc.ids.repeat(S, 1)  # [S * n, T], sample-major
    rows_s = torch.arange(ids.shape[0], device=dev)
    lookup_s, last_s, answer_s = enc.lookup.repeat(S), last.repeat(S), answer.repeat(S)
    nu = noise_scale * float(model.embed.weight.float().std())
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(ids.shape[0], T, model.config.d_model, generator=g) * nu  # [S * n, T, d_model]
    noise = (noise * subject.repeat(S, 1)[..., None].cpu()).to(dev)

    def corrupt(x: torch.Tensor, name: str) -> torch.Tensor:
        return x + noise.to(x.dtype)

    def prob(extra_hooks) -> torch.Tensor:
        with model.hooks([("embed", corrupt), *extra_hooks]):
            out = model(ids)  # [S * n, T, vocab]
        return torch.softmax(out[rows_s, last_s].float(), -1)[rows_s, answer_s].reshape(S, -1)  # [S, n]

    def restore(layer: int):
        def fn(x: torch.Tensor, name: str) -> torch.Tensor:
            x = x.clone()
            x[rows_s, lookup_s] = clean[f"blocks.{layer}.mlp.out"][rows_s % len(requests), lookup_s].to(x.dtype)
            return x
        return fn

    corrupted = prob([])
    effects = []
    for layer in range(n_layers):
        lo = max(0, layer - window // 2)
        span = range(lo, min(n_layers, lo + window))
        effects.append(float((prob([(f"blocks.{i}.mlp.out", restore(i)) for i in span]) - corrupted).mean()))
    return torch.tensor(effects)
