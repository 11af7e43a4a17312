"""Tokenizers in GGUF files, both ways: llama.cpp's vocabulary metadata <-> a ``tokenizers`` Tokenizer.

A GGUF carries no ``tokenizer.json``: it stores the vocabulary (``tokenizer.ggml.tokens``, one id per entry),
the token types (NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6), merges (byte-level BPE) or
scores (SentencePiece), the special-token ids, BOS/EOS flags, the chat template, and a *name* for the
pre-tokenizer (``tokenizer.ggml.pre``) whose splitting regex lives in llama.cpp's C++ code. We rebuild the
tokenizer llama.cpp runs for that name:

- ``gpt2`` (byte-level BPE): GPT-2's ByteLevel pre-tokenizer, or the split regex named by ``tokenizer.ggml.pre``
  (llama.cpp ``llama-vocab.cpp``: "smollm"/"starcoder"/"refact" first isolate every digit, then GPT-2's regex;
  "llama-bpe" and "qwen2" use their models' regexes). An unknown name is an error, not a guess.
- ``llama`` (SentencePiece BPE with byte fallback): Metaspace with a prefix space, merges recovered from the
  scores (a merge ranks as the score of the token it makes), as transformers' ``LlamaTokenizer`` does.

CONTROL tokens become special added tokens (unsplittable, skipped on decode), USER_DEFINED ones plain added
tokens, as llama.cpp matches both whole in the text.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from lmlab.errors import LmlabError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> pre-tokenizer family (the first name of each family is the one lmlab writes).
PRE_FAMILIES = {
    "gpt-2": "gpt2", "default": "gpt2",
    "smollm": "digits", "starcoder": "digits", "refact": "digits",
    "llama-bpe": "llama3", "llama3": "llama3", "llama-v3": "llama3", "smaug-bpe": "llama3", "dbrx": "llama3",
    "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2",
}
FAMILY_PRE_NAME = {"gpt2": "gpt-2", "digits": "smollm", "llama3": "llama-bpe", "qwen2": "qwen2"}


def _byte_level_pre(family: str):
    if family == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if family == "digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    split = LLAMA3_SPLIT if family == "llama3" else QWEN2_SPLIT
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _byte_level_backend(f, tokens: list[str]) -> Backend:
    pre = f.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_FAMILIES:
        raise LmlabError(f"{f.path}: tokenizer.ggml.pre {pre!r} names a pre-tokenizer lmlab does not know "
                         f"(known: {', '.join(sorted(PRE_FAMILIES))})")
    family = PRE_FAMILIES[pre]
    merges = [tuple(m.split(" ", 1)) for m in f.get("tokenizer.ggml.merges", [])]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = Backend(models.BPE(vocab, merges, ignore_merges=family == "llama3"))
    backend.pre_tokenizer = _byte_level_pre(family)
    backend.decoder = decoders.ByteLevel()
    return backend


def spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece vocabulary: every split of a token into two tokens, best score first."""
    ids = {tok: i for i, tok in enumerate(tokens)}
    found = []
    for tok, score in zip(tokens, scores):
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in ids and right in ids:
                found.append((-score, ids[left], ids[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def _sentencepiece_backend(f, tokens: list[str], types: list[int]) -> Backend:
    scores = f.get("tokenizer.ggml.scores", None) or [0.0] * len(tokens)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    unk_id = f.get("tokenizer.ggml.unknown_token_id", None)
    unk = tokens[unk_id] if unk_id is not None else None
    backend = Backend(models.BPE(vocab, spm_merges(tokens, scores), unk_token=unk, fuse_unk=True, byte_fallback=True))
    prefix = bool(f.get("tokenizer.ggml.add_space_prefix", True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first" if prefix else "never",
                                                     split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return backend


def _post_processor(backend: Backend, bos: str | None, eos: str | None, add_bos: bool, add_eos: bool):
    if not (add_bos and bos) and not (add_eos and eos):
        return None
    first = [f"{bos}:0"] if add_bos and bos else []
    last = [f"{eos}:0"] if add_eos and eos else []
    specials = [(t, backend.token_to_id(t)) for t in dict.fromkeys(x for x, on in ((bos, add_bos), (eos, add_eos)) if on and x)]
    return processors.TemplateProcessing(single=[*first, "$A:0", *last],
                                         pair=[*first, "$A:0", *last, *first, "$B:1", *last], special_tokens=specials)


def tokenizer_from_gguf(f):
    """An ``lmlab.core.tokenizer.Tokenizer`` from a ``GGUFFile``'s tokenizer metadata."""
    from lmlab.core.tokenizer import Tokenizer

    kind = f.get("tokenizer.ggml.model", None)
    if kind in (None, "none", "no_vocab"):
        raise LmlabError(f"{f.path}: the GGUF file carries no tokenizer (tokenizer.ggml.model is {kind!r})")
    tokens = list(f.get("tokenizer.ggml.tokens"))
    types = list(f.get("tokenizer.ggml.token_type", None) or [NORMAL] * len(tokens))
    if kind == "gpt2":
        backend = _byte_level_backend(f, tokens)
    elif kind == "llama":
        backend = _sentencepiece_backend(f, tokens, types)
    else:
        raise LmlabError(f"{f.path}: tokenizer.ggml.model {kind!r} is not supported (supported: gpt2, llama)")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, ty in zip(tokens, types) if ty == USER_DEFINED])

    def token(key: str) -> str | None:
        i = f.get(f"tokenizer.ggml.{key}", None)
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise LmlabError(f"{f.path}: tokenizer.ggml.{key} = {i} is outside the vocabulary of {len(tokens)}")
        return tokens[int(i)]

    config: dict[str, Any] = {"bos_token": token("bos_token_id"), "eos_token": token("eos_token_id"),
                              "unk_token": token("unknown_token_id"), "pad_token": token("padding_token_id")}
    config = {k: v for k, v in config.items() if v is not None}
    add_bos = bool(f.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    add_eos = bool(f.get("tokenizer.ggml.add_eos_token", False))
    post = _post_processor(backend, config.get("bos_token"), config.get("eos_token"), add_bos, add_eos)
    if post is not None:
        backend.post_processor = post
    elif kind == "gpt2":
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    template = f.get("tokenizer.chat_template", None)
    if template is not None:
        config["chat_template"] = template
    config["add_bos_token"], config["add_eos_token"] = add_bos, add_eos
    return Tokenizer(backend, config, source=str(f.path))


# ------------------------------------------------------------------------------------------------------- export
def _pre_family(pre: dict | None) -> str | None:
    """The llama.cpp pre-tokenizer family a tokenizer.json pre_tokenizer equals, or None."""
    if pre is None:
        return None
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "digits"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        return {LLAMA3_SPLIT: "llama3", QWEN2_SPLIT: "qwen2"}.get(regex)
    return None


def tokenizer_metadata(tokenizer, n_vocab: int, where: str) -> dict[str, Any]:
    """llama.cpp's tokenizer keys for a byte-level BPE ``Tokenizer``, its vocabulary padded to ``n_vocab`` rows."""
    spec = json.loads(tokenizer.backend.to_str())
    model = spec.get("model") or {}
    family = _pre_family(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or family is None:
        raise LmlabError(f"{where}: only byte-level BPE tokenizers (GPT-2, SmolLM, Llama-3 or Qwen2 splitting) can be "
                         f"written to GGUF; this one is {model.get('type')} with pre-tokenizer "
                         f"{(spec.get('pre_tokenizer') or {}).get('type')}")
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= n_vocab:
        raise LmlabError(f"{where}: the tokenizer has id {max(vocab.values())}, past the model's {n_vocab} embeddings")
    specials = {a["content"]: a["special"] for a in spec.get("added_tokens", [])}
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [UNUSED] * n_vocab
    for tok, i in vocab.items():
        tokens[i] = tok
        types[i] = NORMAL if tok not in specials else (CONTROL if specials[tok] else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "padding_token_id": tokenizer.pad_id,
           "unknown_token_id": tokenizer.token_to_id(tokenizer.unk_token) if tokenizer.unk_token else None}
    probe = tokenizer.encode("a", add_special_tokens=True)
    plain = tokenizer.encode("a", add_special_tokens=False)
    return {"model": "gpt2", "pre": FAMILY_PRE_NAME[family], "tokens": tokens, "token_type": types, "merges": merges,
            "ids": {k: v for k, v in ids.items() if v is not None},
            "add_bos_token": len(probe) > len(plain) and probe[0] == tokenizer.bos_id,
            "add_eos_token": len(probe) > len(plain) and probe[-1] == tokenizer.eos_id,
            "chat_template": tokenizer.chat_template}
