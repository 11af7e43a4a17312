"""LEP on the world: a base model adapted to lang_a (vocabulary extension + continued pretraining, embeddings first,
then the whole model), its new embeddings propagated into an instruct-tuned variant, vs instruction tuning in lang_a
directly.

"Instruct" = the reference model (``--model``) SFT-tuned on the world's question/answer pairs in the base language
(training question forms); instruction following = exact answers to the held-out question forms (greedy), in
lang_a (questions translated word for word; names are borrowed, occupations translated) and in base (retention).
Vocabulary: lang_a's words added as whole-word tokens, initialised with the subword mean.  Continued pretraining on
the lang_a translation of the base training documents.  Direct instruction tuning = the adapted base SFT-tuned on
the lang_a translation of the same QA pairs (data LEP does not need).

Usage: ``python scripts/adapt_lep.py [--model world-llama-0.9m] [--sft-steps 150] [--cpt-steps 100]``
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch

import lmlab
from lmlab.adapt import extend_vocabulary
from lmlab.adapt.lep import embedding_parameters, propagate_embeddings, subword_mapping
from lmlab.adapt.multilingual import lm_loss, token_windows
from lmlab.errors import LmlabError
from lmlab.reference import load_reference


def sft(model, pairs: list[tuple[list[int], list[int]]], steps: int, lr: float, pad: int, seed: int = 0) -> None:
    """AdamW on the answer tokens of (prompt ids, answer ids) pairs, 16 per step."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        batch = rng.sample(pairs, 16)
        T = max(len(p) + len(a) for p, a in batch)
        ids, mask = torch.full((16, T), pad), torch.zeros(16, T)
        for r, (p, a) in enumerate(batch):
            ids[r, : len(p) + len(a)] = torch.tensor(p + a)
            mask[r, len(p) - 1: len(p) + len(a) - 1] = 1
        logits = model(ids)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        loss = (nll * mask[:, :-1].flatten()).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def pretrain(model, data: torch.Tensor, steps: int, lr: float, params, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = lm_loss(model, data[torch.randint(len(data), (16,), generator=gen)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def accuracy(model, tok, probes: list[tuple[str, str]]) -> float:
    prompts = [tok.encode(p) for p, _ in probes]
    with torch.no_grad():
        outs = lmlab.generate(model, prompts, max_new_tokens=8)
    hits = 0
    for (_, answer), out, prompt in zip(probes, outs, prompts):
        hits += tok.decode(out[len(prompt):]).startswith(answer)
    return hits / len(probes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="world-llama-0.9m")
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--cpt-steps", type=int, default=100, help="steps of each continued-pretraining stage")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--every", type=int, default=3, help="evaluate every n-th held-out question")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t0 = time.time()
    ref = load_reference(args.model)
    world, tok, base = ref.world, ref.tokenizer, ref.model.eval()
    pad = tok.pad_id if tok.pad_id is not None else 0
    tr = lambda s: world.translate(s, "lang_a")  # noqa: E731

    def translatable(probe) -> bool:  # a few question forms use words outside the world's lexicon
        try:
            tr(probe.prompt)
            return True
        except LmlabError:
            return False

    train_qa = [(p.prompt, p.answer) for p in world.qa_probes("train") if translatable(p)]
    test_qa = [(p.prompt, p.answer) for p in world.qa_probes("heldout") if translatable(p)][:: args.every]
    test_a = [(tr(p), tr(a)) for p, a in test_qa]
    enc = lambda t, pairs: [(t.encode(p), t.encode(a + ".")) for p, a in pairs]  # noqa: E731

    instruct = copy.deepcopy(base)
    sft(instruct, enc(tok, train_qa), args.sft_steps, args.lr, pad)
    docs_a = [tr(d) for d in world.training_documents()]
    words = sorted({w for d in docs_a + [tr(p) for p, _ in train_qa] for w in d.replace(".", " ").replace("?", " ")
                    .split() if w.isalpha() and w.lower() == w})  # lower-case lexicon words (names are capitalised)
    adapted, new_tok = extend_vocabulary(base, tok, words, init="subword_mean")
    mapping = subword_mapping(tok, new_tok, base.config.vocab_size, adapted.config.vocab_size)
    n_sent = sum(d.count(".") for d in docs_a)
    tps_old = sum(len(tok.encode(d)) for d in docs_a) / n_sent
    tps_new = sum(len(new_tok.encode(d)) for d in docs_a) / n_sent
    data = token_windows(new_tok, docs_a, 64)
    stage1 = pretrain(adapted, data, args.cpt_steps, args.lr, embedding_parameters(adapted))
    stage2 = pretrain(adapted, data, args.cpt_steps, args.lr, list(adapted.parameters()), seed=1)
    rows = {"base (no SFT), old vocabulary": (base, tok), "instruct, old vocabulary": (instruct, tok),
            "adapted base (no SFT)": (adapted, new_tok)}
    for method, body in [("projection", "task_arithmetic"), ("projection", "instruct"), ("swap", "task_arithmetic"),
                         ("overlap", "task_arithmetic")]:
        rows[f"LEP {method}, body {body}"] = (propagate_embeddings(base, adapted, instruct, mapping, method, body), new_tok)
    direct = copy.deepcopy(adapted)
    sft(direct, enc(new_tok, [(tr(p), tr(a)) for p, a in train_qa]), args.sft_steps, args.lr, pad)
    rows["direct instruction tuning in lang_a"] = (direct, new_tok)
    print(f"lang_a: {len(words)} new tokens; tokens per sentence {tps_old:.1f} -> {tps_new:.1f}; continued pretraining "
          f"loss after stage 1 (embeddings) {stage1:.3f}, stage 2 (whole model) {stage2:.3f}; "
          f"{len(test_qa)} held-out questions", flush=True)
    results = {"new_tokens": len(words), "tokens_per_sentence": [tps_old, tps_new], "cpt_loss": [stage1, stage2], "rows": {}}
    for name, (model, t) in rows.items():
        acc_a, acc_base = accuracy(model, t, test_a), accuracy(model, t, test_qa)
        results["rows"][name] = {"lang_a": acc_a, "base": acc_base}
        print(f"{name:42s} held-out QA accuracy: lang_a {acc_a:.3f}, base {acc_base:.3f}", flush=True)
    print(f"{time.time() - t0:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
