"""Issue 18 on the real model (SmolLM2-135M-Instruct): int8/int4 perplexity and KV-policy recall on real text.

Real English text available offline: the Python language reference's prose as the standard library ships it
for ``help()`` (``pydoc_data/topics.py``, every Python installation has it; PSF licence). The topics are
joined in sorted order; perplexity windows come from the first part of the text, GPTQ's calibration
segments from the rest (no overlap).

    PYTHONPATH=src python scripts/real_model_efficient.py ppl --windows 4 --seq 256 --threads 1
    PYTHONPATH=src python scripts/real_model_efficient.py kv --tokens 2000 --budget 0.25

``ppl``: perplexity of fp32 and of int8 / int4 weights (RTN and GPTQ; group 128 for int4), by default with the
tied output head quantized too (int8 by default; its float table kept for the lookup); ``--cases`` picks rows:
``BITS-METHOD`` plus ``-h4`` / ``-h8`` (head bits) or ``-nohead`` (head float), e.g. ``8-rtn,4-gptq-h4``. ``kv``: a fact
("The keeper of the lighthouse is named <name>.") stated right after the first paragraph, ~2K tokens of the
text after it, then a question; greedy answer under the full cache and each KV policy at 25% of the prompt
(prefilled whole, evicted after the prompt and after each token). Keep runs short: 135M parameters on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import lmlab
from lmlab.efficient import kv_policy
from lmlab.efficient.calibration import random_segments, windows
from lmlab.efficient.quantization import parse_quant_case, quantize, simulate_int8_activations
from lmlab.errors import LmlabError

MODEL = "smollm2-135m-instruct"
CASES = "8-rtn,8-gptq,4-rtn,4-gptq"


def head_label(model) -> str:
    head = getattr(model, "lm_head", None)
    return f"int{head.bits}" if getattr(head, "weight_only_quantized", False) else "float"
FACTS = [  # (fact sentence, question, answer) — invented, so only the context can supply them
    ("The keeper of the lighthouse is named Orla Whitcombe.", "What is the name of the keeper of the lighthouse?",
     "Orla Whitcombe"),
    ("The secret passphrase for the archive is blue kestrel.", "What is the secret passphrase for the archive?",
     "blue kestrel"),
    ("The meeting about the new parser will take place in Lisbon.",
     "In which city will the meeting about the new parser take place?", "Lisbon"),
]


def english_text() -> str:
    """The prose of the Python language reference as shipped for ``help()`` (stdlib ``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def perplexity_table(args) -> None:
    from lmlab.efficient.calibration import perplexity

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.activation_dtype == "float32":
        from lmlab.efficient import quant

        # the same numbers as PyTorch's packed kernels with fp32 activations (the dequantised weight times fp32
        # inputs), several times faster on this CPU: _weight_int8pack_mm is slow with fp32 activations
        quant.FAST_KERNELS = False
    tok = lmlab.load_tokenizer(MODEL)
    stream = torch.tensor(tok.encode(english_text()), dtype=torch.long)
    n_eval = args.windows * args.seq
    evaluation = windows(stream[:n_eval], args.seq)  # [windows, seq]
    calibration = random_segments(stream[n_eval:], args.calibration, args.seq, seed=0)
    print(f"{MODEL}, text: pydoc_data/topics.py ({len(stream)} tokens); eval {args.windows} x {args.seq} tokens "
          f"(the first {n_eval}); GPTQ calibration {args.calibration} x {args.seq} from the rest, seed 0, "
          f"act_order={args.act_order}")
    a8_head = " Q8_0 activations | change vs float activations |" if args.int8_activations else ""
    print("| weights | method | group | output head | perplexity | change vs fp32 | quantize s |" + a8_head)
    print("|---|---|---|---|---|---|---|" + "---|---|" * args.int8_activations)
    base = perplexity(lmlab.load(MODEL).eval(), evaluation, batch_size=2)
    print(f"| fp32 | - | - | fp32 | {base:.3f} | - | - |" + " - | - |" * args.int8_activations, flush=True)
    for bits, method, group, extra in [parse_quant_case(c) for c in args.cases.split(",")]:
        model = lmlab.load(MODEL).eval()
        t0 = time.perf_counter()
        quantize(model, bits=bits, method=method, group_size=group, calibration=calibration,
                 activation_dtype=args.activation_dtype, batch_size=4, act_order=args.act_order, **extra)
        seconds = time.perf_counter() - t0
        ppl = perplexity(model, evaluation, batch_size=2)
        a8 = ""
        if args.int8_activations:  # the int8-activation GEMV mode's rounding (Q8_0) on every row
            handles = simulate_int8_activations(model)
            ppl8 = perplexity(model, evaluation, batch_size=2)
            for h in handles:
                h.remove()
            a8 = f" {ppl8:.3f} | {100 * (ppl8 / ppl - 1):+.3f}% |"
        print(f"| int{bits} | {method} | {group or 'channel'} | {head_label(model)} | {ppl:.3f} | "
              f"{100 * (ppl / base - 1):+.2f}% | {seconds:.0f} |{a8}", flush=True)


def recall_prompts(tok, n_tokens: int) -> list[tuple[list[int], str, int]]:
    """(prompt ids, answer, depth in tokens of the fact) per fact: first paragraph, fact, filler, question."""
    paragraphs = english_text().split("\n\n")
    out = []
    for i, (fact, question, answer) in enumerate(FACTS):
        body = paragraphs[3 * i + 1:]  # each fact in other text
        head = body[0] + "\n\n" + fact + "\n\n"
        text, k = head, 1
        while len(tok.encode(text)) < n_tokens:
            text += body[k] + "\n\n"
            k += 1
        messages = [{"role": "user", "content": text + "Answer from the text above. " + question}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        out.append((list(ids), answer, len(tok.encode(head))))
    return out


@torch.inference_mode()
def recall_table(args) -> None:
    tok = lmlab.load_tokenizer(MODEL)
    model = lmlab.load(MODEL).eval()
    prompts = recall_prompts(tok, args.tokens)
    prompts = [prompts[args.only - 1]] if args.only else prompts[:args.facts]
    lengths = [len(p) for p, _, _ in prompts]
    print(f"{MODEL}, {len(prompts)} facts each stated ~{max(d for *_, d in prompts)} tokens in, prompts "
          f"{min(lengths)}-{max(lengths)} tokens (pydoc_data/topics.py), KV budget {args.budget:.0%} of the "
          f"prompt, greedy {args.new_tokens} tokens, prefill whole")
    print("| cache | " + " | ".join(a for _, a, _ in prompts) + " | recalled |")
    print("|---|" + "---|" * (len(prompts) + 1))
    for name in [None if n == "full" else n for n in args.policies.split(",")]:
        hits, cells = 0, []
        for ids, answer, _ in prompts:
            policy = None if name is None else kv_policy(name, budget=args.budget)
            row = lmlab.generate(model, [ids], max_new_tokens=args.new_tokens, cache_policy=policy,
                                 stop_token_ids=[tok.eos_id] if tok.eos_id is not None else [])[0]
            reply = tok.decode(row[len(ids):]).strip().replace("\n", " ").replace("|", "/")
            ok = answer.lower() in reply.lower()
            hits += ok
            cells.append(f"{'✓' if ok else '✗'} {reply[:40]}")
        label = "full" if name is None else f"{name} {args.budget:.0%}"
        print(f"| {label} | " + " | ".join(cells) + f" | {hits}/{len(prompts)} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("ppl")
    q.add_argument("--windows", type=int, default=4)
    q.add_argument("--seq", type=int, default=256)
    q.add_argument("--calibration", type=int, default=16)
    q.add_argument("--activation-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    q.add_argument("--cases", default=CASES, help=f"rows to measure (default {CASES})")
    q.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    q.add_argument("--act-order", action="store_true", help="GPTQ: columns in order of decreasing Hessian diagonal")
    q.add_argument("--int8-activations", action="store_true",
                   help="also score each row with Q8_0-rounded inputs to its quantized layers (LMLAB_GEMV_ACT=int8)")
    k = sub.add_parser("kv")
    k.add_argument("--tokens", type=int, default=2000)
    k.add_argument("--budget", type=float, default=0.25)
    k.add_argument("--new-tokens", type=int, default=16)
    k.add_argument("--facts", type=int, default=len(FACTS), help="use the first N facts (a shorter run)")
    k.add_argument("--only", type=int, default=None, choices=range(1, len(FACTS) + 1),
                   help="use only fact N (1-based): rows can be measured one prefill at a time")
    k.add_argument("--policies", default="full,window,sinks,h2o,keyformer")
    k.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        perplexity_table(args) if args.what == "ppl" else recall_table(args)
    except LmlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
