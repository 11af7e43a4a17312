"""Edit requests: ``EditRequest(prompt="{} was born in", subject="Ana Vell", target="Mirova")``, validated and
tokenised, and read from the JSONL formats people already have (CounterFact ``requested_rewrite`` records and
EasyEdit ``prompt`` / ``subject`` / ``target_new`` records).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmlab.errors import LmlabError


@dataclass(frozen=True)
class EditRequest:
    """One association to write: ``prompt`` holds ``{}`` where the ``subject`` goes (as in the papers' data);
    ``target`` is the new object (a leading space is added when missing, as the reference code does, so it
    tokenises as a continuation)."""

    prompt: str
    subject: str
    target: str

    @property
    def target_text(self) -> str:
        return self.target if self.target.startswith(" ") else " " + self.target

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject, 1)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "subject": self.subject, "target": self.target}


def make_request(prompt: str, subject: str, target: str, where: str = "edit request") -> EditRequest:
    """An EditRequest from a prompt with ``{}`` or with the subject written out (its first occurrence becomes
    ``{}``, as EasyEdit's records give whole sentences); a subject absent from the prompt is an error."""
    for name, value in (("prompt", prompt), ("subject", subject), ("target", target)):
        if not isinstance(value, str) or not value.strip():
            raise LmlabError(f"{where}: {name} must be a non-empty string, got {value!r}")
    if prompt.count("{}") > 1:
        raise LmlabError(f"{where}: prompt {prompt!r} has more than one '{{}}'")
    if "{}" not in prompt:
        if subject not in prompt:
            raise LmlabError(f"{where}: subject {subject!r} does not occur in prompt {prompt!r} (and it has no '{{}}')")
        prompt = prompt.replace(subject, "{}", 1)
    return EditRequest(prompt, subject, target)


def validate_requests(requests, tokenizer) -> list[EditRequest]:
    """Check every request before anything is computed: a list of EditRequest, subject placeholder present,
    a target that tokenises to at least one token."""
    if isinstance(requests, EditRequest):
        requests = [requests]
    requests = list(requests)
    if not requests:
        raise LmlabError("edit: requests is empty")
    out = []
    for i, r in enumerate(requests):
        if not isinstance(r, EditRequest):
            raise LmlabError(f"edit: requests[{i}] must be an EditRequest, got {type(r).__name__}")
        r = make_request(r.prompt, r.subject, r.target, where=f"edit: requests[{i}]")
        if not tokenizer.encode(r.target_text.strip()) or not tokenizer.encode(r.target_text):
            raise LmlabError(f"edit: requests[{i}] target {r.target!r} tokenises to nothing")
        out.append(r)
    return out


def _record_to_request(rec: dict, where: str) -> EditRequest:
    if not isinstance(rec, dict):
        raise LmlabError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "requested_rewrite" in rec:  # CounterFact / zsRE-as-CounterFact (ROME, MEMIT, AlphaEdit data)
        rw = rec["requested_rewrite"]
        target = rw.get("target_new", {})
        target = target.get("str") if isinstance(target, dict) else target
        return make_request(rw.get("prompt"), rw.get("subject"), target, where)
    if "target_new" in rec:  # EasyEdit
        return make_request(rec.get("prompt"), rec.get("subject"), rec.get("target_new"), where)
    if "target" in rec:  # lmlab's own
        return make_request(rec.get("prompt"), rec.get("subject"), rec.get("target"), where)
    raise LmlabError(f"{where}: no 'requested_rewrite', 'target_new' or 'target' field (keys: {sorted(rec)})")


def read_edits(path: str | Path) -> list[EditRequest]:
    """Requests from a JSONL file (one record per line) or a JSON list, in CounterFact, EasyEdit or lmlab form."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LmlabError(f"{path}: cannot read edits ({e})") from None
    try:
        stripped = text.lstrip()
        if stripped.startswith("["):
            records = [(f"{path}: item {i}", r) for i, r in enumerate(json.loads(text))]
        else:
            records = [(f"{path}:{n}", json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as e:
        raise LmlabError(f"{path}: not valid JSON / JSONL ({e.msg} at line {e.lineno})") from None
    if not records:
        raise LmlabError(f"{path}: no edit records")
    return [_record_to_request(rec, where) for where, rec in records]
