"""Steering and guided decoding measured on a reference model, for docs/claims.md (issue 16).

    PYTHONPATH=src python scripts/steer_claims.py --model world-llama-0.9m-1k     # ~5-15 minutes on 2 busy cores

Target attribute: positive sentiment by the world's labelling function (``label_sentiment``: more positive than
negative lexicon words). Prompts: "NAME is" for held-out subjects (persons and cities); 8 greedy new tokens.
Each method is set up from the *training* subjects only:

- ActAdd: " wonderful" - " terrible" at blocks.1.resid_pre, added at every position (coefficients 2, 4).
- GeDi: the base model itself as the class-conditional guide (it was trained on "<positive>"/"<negative>"
  prefixed attribute text), the paper's omega = 30 and filters. Not smaller than the base: a quarter-size
  guide would have to be trained here (scripts/gedi_world.py does that on the 0.9M model).
- GenARM: an ARM (a copy of the base) trained by ``train_arm`` on pairs "NAME is" -> " a {positive} {noun}."
  preferred to " a {negative} {noun}.", decoding with beta = 1.
- VAS: a value estimator (d_model 64, 2 layers, ~1/8 of the base) fit by TD(lambda) on the base's own samples
  scored by ``label_sentiment``; beta 5, top-10.
- Proxy-tuning: tuned = a copy of the base fine-tuned on positive sentences, untuned = the base (the same
  size as the base here: EFT-style, not a small pair).
Reported: positive / negative rate, base perplexity of the continuation, distinct-2 and generation wall time
relative to plain (one timing on a shared machine: indicative only; benchmarks/guided_decode.py measures speed).

``--parts gedi_quarter``: GeDi with a guide about a quarter of the base's parameters (the paper's point): a
Llama-style class-conditional LM (d_model = base/2, one layer fewer, same tokenizer) trained from scratch on the
world's sentiment attribute text (every subject's: the attribute corpus the base itself was trained on, as the
paper trains its guide on a sentiment corpus), each sentence prefixed by its control code ("<positive> ...",
"<neutral> ...", "<negative> ..."; generative loss only, 1,500 steps), then used with the paper's omega = 30 and
filters, next to the self-guided GeDi and plain decoding. (Trained on the training subjects' sentences only, 600
steps, the guide did not steer: positive 0.00.)

Then: the vulnerability-constrained recipe (a copy fine-tuned to emit a label token before negative content;
the label forbidden at decoding), ActAdd's off-target perplexity on fact documents, and the ICL state vector
on a fact task (zero-shot / few-shot ICL / patched state vector, none / inner / momentum).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time

import torch

from lmlab.align.preference_data import PreferenceRecord, tokenize_record
from lmlab.control import VAS, ForbidTokens, GeDi, GeDiConfig, GenARM, ProxyTuning, ValueModel, fit_value_model
from lmlab.control.genarm_train import train_arm
from lmlab.core.config import ModelConfig
from lmlab.core.generate import generate
from lmlab.core.model import Transformer
from lmlab.data.world.attributes import NEGATIVE_WORDS, NOUNS, POSITIVE_WORDS, label_sentiment
from lmlab.reference import load_reference
from lmlab.steer import actadd, in_context_vector
from lmlab.steer.state_vector import format_demonstrations, format_query

NEW = 8


@torch.no_grad()
def continuation_ppl(model, outs, prompts) -> float:
    nll, n = 0.0, 0
    for o, p in zip(outs, prompts):
        if len(o) <= len(p):
            continue
        x = torch.tensor([o])
        lp = model(x)[0, :-1].float().log_softmax(-1).gather(1, x[0, 1:, None])[:, 0][len(p) - 1:]
        nll -= float(lp.sum())
        n += len(lp)
    return math.exp(nll / max(n, 1))


@torch.no_grad()
def doc_ppl(model, rows) -> float:
    nll, n = 0.0, 0
    for r in rows:
        x = torch.tensor([r])
        nll -= float(model(x)[0, :-1].float().log_softmax(-1).gather(1, x[0, 1:, None]).sum())
        n += len(r) - 1
    return math.exp(nll / n)


def distinct2(texts) -> float:
    grams, total = set(), 0
    for t in texts:
        w = t.split()
        grams.update(zip(w, w[1:]))
        total += max(len(w) - 1, 0)
    return len(grams) / max(total, 1)


def sft(model, rows, steps: int, lr: float, seed: int = 0):
    """Causal-LM fine-tuning of ``model`` in place on token rows (right-padded, loss on real tokens)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = rng.sample(rows, min(16, len(rows)))
        T = max(len(r) for r in batch)
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        mask = torch.zeros(len(batch), T)
        for i, r in enumerate(batch):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        logp = model(ids, attention_mask=mask.long())[:, :-1].float().log_softmax(-1)
        loss = -(logp.gather(2, ids[:, 1:, None])[..., 0] * mask[:, 1:]).sum() / mask[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def subjects(world):
    out = [(e.name, "person") for e in world.entities["person"]] + [(e.name, "city") for e in world.entities["city"]]
    random.Random(0).shuffle(out)
    half = len(out) // 2
    return out[:half], out[half:]


def sentence(rng, subject, kind, words):
    noun = rng.choice(NOUNS[kind])
    adj = rng.choice(words)
    return f"{subject} is {'an' if adj[0] in 'aeiou' else 'a'} {adj} {noun}."


def attribute_table(m, tok, world, out: dict) -> None:
    train, held = subjects(world)
    prompts = [tok.encode(f"{s} is") for s, _ in held]
    rng = random.Random(1)
    # --- set-ups (training subjects only) -------------------------------------------------------------
    arm = copy.deepcopy(m)
    records = []
    for s, kind in train:
        pos, neg = sentence(rng, s, kind, POSITIVE_WORDS), sentence(rng, s, kind, NEGATIVE_WORDS)
        records.append(PreferenceRecord(f"{s} is", pos[len(s) + 3:], neg[len(s) + 3:]))
    arm_report = train_arm(arm, [tokenize_record(tok, r) for r in records], tok.pad_id, steps=30, micro_batch=8,
                           lr=1e-3)
    tuned = copy.deepcopy(m)
    sft_loss = sft(tuned, [tok.encode(sentence(rng, s, k, POSITIVE_WORDS)) for s, k in train for _ in range(2)],
                   steps=30, lr=1e-3)
    trunk = Transformer(ModelConfig.llama_like(vocab_size=m.config.vocab_size, d_model=64, n_layers=2, n_heads=4,
                                               max_seq_len=64)).init_weights(seed=0)
    vm = ValueModel(trunk)
    vas_report = fit_value_model(vm, m, [tok.encode(f"{s} is") for s, _ in train],
                                 lambda p, r: float(label_sentiment(tok.decode(r))), samples_per_prompt=4,
                                 max_new_tokens=NEW, epochs=10, lr=3e-3, seed=0, pad_id=tok.pad_id)
    out["setup"] = {"arm": vars(arm_report), "proxy_sft_loss": sft_loss, "vas": vars(vas_report),
                    "value_model_params": trunk.num_parameters(), "base_params": m.num_parameters()}
    print(f"set-up: ARM loss {arm_report.loss_first:.3f} -> {arm_report.loss_last:.3f}; proxy SFT loss {sft_loss:.3f};"
          f" VAS value fit on {vas_report.samples} samples (mean reward {vas_report.reward_mean:+.2f}), loss "
          f"{vas_report.loss_first:.3f} -> {vas_report.loss_last:.3f}")
    vec = actadd(m, tok, " wonderful", " terrible", layer=1)
    pos_code, neg_code = tok.encode("<positive>"), tok.encode("<negative>")
    methods = [("plain", lambda: ([], None)),
               ("ActAdd x2 (all positions)", lambda: ([], vec.apply(m, coeff=2.0, positions="all"))),
               ("ActAdd x4 (all positions)", lambda: ([], vec.apply(m, coeff=4.0, positions="all"))),
               ("GeDi omega=30 (self-guided)", lambda: ([GeDi(m, pos_code, neg_code, GeDiConfig(), base=m)], None)),
               ("GenARM beta=1 (trained ARM)", lambda: ([GenARM([arm], beta=1.0, base=m)], None)),
               ("VAS beta=5 top-10", lambda: ([VAS(vm, beta=5.0, top_k=10, base=m)], None)),
               ("proxy-tuning alpha=1", lambda: ([ProxyTuning(tuned, m, alpha=1.0, base=m)], None))]
    print(f"\nheld-out prompts: {len(prompts)} x 'NAME is', {NEW} greedy tokens; target: positive sentiment")
    print("| decoding | positive | negative | base perplexity | distinct-2 | time vs plain |\n|---|---|---|---|---|---|")
    plain_time = None
    rows = {}
    for name, make in methods:
        procs, ctx = make()
        t0 = time.perf_counter()
        if ctx is None:
            outs = generate(m, prompts, max_new_tokens=NEW, stop_token_ids=[], logits_processors=procs)
        else:
            with ctx:
                outs = generate(m, prompts, max_new_tokens=NEW, stop_token_ids=[])
        dt = time.perf_counter() - t0
        plain_time = plain_time or dt
        rows[name] = attribute_row(m, tok, name, outs, prompts, dt / plain_time)
    for name, r in rows.items():
        print(f"   {name}: {r['example']!r}")
    out["attribute"] = rows
    docs = [tok.encode(d)[:96] for d in world.training_documents()[:40]]
    base_ppl = doc_ppl(m, docs)
    off = {"none": base_ppl}
    for c in (2.0, 4.0):
        with vec.apply(m, coeff=c, positions="all"):
            off[f"actadd x{c:g}"] = doc_ppl(m, docs)
    out["actadd_offtarget_fact_ppl"] = off
    print("\nActAdd off-target: perplexity of 40 fact documents (<= 96 tokens): " +
          ", ".join(f"{k} {v:.3f}" for k, v in off.items()))


def train_quarter_guide(m, tok, world, steps: int, seed: int = 0):
    """A class-conditional LM ~1/4 of ``m``'s parameters on the world's control-code-prefixed sentiment text
    (the paper trains its guide with the same tokenizer as the base)."""
    c = m.config
    cfg = ModelConfig.llama_like(vocab_size=c.vocab_size, d_model=c.d_model // 2, n_layers=max(1, c.n_layers - 1),
                                 n_heads=max(1, c.n_heads // 2), d_mlp=c.d_mlp // 2, max_seq_len=128)
    guide = Transformer(cfg).init_weights(seed=seed)
    rows = [tok.encode(t.prefixed) for t in world.attribute_texts() if t.axis == "sentiment"]
    loss = sft(guide, rows, steps=steps, lr=3e-3, seed=seed)
    return guide, {"guide_params": guide.num_parameters(), "base_params": m.num_parameters(),
                   "ratio": guide.num_parameters() / m.num_parameters(), "train_sentences": len(rows),
                   "steps": steps, "final_loss": loss, "d_model": cfg.d_model, "n_layers": cfg.n_layers}


def gedi_quarter_table(m, tok, world, out: dict, steps: int = 1500) -> None:
    t0 = time.perf_counter()
    guide, setup = train_quarter_guide(m, tok, world, steps)
    setup["train_seconds"] = time.perf_counter() - t0
    print(f"quarter-size guide: {setup['guide_params']:,} parameters ({setup['ratio']:.2f}x the base), "
          f"{setup['train_sentences']} sentences, {steps} steps, loss {setup['final_loss']:.3f}, "
          f"{setup['train_seconds']:.0f} s")
    _, held = subjects(world)
    prompts = [tok.encode(f"{s} is") for s, _ in held]
    pos_code, neg_code = tok.encode("<positive>"), tok.encode("<negative>")
    methods = [("plain", []),
               ("GeDi omega=30, quarter-size guide", [GeDi(guide, pos_code, neg_code, GeDiConfig(), base=m)]),
               ("GeDi omega=30, self-guided", [GeDi(m, pos_code, neg_code, GeDiConfig(), base=m)])]
    print("| decoding | positive | negative | base perplexity | distinct-2 | time vs plain |\n|---|---|---|---|---|---|")
    rows, plain_time = {}, None
    for name, procs in methods:
        generate(m, prompts[:2], max_new_tokens=2, stop_token_ids=[], logits_processors=[])  # warm the allocator
        t0 = time.perf_counter()
        outs = generate(m, prompts, max_new_tokens=NEW, stop_token_ids=[], logits_processors=procs)
        dt = time.perf_counter() - t0
        plain_time = plain_time or dt
        rows[name] = attribute_row(m, tok, name, outs, prompts, dt / plain_time)
    for name, r in rows.items():
        print(f"   {name}: {r['example']!r}")
    out["gedi_quarter"] = {"setup": setup, "rows": rows}


def vulnerability_table(m, tok, world, out: dict) -> None:
    """Fine-tune a copy to emit a label token right before negative content; forbid the label at decoding."""
    label = next(s for s in ("@", "~", "^", "|", "#") if len(tok.encode(s)) == 1)
    lid = tok.encode(label)[0]
    train, held = subjects(world)
    rng = random.Random(2)
    docs = []
    for s, k in train:
        for _ in range(2):
            docs.append(tok.encode(sentence(rng, s, k, POSITIVE_WORDS)))
            neg = sentence(rng, s, k, NEGATIVE_WORDS)
            docs.append(tok.encode(f"{s} is{label}{neg[len(s) + 3:]}"))  # "NAME is@ a terrible city."
            assert lid in docs[-1], "the label must stay one token inside the sentence"
    tuned = copy.deepcopy(m)
    loss = sft(tuned, docs, steps=40, lr=1e-3, seed=3)
    prompts = [tok.encode(f"{s} is") for s, _ in held]
    settings = dict(max_new_tokens=NEW, temperature=1.0, seed=0, num_samples=4, stop_token_ids=[])
    free = generate(tuned, prompts, **settings)
    banned = generate(tuned, prompts, logits_processors=[ForbidTokens([lid], m.config.vocab_size)], **settings)
    P = [p for p in prompts for _ in range(4)]
    texts_free = [tok.decode(o[len(p):]) for o, p in zip(free, P)]
    flagged = [lid in o[len(p):] for o, p in zip(free, P)]
    neg_free = [label_sentiment(t) < 0 for t in texts_free]
    neg_banned = [label_sentiment(tok.decode(o[len(p):])) < 0 for o, p in zip(banned, P)]
    detected = sum(f and n for f, n in zip(flagged, neg_free)) / max(sum(neg_free), 1)
    r = {"label": label, "sft_loss": loss, "negative_rate_free": sum(neg_free) / len(P),
         "label_emitted_rate": sum(flagged) / len(P), "negative_detected_by_label": detected,
         "negative_rate_label_forbidden": sum(neg_banned) / len(P), "samples": len(P)}
    out["vulnerability"] = r
    print(f"\nvulnerability-constrained decoding (label {label!r} before negative content; {len(P)} sampled "
          f"continuations of held-out 'NAME is'; SFT loss {loss:.3f}):")
    print("| decoding | negative rate | label emitted |\n|---|---|---|")
    print(f"| fine-tuned, free | {r['negative_rate_free']:.2f} | {r['label_emitted_rate']:.2f} |")
    print(f"| fine-tuned, label forbidden | {r['negative_rate_label_forbidden']:.2f} | 0.00 |")
    print(f"negative continuations the label flagged: {detected:.2f}")


@torch.no_grad()
def icv_table(m, tok, world, out: dict) -> None:
    """born_in as a few-shot task: 'NAME =>' -> ' CITY'; accuracy of the first answer token."""
    facts = [f for f in world.facts if f.relation == "born_in"]
    random.Random(4).shuffle(facts)
    demos = [(f.subject, " " + f.object) for f in facts[:8]]
    dummy, queries = facts[8], facts[9:41]
    sep = " =>"

    def acc(make_prompt, sv=None):
        hits = 0
        for f in queries:
            ids = make_prompt(f)
            if sv is None:
                logits = m(torch.tensor([ids]))[0, -1]
            else:
                with sv.apply(m):
                    logits = m(torch.tensor([ids]))[0, -1]
            hits += int(logits.argmax()) == tok.encode(" " + f.object)[0]
        return hits / len(queries)

    zero = acc(lambda f: format_query(tok, f.subject, sep))
    few = acc(lambda f: format_demonstrations(tok, demos, f.subject, sep, "\n")[0])
    rows = {"zero-shot": zero, "few-shot ICL (8 demonstrations)": few}
    for opt in ("none", "inner", "momentum"):
        sv = in_context_vector(m, tok, demos, dummy.subject, separator=sep, eos="\n", optimize=opt)
        rows[f"state vector ({opt}, first {sv.vector.shape[0]} layers)"] = acc(
            lambda f: format_query(tok, f.subject, sep), sv)
    out["icv"] = rows
    print(f"\nICL state vector on born_in ('NAME =>' -> ' CITY', {len(queries)} queries, first-token accuracy):")
    print("| prompt | accuracy |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.2f} |")


def attribute_row(m, tok, name, outs, prompts, time_vs_plain) -> dict:
    """One table row: sentiment rates of the continuations, their perplexity under ``m``, distinct-2, relative time
    (printed as a markdown row as well)."""
    texts = [tok.decode(o[len(p):]) for o, p in zip(outs, prompts)]
    labels = [label_sentiment(t) for t in texts]
    r = {"positive": sum(x > 0 for x in labels) / len(labels), "negative": sum(x < 0 for x in labels) / len(labels),
         "ppl": continuation_ppl(m, outs, prompts), "distinct2": distinct2(texts), "time_vs_plain": time_vs_plain,
         "example": texts[0]}
    print(f"| {name} | {r['positive']:.2f} | {r['negative']:.2f} | {r['ppl']:.2f} | {r['distinct2']:.2f} | "
          f"{r['time_vs_plain']:.2f}x |")
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="world-llama-0.9m-1k", help="a shipped reference name (or its directory)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--parts", default="attribute,gedi_quarter,vulnerability,icv",
                   help="comma-separated subset to run")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    unknown = parts - {"attribute", "gedi_quarter", "vulnerability", "icv"}
    if unknown:
        p.error(f"--parts: unknown {sorted(unknown)} (choose from attribute, gedi_quarter, vulnerability, icv)")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ref = load_reference(args.model)
    m, tok, world = ref.model, ref.tokenizer, ref.world
    print(f"model {args.model}: {m.num_parameters():,} parameters, {m.config.n_layers} layers, d_model "
          f"{m.config.d_model}")
    out: dict = {"model": args.model}
    for name, fn in (("attribute", attribute_table), ("gedi_quarter", gedi_quarter_table),
                     ("vulnerability", vulnerability_table), ("icv", icv_table)):
        if name in parts:
            fn(m, tok, world, out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
