"""Preference data: ``(prompt, chosen, rejected)`` records -> token ids -> padded pair batches.

Records come from a user's JSONL (``{"prompt", "chosen", "rejected"}`` strings, or chat messages:
``prompt`` a list of messages and ``chosen`` / ``rejected`` lists holding the assistant turn) or from the
world's preference pairs (:meth:`lmlab.data.world.World.preference_pairs`, which know *why* chosen is better).

Tokenisation follows trl's ``DPOTrainer`` so that a batch built here is the batch trl trains on:

* plain text: ``prompt`` and ``prompt + chosen`` are encoded with the tokenizer's special tokens (its
  post-processor, e.g. a leading BOS), and the tokenizer's EOS token is appended to ``chosen`` / ``rejected``
  when they do not already end with it;
* chat messages: ``prompt`` is rendered with the chat template and the generation prompt, ``prompt + chosen``
  without it (the template writes the end-of-turn tokens itself; no EOS is appended);
* the completion starts where the encoded prompt and the encoded ``prompt + completion`` first differ (a
  merge across the boundary moves it left), so prompt tokens are never in the loss.

A batch stacks the chosen rows first, then the rejected rows, right-padded: ``input_ids`` [2B, T],
``attention_mask`` [2B, T] (1 = real token), ``completion_mask`` [2B, T] (1 = scored response token).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.errors import LmlabError

Text = str | list  # a string, or a list of chat messages


@dataclass(frozen=True)
class PreferenceRecord:
    """One comparison: ``chosen`` is preferred to ``rejected`` as a reply to ``prompt``."""

    prompt: Text
    chosen: Text
    rejected: Text
    meta: Mapping[str, Any] | None = None  # e.g. the world's ``reason`` and ``fact``

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass(frozen=True)
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


# --- reading and checking records ------------------------------------------------------------------------

def _check_messages(value: Any, where: str) -> list[dict]:
    if not value or not all(isinstance(m, Mapping) and isinstance(m.get("role"), str)
                            and isinstance(m.get("content"), str) for m in value):
        raise LmlabError(f"{where}: expected a non-empty list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def record_from_dict(d: Any, where: str) -> PreferenceRecord:
    """A checked record, or one line naming the record and the problem."""
    if not isinstance(d, Mapping):
        raise LmlabError(f"{where}: expected an object with prompt/chosen/rejected, got {type(d).__name__}")
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in d]
    if missing:
        raise LmlabError(f"{where}: missing field {missing[0]!r} (a record needs prompt, chosen and rejected)")
    prompt, chosen, rejected = d["prompt"], d["chosen"], d["rejected"]
    if isinstance(prompt, list):
        prompt = _check_messages(prompt, f"{where}: prompt")
        chosen = _check_messages(chosen if isinstance(chosen, list) else None, f"{where}: chosen")
        rejected = _check_messages(rejected if isinstance(rejected, list) else None, f"{where}: rejected")
        texts = {"chosen": "".join(m["content"] for m in chosen), "rejected": "".join(m["content"] for m in rejected)}
    else:
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(d[key], str):
                raise LmlabError(f"{where}: {key!r} must be a string (or, for chat data, a list of messages)")
        texts = {"chosen": chosen, "rejected": rejected}
    for key, text in texts.items():
        if not text.strip():
            raise LmlabError(f"{where}: {key!r} is an empty response")
    if texts["chosen"] == texts["rejected"]:
        raise LmlabError(f"{where}: chosen and rejected are identical, so the pair carries no preference")
    meta = {k: v for k, v in d.items() if k not in ("prompt", "chosen", "rejected")} or None
    return PreferenceRecord(prompt, chosen, rejected, meta)


def load_preferences(path: str | Path) -> list[PreferenceRecord]:
    """Records from a JSONL file (blank lines skipped); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path}: preference file not found")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        records.append(record_from_dict(d, f"{path}:{n}"))
    if not records:
        raise LmlabError(f"{path}: no preference records")
    return records


def world_preferences(world, split: str = "train", reason: str | None = None) -> list[PreferenceRecord]:
    """The world's preference pairs of ``split`` ("train" / "heldout"), optionally of one ``reason``
    ("factual" / "politeness"), with ``meta`` keeping the reason and the fact (the ground truth)."""
    pairs = world.preference_pairs(split)
    return [record_from_dict(p, f"world preference {i}") for i, p in enumerate(pairs)
            if reason is None or p["reason"] == reason]


# --- tokenising ------------------------------------------------------------------------------------------

def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_record(tokenizer, record: PreferenceRecord) -> TokenizedPair:
    """Prompt / chosen / rejected ids with trl's boundaries (see the module docstring)."""
    if record.conversational:
        prompt_ids = tokenizer.apply_chat_template(record.prompt, add_generation_prompt=True, tokenize=True)
        chosen_full = tokenizer.apply_chat_template(record.prompt + record.chosen, tokenize=True)
        rejected_full = tokenizer.apply_chat_template(record.prompt + record.rejected, tokenize=True)
    else:
        eos = tokenizer.eos_token
        chosen, rejected = record.chosen, record.rejected
        if eos is not None:
            chosen = chosen if chosen.endswith(eos) else chosen + eos
            rejected = rejected if rejected.endswith(eos) else rejected + eos
        prompt_ids = tokenizer.encode(record.prompt, add_special_tokens=True)
        chosen_full = tokenizer.encode(record.prompt + chosen, add_special_tokens=True)
        rejected_full = tokenizer.encode(record.prompt + rejected, add_special_tokens=True)
    cut = min(_common_prefix(prompt_ids, chosen_full), _common_prefix(prompt_ids, rejected_full))
    pair = TokenizedPair(list(prompt_ids[:cut]), list(chosen_full[cut:]), list(rejected_full[cut:]))
    if not pair.chosen_ids or not pair.rejected_ids:
        raise LmlabError("a preference record tokenises to an empty chosen or rejected response")
    if not pair.prompt_ids:
        raise LmlabError("a preference record has an empty prompt: the first response token would have no context")
    return pair


def check_same_tokenizer(policy_tokenizer, other_tokenizer, what: str = "reward model") -> None:
    """Refuse a scorer whose vocabulary differs from the policy's: its ids would mean other tokens."""
    a, b = policy_tokenizer.backend.get_vocab(), other_tokenizer.backend.get_vocab()
    if a != b:
        raise LmlabError(f"the {what}'s tokenizer differs from the policy's ({len(b)} vs {len(a)} tokens, or the "
                         "same size with other ids): score with a model that shares the policy's tokenizer")


# --- batching --------------------------------------------------------------------------------------------

def collate_pairs(pairs: Sequence[TokenizedPair], pad_token_id: int, max_length: int | None = None
                  ) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, right-padded (trl's ``DataCollatorForPreference``, ``keep_start``
    truncation to ``max_length``)."""
    if not pairs:
        raise LmlabError("collate_pairs: no pairs")
    rows, masks = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for p in pairs:
            ids = p.prompt_ids + getattr(p, side)
            mask = [0] * len(p.prompt_ids) + [1] * len(getattr(p, side))
            if max_length is not None:
                ids, mask = ids[:max_length], mask[:max_length]
            rows.append(ids)
            masks.append(mask)
    T = max(len(r) for r in rows)
    n = len(rows)
    input_ids = torch.full((n, T), pad_token_id, dtype=torch.long)
    attention = torch.zeros(n, T, dtype=torch.long)
    completion = torch.zeros(n, T, dtype=torch.long)
    for i, (ids, mask) in enumerate(zip(rows, masks)):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention[i, :len(ids)] = 1
        completion[i, :len(mask)] = torch.tensor(mask)
    if bool((completion.sum(-1) == 0).any()):
        raise LmlabError(f"collate_pairs: max_length={max_length} cuts every response token of a row")
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}


class PreferenceData:
    """Pair batches for the Trainer: ``batches(micro_batch)`` is one seeded shuffled pass (the Trainer starts the
    next when it ends); ``state_dict`` / ``load_state_dict`` make a resumed run see the same batches."""

    def __init__(self, pairs: Sequence[TokenizedPair], pad_token_id: int, *, max_length: int | None = None,
                 seed: int = 0, shuffle: bool = True) -> None:
        if not pairs:
            raise LmlabError("PreferenceData: no pairs")
        self.pairs, self.pad, self.max_length = list(pairs), pad_token_id, max_length
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position = 0, 0

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.pairs)))
        return torch.randperm(len(self.pairs), generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()

    def batches(self, micro_batch: int):
        if micro_batch > len(self.pairs):
            raise LmlabError(f"PreferenceData: a micro-batch of {micro_batch} pairs is more than the "
                             f"{len(self.pairs)} pairs there are")
        order = self._order()
        while self.position + micro_batch <= len(order):
            chunk = [self.pairs[j] for j in order[self.position:self.position + micro_batch]]
            self.position += micro_batch
            yield self._collate(chunk)
        self.epoch, self.position = self.epoch + 1, 0

    def _collate(self, chunk: list[TokenizedPair]) -> dict[str, torch.Tensor]:
        return collate_pairs(chunk, self.pad, self.max_length)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
