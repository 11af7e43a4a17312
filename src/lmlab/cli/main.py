"""The ``lmlab`` command: one verb per module in this package, each with ``--help``.

User mistakes (``LmlabError``) print one line to stderr and exit 2, with no traceback.
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
    "train": ("lmlab.cli.train", "train a model from a YAML recipe"),
    "finetune": ("lmlab.cli.finetune", "supervised fine-tuning on chat JSONL (assistant-only loss, packing; full, LoRA or HFT)"),
    "merge": ("lmlab.cli.merge", "fold a LoRA adapter (peft or lmlab format) into a base checkpoint, write an HF checkpoint"),
    "adapt-vocab": ("lmlab.cli.adapt_vocab", "extend a checkpoint's vocabulary or swap its tokenizer (WECHSEL/mean/random init)"),
    "evaluate": ("lmlab.cli.evaluate", "evaluate a model on task YAML files and write a report"),
}


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
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        return importlib.import_module(args._module).run(args) or 0
    except LmlabError as err:
        print(f"lmlab {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmlab {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
