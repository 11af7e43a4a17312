"""Static word embeddings from local text: PPMI-weighted co-occurrence counts factorised by truncated SVD.

Why not fastText (the WECHSEL paper's choice): no model hub, no extra dependency, and on small corpora a PPMI +
SVD factorisation (Levy & Goldberg 2014: SGNS implicitly factorises a shifted PMI matrix) gives comparable
vectors in milliseconds.  Window: symmetric, ``window`` words each side, counts weighted 1/distance.
Vectors are U * sqrt(S) (symmetric weighting), L2-normalised.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from lmlab.errors import LmlabError


def word_embeddings(sentences: Iterable[list[str]], dim: int = 64, window: int = 4, min_count: int = 1,
                    max_words: int = 5000) -> tuple[list[str], np.ndarray, Counter]:
    """(words, vectors [n_words, dim], word counts) for the ``max_words`` most frequent words seen >= ``min_count``
    times (the co-occurrence matrix is dense: max_words**2 floats)."""
    sentences = [s for s in sentences if s]
    counts = Counter(w for s in sentences for w in s)
    frequent = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
    words = sorted(frequent[:max_words])
    if len(words) < 2:
        raise LmlabError(f"static embeddings: need at least 2 distinct words in the text, got {len(words)}")
    index = {w: i for i, w in enumerate(words)}
    co = np.zeros((len(words), len(words)))  # [n_words, n_words]
    for s in sentences:
        ids = [index.get(w, -1) for w in s]
        for a, i in enumerate(ids):
            if i < 0:
                continue
            for b in range(max(0, a - window), min(len(ids), a + window + 1)):
                if b != a and ids[b] >= 0:
                    co[i, ids[b]] += 1.0 / abs(a - b)
    total = co.sum()
    row, col = co.sum(1, keepdims=True), co.sum(0, keepdims=True) ** 0.75  # context smoothing 0.75 (Levy et al.)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(co * (col.sum()) / (row * col))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0) if total > 0 else co
    u, s, _ = np.linalg.svd(ppmi, full_matrices=False)
    k = min(dim, len(s))
    vec = u[:, :k] * np.sqrt(s[:k])  # [n_words, k]
    vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    return words, vec, counts
