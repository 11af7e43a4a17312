"""WECHSEL (Minixhofer, Paischer & Rekabsaz, NAACL 2022): initialise a target tokenizer's embeddings from a
source model's, through aligned static embeddings.

Steps, as in the paper (section 3):
  1. static word embeddings for the source and target language (the paper: fastText on each language's text;
     here PPMI + truncated SVD on local text, see ``static_embeddings``);
  2. align the target space to the source space with orthogonal Procrustes on a bilingual dictionary;
  3. a subword's static embedding = the count-weighted mean of the embeddings of the words whose tokenization
     contains it (the paper's variant for embeddings without subword information); subwords in no word get a
     random row;
  4. each target subword's embedding = sum over its k most cosine-similar source subwords of
     softmax(similarity / temperature) * source embedding.
Paper defaults: k = 10 neighbours, temperature 0.1 (the reference code's ``create_target_embeddings(...,
neighbors=10, temperature=0.1)``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from lmlab.adapt.static_embeddings import word_embeddings
from lmlab.core.tokenizer import Tokenizer
from lmlab.errors import LmlabError

WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class WechselConfig:
    """``neighbors`` (k) and ``temperature``: the paper's defaults 10 and 0.1.  ``dim``/``window``: the static
    embeddings (fastText's 300 dims in the paper; smaller here because the corpora are small)."""

    neighbors: int = 10
    temperature: float = 0.1
    dim: int = 64
    window: int = 4
    min_count: int = 1
    max_words: int = 5000


def split_words(texts: Iterable[str]) -> list[list[str]]:
    """Lower-cased word sequences (letters/digits runs) of each text."""
    return [[w.lower() for w in WORD.findall(t)] for t in texts]


def align_procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Orthogonal W minimising ||target @ W - source||_F (rows are dictionary pairs): W = U V^T from the SVD
    of target^T source (Schönemann 1966)."""
    u, _, vt = np.linalg.svd(target.T @ source)
    return u @ vt  # [dim, dim]


def _dictionary_pairs(dictionary: Mapping[str, str], src_words: list[str], tgt_words: list[str]) -> list[tuple[int, int]]:
    si, ti = {w: i for i, w in enumerate(src_words)}, {w: i for i, w in enumerate(tgt_words)}
    pairs = [(si[s.lower()], ti[t.lower()]) for s, t in dictionary.items() if s.lower() in si and t.lower() in ti]
    if not pairs:
        raise LmlabError(f"dictionary: none of its {len(dictionary)} word pairs occur in the source and target "
                         "texts; give a dictionary between the two languages' words")
    return pairs


def subword_embeddings(tokenizer: Tokenizer, words: list[str], vectors: np.ndarray, counts) -> tuple[np.ndarray, np.ndarray]:
    """([vocab, dim] subword embeddings, [vocab] bool: has an embedding) -- the count-weighted mean of the words
    whose tokenization (as a word inside a sentence, with a leading space, and at its start) contains it."""
    n = tokenizer.max_token_id + 1
    out, mass = np.zeros((n, vectors.shape[1])), np.zeros(n)
    for w, vec in zip(words, vectors):
        ids = set(tokenizer.encode(" " + w)) | set(tokenizer.encode(w))
        for variant in (w.capitalize(), " " + w.capitalize()):
            ids |= set(tokenizer.encode(variant))
        for i in ids:
            out[i] += counts[w] * vec
            mass[i] += counts[w]
    found = mass > 0
    out[found] /= mass[found, None]
    out[found] /= np.maximum(np.linalg.norm(out[found], axis=1, keepdims=True), 1e-12)
    return out, found


def wechsel_mapping(source_tokenizer: Tokenizer, target_tokenizer: Tokenizer, source_texts: Iterable[str],
                    target_texts: Iterable[str], dictionary: Mapping[str, str], config: WechselConfig | None = None
                    ) -> tuple[list[list[int]], list[list[float]]]:
    """Per target token id: (source token ids, softmax weights) of its k nearest aligned source subwords; an empty
    list where the target token occurs in no word of the target text (it then gets a random row)."""
    config = config or WechselConfig()
    if config.neighbors < 1 or config.temperature <= 0:
        raise LmlabError(f"WechselConfig: neighbors must be >= 1 and temperature > 0, got {config}")
    sw, sv, sc = word_embeddings(split_words(source_texts), config.dim, config.window, config.min_count,
                                 config.max_words)
    tw, tv, tc = word_embeddings(split_words(target_texts), config.dim, config.window, config.min_count,
                                 config.max_words)
    dim = min(sv.shape[1], tv.shape[1])
    sv, tv = sv[:, :dim], tv[:, :dim]
    pairs = _dictionary_pairs(dictionary, sw, tw)
    w = align_procrustes(sv[[s for s, _ in pairs]], tv[[t for _, t in pairs]])
    tv = tv @ w  # target words in the source space
    s_emb, s_found = subword_embeddings(source_tokenizer, sw, sv, sc)
    t_emb, t_found = subword_embeddings(target_tokenizer, tw, tv, tc)
    src_ids = np.flatnonzero(s_found)
    if len(src_ids) == 0:
        raise LmlabError("wechsel: no source token occurs in the source text's words")
    k = min(config.neighbors, len(src_ids))
    sims = t_emb @ s_emb[src_ids].T  # [V_target, n_source_found] cosine similarities
    sources, weights = [], []
    for i in range(t_emb.shape[0]):
        if not t_found[i]:
            sources.append([])
            weights.append([])
            continue
        top = np.argpartition(-sims[i], k - 1)[:k]
        top = top[np.argsort(-sims[i][top])]
        logits = sims[i][top] / config.temperature
        p = np.exp(logits - logits.max())
        p /= p.sum()
        sources.append([int(j) for j in src_ids[top]])
        weights.append([float(x) for x in p])
    return sources, weights


def neighbour_words(sources: list[list[int]], tokenizer: Tokenizer) -> list[list[str]]:
    """The source neighbours as token strings (for inspection and the alignment check)."""
    return [[tokenizer.id_to_token(j) for j in ids] for ids in sources]


def group_words_by_token(tokenizer: Tokenizer, words: Iterable[str]) -> dict[int, set[str]]:
    """token id -> the words whose tokenization contains it."""
    out: dict[int, set[str]] = defaultdict(set)
    for w in words:
        for i in tokenizer.encode(" " + w):
            out[i].add(w)
    return out
