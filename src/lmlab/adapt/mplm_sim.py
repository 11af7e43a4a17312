"""mPLM-Sim (Lin, Hu, Zhang, Martins & Schütze, 2023, "mPLM-Sim: Better Cross-Lingual Similarity and Transfer in
Multilingual Pretrained Language Models", arXiv:2305.13684): language similarity read off a multilingual model's
representations of a multi-parallel corpus, per layer, and used to pick the source language for zero-shot
cross-lingual transfer.

What we do, step by step (the abstract leaves pooling and similarity unspecified; these follow the paper's body):
  1. every sentence of a multi-parallel corpus (the same N sentences in each language) -> one vector per layer:
     the **mean over its tokens** of the hidden state (layer 0 = the embeddings, layer l = ``blocks.{l-1}.resid_post``);
  2. sim(L1, L2) at a layer = the **mean cosine similarity** of the N parallel sentence pairs;
  3. the matrix of all language pairs, per layer; its Spearman rank correlation with a reference similarity (here
     minus the known tree distance of the world's languages: ``language_family.tree_distance``);
  4. source selection: for a target language, the candidate source with the highest similarity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmlab.errors import LmlabError


@dataclass
class SimilarityResult:
    """``matrix`` [n_layers + 1, n_lang, n_lang]: mean parallel-sentence cosine similarity per layer
    (layer 0 = embeddings); ``languages`` orders its rows."""

    languages: list[str]
    matrix: np.ndarray

    def at(self, layer: int) -> np.ndarray:
        return self.matrix[layer]

    def similarity(self, a: str, b: str, layer: int) -> float:
        return float(self.matrix[layer, self.languages.index(a), self.languages.index(b)])


def sentence_representations(model, tokenizer, sentences: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """[n_layers + 1, N, d_model]: each sentence's token-mean hidden state at the embeddings and after each block.

    Right padding with an attention mask: the model is causal, so padding never changes a real token's state, and
    the mean is taken over real tokens only.
    """
    if not sentences:
        raise LmlabError("mplm_sim: no sentences given")
    n_layers = model.config.n_layers
    names = ["embed", *[f"blocks.{i}.resid_post" for i in range(n_layers)]]
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(sentences), batch_size):
                rows = [tokenizer.encode(s)[: model.config.max_seq_len] for s in sentences[start:start + batch_size]]
                if any(not r for r in rows):
                    raise LmlabError("mplm_sim: a sentence encodes to no tokens")
                T = max(len(r) for r in rows)
                ids = torch.tensor([r + [pad] * (T - len(r)) for r in rows], device=model.device)  # [B, T]
                mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows], device=model.device)
                _, acts = model.run_with_cache(ids, attention_mask=mask, names=names)
                m = mask[..., None].to(torch.float32)  # [B, T, 1]
                pooled = [(acts[n].float() * m).sum(1) / m.sum(1) for n in names]  # each [B, d_model]
                out.append(torch.stack(pooled))  # [L+1, B, d_model]
    finally:
        model.train(was_training)
    return torch.cat(out, dim=1).cpu()  # [L+1, N, d_model]


def language_similarity(model, tokenizer, parallel: Mapping[str, Sequence[str]], batch_size: int = 32
                        ) -> SimilarityResult:
    """mPLM-Sim over a multi-parallel corpus ``{language: [sentence_1 .. sentence_N]}`` (same N, same order)."""
    languages = list(parallel)
    if len(languages) < 2:
        raise LmlabError(f"mplm_sim: need at least 2 languages, got {len(languages)}")
    sizes = {code: len(s) for code, s in parallel.items()}
    if len(set(sizes.values())) != 1:
        raise LmlabError(f"mplm_sim: the corpus must be parallel (same number of sentences per language), got {sizes}")
    reps = {code: torch.nn.functional.normalize(sentence_representations(model, tokenizer, list(s), batch_size), dim=-1)
            for code, s in parallel.items()}  # each [L+1, N, d]
    n = len(languages)
    matrix = np.zeros((next(iter(reps.values())).shape[0], n, n))
    for i, a in enumerate(languages):
        for j, b in enumerate(languages):
            if j >= i:
                cos = (reps[a] * reps[b]).sum(-1).mean(-1)  # [L+1]: mean over sentence pairs
                matrix[:, i, j] = matrix[:, j, i] = cos.double().numpy()
    return SimilarityResult(languages, matrix)


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy's ``rankdata(method='average')``)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson correlation of the (tie-averaged) ranks."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise LmlabError(f"spearman: need two 1-d sequences of equal length >= 2, got {x.shape} and {y.shape}")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    if denom == 0:
        raise LmlabError("spearman: one of the sequences is constant")
    return float((rx * ry).sum() / denom)


def rank_correlation(similarity: np.ndarray, reference: np.ndarray) -> float:
    """Spearman correlation between the off-diagonal (upper-triangle) entries of two [n, n] matrices."""
    if similarity.shape != reference.shape or similarity.ndim != 2:
        raise LmlabError(f"rank_correlation: need two [n, n] matrices, got {similarity.shape} and {reference.shape}")
    iu = np.triu_indices(similarity.shape[0], k=1)
    return spearman(similarity[iu], reference[iu])


def select_source(similarity: np.ndarray, languages: Sequence[str], target: str, candidates: Sequence[str]) -> str:
    """The candidate most similar to ``target`` (ties: the earlier candidate)."""
    if target not in languages:
        raise LmlabError(f"select_source: unknown target {target!r}")
    cands = [c for c in candidates if c != target]
    unknown = [c for c in cands if c not in languages]
    if not cands or unknown:
        raise LmlabError(f"select_source: candidates must be known languages other than the target, got {list(candidates)}")
    t = list(languages).index(target)
    scores = [similarity[t, list(languages).index(c)] for c in cands]
    return cands[int(np.argmax(scores))]
