"""Tokenizers that behave exactly like the ``transformers`` fast tokenizer loaded from the same directory.

lmlab never implements BPE itself: the ``tokenizers`` library does the encoding, and this module only carries the
settings HF keeps next to ``tokenizer.json`` (special tokens, chat template) and reproduces the few things HF does
on load (registering named special tokens, disabling baked-in padding/truncation), so ids, ``len()`` and rendered
chats agree with ``AutoTokenizer.from_pretrained`` on the same files — and ``save`` writes files HF loads back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers

from lmlab.core.chat_template import DEFAULT_CHAT_TEMPLATE, compile_chat_template, render_chat_template
from lmlab.errors import LmlabError

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "DEFAULT_SPECIAL_TOKENS",
    "Tokenizer",
    "check_fits_embedding",
    "load_tokenizer",
    "train_bpe",
]

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers v5 writes the template here, not in the config

# The named special tokens HF knows (its SPECIAL_TOKENS_ATTRIBUTES), in the order it registers them.
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")

# Config keys `save` rewrites itself or that would point HF at something other than our tokenizer.json.
_REWRITTEN_ON_SAVE = frozenset(
    {
        "tokenizer_class",
        "auto_map",
        "tokenizer_file",
        "name_or_path",
        "added_tokens_decoder",
        "special_tokens_map_file",
        "chat_template",
        "additional_special_tokens",
        "extra_special_tokens",
        "clean_up_tokenization_spaces",
        *NAMED_SPECIAL_TOKENS,
    }
)
# Variables apply_chat_template sets itself; a caller's extra with the same name would be ambiguous.
_RESERVED_TEMPLATE_VARS = frozenset({"messages", "add_generation_prompt"})


# --------------------------------------------------------------------------------------------------- config parsing
def _token_value(value: Any, field: str, where: str) -> str | None:
    """A special token as HF stores it: a string, or an AddedToken dict whose ``content`` is the string."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise LmlabError(
        f"{where}: field {field!r} must be a string (or an AddedToken dict with 'content'), got {type(value).__name__}"
    )


def _token_list(value: Any, field: str, where: str) -> list[str]:
    """A list of special tokens (``additional_special_tokens`` / list-form ``extra_special_tokens``)."""
    if value is None:
        return []
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise LmlabError(f"{where}: field {field!r} must be a list of tokens, got {type(value).__name__}")
    return [_token_value(v, f"{field}[{i}]", where) for i, v in enumerate(value)]


def _special_tokens(config: Mapping[str, Any], where: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Split the config into (standard named tokens, model-specific named tokens, unnamed extra tokens).

    Like transformers v5, a dict-valued ``extra_special_tokens`` names model-specific tokens (``image_token``...)
    that templates can read, while a list is plain extra special tokens; ``additional_special_tokens`` is the
    older spelling of the list, used only when ``extra_special_tokens`` is absent.
    """
    named = {}
    for field in NAMED_SPECIAL_TOKENS:
        token = _token_value(config.get(field), field, where)
        if token is not None:
            named[field] = token
    extra = config.get("extra_special_tokens")
    if isinstance(extra, Mapping):
        specific = {str(k): _token_value(v, f"extra_special_tokens.{k}", where) for k, v in extra.items()}
        return named, {k: v for k, v in specific.items() if v is not None}, []
    if extra is not None:
        return named, {}, _token_list(extra, "extra_special_tokens", where)
    return named, {}, _token_list(config.get("additional_special_tokens"), "additional_special_tokens", where)


def _chat_templates(value: Any, where: str) -> dict[str, str]:
    """Named chat templates: HF allows one string, or a list of ``{"name", "template"}`` dicts."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list):
        items = [_named_template(entry, i, where) for i, entry in enumerate(value)]
    else:
        raise LmlabError(
            f"{where}: field 'chat_template' must be a string or a list of {{name, template}} dicts, "
            f"got {type(value).__name__}"
        )
    for name, template in items:
        if not isinstance(name, str) or not isinstance(template, str):
            raise LmlabError(f"{where}: chat_template {name!r} must map a string name to a string template")
    return dict(items)


def _named_template(entry: Any, index: int, where: str) -> tuple[str, str]:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) or "template" not in entry:
        raise LmlabError(f"{where}: chat_template[{index}] must be a dict with string 'name' and 'template'")
    return entry["name"], entry["template"]


# ------------------------------------------------------------------------------------------------------- Tokenizer
class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the ``tokenizer_config.json`` settings HF keeps beside it.

    ``config`` is the (merged) content of ``tokenizer_config.json`` / ``special_tokens_map.json``; ``source`` says
    where it came from and appears in error messages.  The backend is taken over, not copied: its padding and
    truncation are switched off and the configured special tokens are registered on it.
    """

    def __init__(
        self, backend: tokenizers.Tokenizer, config: Mapping[str, Any] | None = None, *, source: str = "<in-memory>"
    ) -> None:
        if not isinstance(backend, tokenizers.Tokenizer):
            raise LmlabError(f"Tokenizer: backend must be a tokenizers.Tokenizer, got {type(backend).__name__}")
        config = dict(config or {})
        self._backend = backend
        self._config = config
        self.source = source
        self._named, self._model_specific, self._extra = _special_tokens(config, source)
        self._chat_templates = _chat_templates(config.get("chat_template"), source)
        self._clean_up = bool(config.get("clean_up_tokenization_spaces", False))
        self._force_bpe_clean_up = bool(
            config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
        )
        # lmlab pads and truncates itself; a tokenizer.json with padding baked in would otherwise pad every encode.
        backend.no_padding()
        backend.no_truncation()
        self._register_special_tokens()

    def _register_special_tokens(self) -> None:
        """Make every configured special token a special added token, in HF's order, so ids and len() match.

        HF does this on load (``TokenizersBackend._post_init``): a ``pad_token`` missing from tokenizer.json gets
        the next id, and existing ones become unsplittable and skippable on decode.
        """
        tokens = [*self._named.values(), *self._model_specific.values(), *self._extra]
        added = [AddedToken(token, special=True, normalized=False) for token in dict.fromkeys(tokens)]
        if added:
            self._backend.add_special_tokens(added)

    # ---- vocabulary
    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (offsets, batch encoding with options...)."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Tokens including added ones, like HF's ``len(tokenizer)`` (not HF's ``vocab_size``)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def max_token_id(self) -> int:
        """Largest id the tokenizer can emit; the embedding needs more rows than this."""
        return max(self._backend.get_vocab(with_added_tokens=True).values())

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(int(token_id))

    # ---- special tokens
    @property
    def special_tokens(self) -> dict[str, str]:
        """Named special tokens as configured (``bos_token``, ``eos_token``..., model-specific ones)."""
        return {**self._named, **self._model_specific}

    @property
    def bos_token(self) -> str | None:
        return self._named.get("bos_token")

    @property
    def bos_id(self) -> int | None:
        return self._id_or_none(self.bos_token)

    @property
    def eos_token(self) -> str | None:
        return self._named.get("eos_token")

    @property
    def eos_id(self) -> int | None:
        return self._id_or_none(self.eos_token)

    @property
    def pad_token(self) -> str | None:
        """The pad token, falling back to eos: batching needs some id, and pad positions are masked anyway."""
        return self._named.get("pad_token", self.eos_token)

    @property
    def pad_id(self) -> int | None:
        return self._id_or_none(self.pad_token)

    @property
    def unk_token(self) -> str | None:
        return self._named.get("unk_token")

    def _id_or_none(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    # ---- encode / decode
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids for ``text``; ``add_special_tokens`` applies tokenizer.json's post-processor (e.g. a leading BOS)."""
        if not isinstance(text, str):
            raise LmlabError(f"encode: text must be a str, got {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """``encode`` over many texts, in parallel in Rust."""
        if isinstance(texts, str):
            raise LmlabError("encode_batch: texts must be a list of str, got a single str (use encode)")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise LmlabError(f"encode_batch: texts[{i}] must be a str, got {type(text).__name__}")
        return [enc.ids for enc in self._backend.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text for ``ids`` (ints, numpy or torch integers); special tokens are dropped unless asked for."""
        ids = [int(i) for i in ids]
        if any(i < 0 for i in ids):
            raise LmlabError(f"decode: token ids must be >= 0, got {min(ids)}")
        text = self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self._should_clean_up() else text

    def _should_clean_up(self) -> bool:
        """HF v5 ignores ``clean_up_tokenization_spaces`` for BPE (it would corrupt text) unless forced."""
        if not self._clean_up:
            return False
        return self._force_bpe_clean_up or not isinstance(self._backend.model, models.BPE)

    # ---- chat templates
    @property
    def chat_template(self) -> str | None:
        """The default chat template (HF's template named "default", or the single one)."""
        return self._chat_templates.get("default")

    @chat_template.setter
    def chat_template(self, template: str | None) -> None:
        if template is None:
            self._chat_templates.pop("default", None)
            return
        if not isinstance(template, str):
            raise LmlabError(f"chat_template must be a str or None, got {type(template).__name__}")
        compile_chat_template(template)  # fail now on a syntax error, not at the first chat
        self._chat_templates["default"] = template

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        *,
        chat_template: str | None = None,
        **extra: Any,
    ) -> str | list[int]:
        """Render ``messages`` as HF's ``apply_chat_template(..., tokenize=False)`` would (ids if ``tokenize``).

        The template sees the named special tokens (``bos_token``...), ``tools``/``documents`` (None unless given)
        and ``extra``.  ``chat_template`` may be a template string or the name of one of this tokenizer's templates.
        Tokenizing never adds BOS/EOS on top: the template writes the special tokens it wants, as in HF.
        """
        template = self._resolve_template(chat_template)
        reserved = _RESERVED_TEMPLATE_VARS.intersection(extra)
        if reserved:
            raise LmlabError(f"apply_chat_template: {sorted(reserved)[0]!r} is set by lmlab and cannot be an extra")
        variables = {**self.special_tokens, **extra}
        text = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt, **variables)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def _resolve_template(self, chat_template: str | None) -> str:
        if chat_template is not None:
            if not isinstance(chat_template, str):
                kind = type(chat_template).__name__
                raise LmlabError(f"apply_chat_template: chat_template must be a str, got {kind}")
            return self._chat_templates.get(chat_template, chat_template)
        if self.chat_template is None:
            named = f" (named templates: {sorted(self._chat_templates)})" if self._chat_templates else ""
            raise LmlabError(
                f"tokenizer from {self.source} has no chat_template{named}; set 'chat_template' in "
                f"{CONFIG_FILE} or pass chat_template="
            )
        return self.chat_template

    # ---- saving
    def save(self, directory: str | os.PathLike) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json, loadable by both lmlab and
        ``transformers.AutoTokenizer`` (as ``PreTrainedTokenizerFast``).  Returns the directory."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise LmlabError(f"save: {directory} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / TOKENIZER_FILE).write_text(self._backend.to_str(pretty=True), encoding="utf-8")
        _write_json(directory / CONFIG_FILE, self.hf_config())
        _write_json(directory / SPECIAL_TOKENS_MAP_FILE, self._special_tokens_map())
        self._sync_stale_jinja(directory / CHAT_TEMPLATE_FILE)
        return directory

    def hf_config(self) -> dict[str, Any]:
        """The ``tokenizer_config.json`` content: loaded settings kept, tokens/template/class rewritten."""
        config = {k: v for k, v in self._config.items() if k not in _REWRITTEN_ON_SAVE}
        config["tokenizer_class"] = "PreTrainedTokenizerFast"  # load tokenizer.json as-is, never rebuild it
        config["clean_up_tokenization_spaces"] = self._clean_up
        config.update(self._special_tokens_map())
        if self._model_specific:
            config["extra_special_tokens"] = dict(self._model_specific)
        if list(self._chat_templates) == ["default"]:
            config["chat_template"] = self._chat_templates["default"]
        elif self._chat_templates:
            config["chat_template"] = [{"name": k, "template": v} for k, v in self._chat_templates.items()]
        return config

    def _special_tokens_map(self) -> dict[str, Any]:
        smap: dict[str, Any] = dict(self._named)
        if self._extra:
            smap["additional_special_tokens"] = list(self._extra)
        return smap

    def _sync_stale_jinja(self, path: Path) -> None:
        """HF prefers chat_template.jinja over the config, so one left by an earlier save must match ours."""
        if not path.exists():
            return
        if self.chat_template is None:
            path.unlink()
        else:
            path.write_text(self.chat_template, encoding="utf-8")

    def __repr__(self) -> str:
        return f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, eos={self.eos_token!r})"


def _clean_up_tokenization(text: str) -> str:
    """HF's ``clean_up_tokenization`` (for WordPiece-style tokenizers that configure it)."""
    for before, after in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
        (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(before, after)
    return text


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------------- loading
def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a directory holding ``tokenizer.json`` (or that file itself) with its HF config files, if any.

    Reads what ``AutoTokenizer`` reads: tokenizer_config.json, special_tokens_map.json (only when the config has
    no ``added_tokens_decoder``, where it overrides the config, as in HF) and chat_template.jinja (which wins over
    the config's ``chat_template``). A ``.gguf`` file (or a real-model name) is read by ``lmlab.io.gguf_read``.
    """
    from lmlab.io.gguf_format import gguf_path_or_none

    gguf_file = gguf_path_or_none(path)
    if gguf_file is not None:
        from lmlab.io.gguf_read import load_gguf_tokenizer

        return load_gguf_tokenizer(gguf_file)
    directory, tokenizer_file = _locate(Path(path))
    backend = _read_backend(tokenizer_file)
    config = _read_config(directory)
    return Tokenizer(backend, config, source=str(directory / CONFIG_FILE))


def _locate(path: Path) -> tuple[Path, Path]:
    """(directory, tokenizer.json) for a directory or a tokenizer file path."""
    if not path.exists():
        raise LmlabError(f"tokenizer path {path} does not exist")
    if path.is_file():
        return path.parent, path
    tokenizer_file = path / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        found = sorted(p.name for p in path.iterdir())
        listing = ", ".join(found[:20]) + (", ..." if len(found) > 20 else "") if found else "nothing"
        raise LmlabError(
            f"tokenizer directory {path} has no {TOKENIZER_FILE} (found: {listing}); lmlab needs a fast-tokenizer "
            f"{TOKENIZER_FILE} (save one with transformers' save_pretrained or lmlab's Tokenizer.save)"
        )
    return path, tokenizer_file


def _read_backend(tokenizer_file: Path) -> tokenizers.Tokenizer:
    text = _read_text(tokenizer_file)
    try:
        return tokenizers.Tokenizer.from_str(text)
    except Exception as err:  # noqa: BLE001 -- the Rust side raises a bare Exception
        _read_json_object(tokenizer_file, text)  # raises the clearer "malformed JSON" message if that is the cause
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LmlabError(f"{tokenizer_file}: not a valid tokenizers tokenizer.json ({first_line})") from None


def _read_config(directory: Path) -> dict[str, Any]:
    config_file = directory / CONFIG_FILE
    config = _read_json_object(config_file) if config_file.is_file() else {}
    smap_file = directory / SPECIAL_TOKENS_MAP_FILE
    if smap_file.is_file() and "added_tokens_decoder" not in config:
        config.update(_read_special_tokens_map(smap_file))
    jinja_file = directory / CHAT_TEMPLATE_FILE
    if jinja_file.is_file():
        config["chat_template"] = _read_text(jinja_file)
    return config


def _read_special_tokens_map(smap_file: Path) -> dict[str, Any]:
    """Validated entries of special_tokens_map.json, so a bad value is blamed on this file, not the config."""
    smap = _read_json_object(smap_file)
    for field, value in smap.items():
        if field in ("additional_special_tokens", "extra_special_tokens") and not isinstance(value, Mapping):
            _token_list(value, field, str(smap_file))
        elif field != "extra_special_tokens":
            _token_value(value, field, str(smap_file))
    return smap


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LmlabError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise LmlabError(f"{path}: cannot read ({err.strerror})") from None


def _read_json_object(path: Path, text: str | None = None) -> dict[str, Any]:
    text = _read_text(path) if text is None else text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise LmlabError(f"{path}: malformed JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if not isinstance(data, dict):
        raise LmlabError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


# -------------------------------------------------------------------------------------------------------- training
def train_bpe(
    texts: Iterable[str] | Sequence[str | os.PathLike],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 2,
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE: every byte is in the alphabet, so any text encodes and round-trips.

    ``texts`` is an iterable of strings, or a list of file paths (``Path`` objects, or strings that all name
    existing files) read line by line.  ``special_tokens[0]`` becomes bos and eos, ``special_tokens[1]`` pad; they
    take ids 0, 1, ... .  Training is deterministic: the same input gives a byte-identical tokenizer.json.
    """
    specials = _check_special_tokens(special_tokens)
    _check_sizes(vocab_size, min_frequency, len(specials))
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)  # offsets only; adds no tokens
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_texts(texts), trainer=trainer)
    config = {
        "bos_token": specials[0],
        "eos_token": specials[0],
        "pad_token": specials[1] if len(specials) > 1 else None,
        "additional_special_tokens": specials[2:],
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
    }
    tokenizer = Tokenizer(backend, config, source="<train_bpe>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template  # validates the Jinja now
    return tokenizer


def _check_special_tokens(special_tokens: Sequence[str]) -> list[str]:
    if isinstance(special_tokens, str):
        raise LmlabError("train_bpe: special_tokens must be a list of str, got a single str")
    specials = list(special_tokens)
    if not specials:
        raise LmlabError("train_bpe: special_tokens must hold at least one token (it becomes bos/eos)")
    for i, token in enumerate(specials):
        if not isinstance(token, str) or not token:
            raise LmlabError(f"train_bpe: special_tokens[{i}] must be a non-empty str, got {token!r}")
    if len(set(specials)) != len(specials):
        raise LmlabError(f"train_bpe: special_tokens has duplicates: {specials}")
    return specials


def _check_sizes(vocab_size: Any, min_frequency: Any, n_special: int) -> None:
    minimum = 256 + n_special  # every byte plus the special tokens, before any merge
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < minimum:
        raise LmlabError(
            f"train_bpe: vocab_size must be an int >= {minimum} (256 bytes + {n_special} special tokens), "
            f"got {vocab_size!r}"
        )
    if not isinstance(min_frequency, int) or isinstance(min_frequency, bool) or min_frequency < 0:
        raise LmlabError(f"train_bpe: min_frequency must be an int >= 0, got {min_frequency!r}")


def _training_texts(texts: Any) -> Iterator[str]:
    """Strings to train on: the texts themselves, or the lines of the files they name."""
    if isinstance(texts, (str, bytes)):
        raise LmlabError("train_bpe: texts must be an iterable of str or a list of file paths, got a single str")
    paths = _file_paths(texts)
    if paths is not None:
        yield from _file_lines(paths)
        return
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise LmlabError(f"train_bpe: texts[{i}] must be a str, got {type(text).__name__}")
        yield text


def _file_paths(texts: Any) -> list[Path] | None:
    """The files to read if ``texts`` is a list of paths: all ``PathLike``, or all strings naming existing files."""
    if not isinstance(texts, (list, tuple)) or not texts:
        return None
    if all(isinstance(t, os.PathLike) for t in texts):
        paths = [Path(t) for t in texts]
        for i, p in enumerate(paths):
            if not p.is_file():
                raise LmlabError(f"train_bpe: texts[{i}] is a path but {p} is not a file")
        return paths
    if all(isinstance(t, str) and "\n" not in t and len(t) < 4096 and os.path.isfile(t) for t in texts):
        return [Path(t) for t in texts]
    return None


def _file_lines(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        try:
            with path.open(encoding="utf-8") as handle:
                yield from handle
        except UnicodeDecodeError as err:
            raise LmlabError(f"train_bpe: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


# -------------------------------------------------------------------------------------------------------- checking
def check_fits_embedding(tokenizer: Tokenizer, n_embeddings: int, where: str = "") -> None:
    """Fail early when a token id would index past the model's embedding (a CUDA assert or silent garbage later)."""
    largest = tokenizer.max_token_id
    if largest >= n_embeddings:
        at = f" at {where}" if where else ""
        raise LmlabError(
            f"tokenizer{at} has {len(tokenizer)} tokens (largest id {largest}) but the model's embedding has "
            f"{n_embeddings} rows; use a matching tokenizer or resize the embedding"
        )
