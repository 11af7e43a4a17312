"""The ``lmlab`` command: one verb per module in this package, each with ``--help``.

User mistakes (``LmlabError``, and Jinja errors in a user's template, such as a sandbox violation) print one
line to stderr and exit 2, with no traceback. Output cut short by a closed pipe (``lmlab info | head -1``) ends
quietly. ``--help`` of every verb shows the defaults.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module, one-line help). Modules are imported only when their verb runs, so `lmlab --help` is fast.
VERBS = {
    "quickstart": ("lmlab.cli.quickstart", "build the world, train a tokenizer and a small model, report fact recall"),
    "info": ("lmlab.cli.info", "show a checkpoint's config and parameter count"),
    "convert": ("lmlab.cli.convert", "rewrite a checkpoint (legacy .bin, dtype, GPT-2 layouts) as HF safetensors"),
    "generate": ("lmlab.cli.generate", "generate text from a prompt"),
    "chat": ("lmlab.cli.chat", "chat with a model, reading turns from standard input"),
    "world": ("lmlab.cli.world", "write the synthetic world with its ground truth to a directory"),
    "tokenizer": ("lmlab.cli.tokenizer", "train a byte-level BPE tokenizer on text files"),
    "data": ("lmlab.cli.data", "text/JSONL/Parquet files -> training shards, validation split and tokenizer"),
    "train": ("lmlab.cli.train", "train a model from a YAML recipe"),
    "finetune": ("lmlab.cli.finetune", "supervised fine-tuning on chat JSONL (assistant-only loss, packing; full, LoRA or HFT)"),
    "align": ("lmlab.cli.align", "preference alignment from a YAML recipe: DPO, a Bradley-Terry or HaF-RM reward model"),
    "merge": ("lmlab.cli.merge", "fold a LoRA adapter (peft or lmlab format) into a base checkpoint, write an HF checkpoint"),
    "edit": ("lmlab.cli.edit", "write facts into a model's weights (ROME, MEMIT, AlphaEdit); save the checkpoint and the delta"),
    "steer": ("lmlab.cli.steer", "build a steering file (ActAdd, concept direction, ICL state vector) or a VAS value model"),
    "adapt-vocab": ("lmlab.cli.adapt_vocab", "extend a checkpoint's vocabulary or swap its tokenizer (WECHSEL/mean/random init)"),
    "evaluate": ("lmlab.cli.evaluate", "evaluate a model on task YAML files and write a report"),
    "rope-search": ("lmlab.cli.rope_search", "search per-dimension RoPE factors (DCIS / evolutionary) for a longer context"),
    "quantize": ("lmlab.cli.quantize", "weight-only int8/int4 quantization of a checkpoint (round-to-nearest or GPTQ)"),
    "serve": ("lmlab.cli.serve", "serve a model over an OpenAI-compatible HTTP API with a playground page"),
}


def show_defaults(p: argparse.ArgumentParser) -> None:
    """Every option's help ends with its default when it has a meaningful one (not None, not a False flag)
    and the help text does not already state it (argparse's ArgumentDefaultsHelpFormatter skips options
    without help text and prints "(default: None)")."""
    for action in p._actions:
        default = action.default
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or default == []
                or isinstance(action, argparse._StoreConstAction) or "default" in (action.help or "")):
            continue
        action.help = ((action.help + " ") if action.help else "") + "(default: %(default)s)"


def main(argv: list[str] | None = None) -> int:
    from lmlab.errors import LmlabError

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="lmlab", description="Language-model methods over one compact transformer.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module_name, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if argv[:1] == [verb]:  # only import the verb being run
            importlib.import_module(module_name).add_arguments(p)
            show_defaults(p)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        code = importlib.import_module(args._module).run(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except LmlabError as err:
        print(f"lmlab {args.verb}: error: {cli_spelling(str(err))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print(f"lmlab {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = _template_error(err)
        if message is None:
            raise
        print(f"lmlab {args.verb}: error: {message}", file=sys.stderr)
        return 2


# Library errors name the Python spelling of their fix; on the command line the flag or --set is the fix.
CLI_SPELLINGS = {
    "pass overwrite=True": "pass --overwrite",
    "pass truncate=True": "set data.truncate: true (--set data.truncate=true)",
    "pass resume=True (--resume)": "pass --resume",
}


def cli_spelling(message: str) -> str:
    for python, cli in CLI_SPELLINGS.items():
        message = message.replace(python, cli)
    return message


def _template_error(err: Exception) -> str | None:
    """One line for a Jinja error raised while rendering a user's template (task or chat template)."""
    try:
        from jinja2.exceptions import SecurityError, TemplateError
    except ImportError:  # pragma: no cover - jinja2 is a core dependency
        return None
    if isinstance(err, SecurityError):
        return f"template tried an operation the sandbox forbids ({err})"
    if isinstance(err, TemplateError):
        return f"template error ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    return None


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
