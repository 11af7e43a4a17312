"""Validate the bias metrics against the synthetic world's planted gender-occupation bias.

Why: a bias metric is only trustworthy if it reads ~0 when nothing was planted and rises with the
planted strength. This module holds the pieces the unit tests and ``scripts/bias_sweep.py`` share:

* :func:`bias_corpus`: the text a probe model learns -- every person's ``works_as`` fact under both
  bias templates (``"{full name} works as a {occupation}."``) plus Discrim-Eval decision texts derived
  from the same facts (:func:`~lmlab.eval.bias.discrim_eval.decision_documents`);
* :func:`train_probe_lm`: a tiny Llama-style model trained on it with a plain AdamW loop (CPU, seconds);
* :func:`count_scorer`: the count-based LM of the same text (bias known by construction);
* :func:`measure_bias`: every metric of the package, plus LLMBI over them, for one scorer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from lmlab.eval.bias.counterfactual import BIAS_TEMPLATES, name_pairs, occupation_association, world_crows_pairs
from lmlab.eval.bias.discrim_eval import decision_documents, world_discrimination
from lmlab.eval.bias.llmbi import llmbi
from lmlab.eval.bias.lm import CountScorer, ModelScorer
from lmlab.eval.bias.weat import world_weat


def bias_corpus(world, n_negative: int = 1, seed: int = 0) -> list[str]:
    """One sentence per line: works_as facts under both bias templates, then decision texts."""
    docs = [template.format(name=p.name, occupation=world.lookup(p.name, "works_as")) + "."
            for p in world.entities["person"] for template in BIAS_TEMPLATES]
    return docs + decision_documents(world, n_negative=n_negative, seed=seed)


def count_scorer(world, corpus: Sequence[str] | None = None) -> CountScorer:
    """The count LM of ``corpus`` (default :func:`bias_corpus`), triggered by first names and occupations."""
    corpus = bias_corpus(world) if corpus is None else corpus
    return CountScorer(corpus, triggers=[*world.first_name_genders, *world.occupation_gender])


def train_probe_lm(texts: Sequence[str], *, steps: int = 400, d_model: int = 64, n_layers: int = 2,
                   n_heads: int = 4, vocab_size: int = 384, batch_size: int = 32, lr: float = 3e-3,
                   seed: int = 0, threads: int | None = 1, log: bool = False):
    """Train a tiny Llama-style LM on ``texts`` (each a separate sequence between EOS tokens).

    Returns ``(model, tokenizer, info)``; deterministic for a given seed and thread count.
    """
    import torch

    from lmlab.core.config import ModelConfig
    from lmlab.core.model import Transformer
    from lmlab.core.tokenizer import train_bpe

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        tok = train_bpe(list(texts), vocab_size)
        eos = tok.eos_id
        pad = tok.pad_id if tok.pad_id is not None else eos
        seqs = [[eos, *tok.encode(t), eos] for t in texts]
        width = max(len(s) for s in seqs)
        data = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros(len(seqs), width)
        for i, s in enumerate(seqs):
            data[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1.0
        cfg = ModelConfig.llama_like(tok.vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                                     max_seq_len=max(64, width))
        model = Transformer(cfg).init_weights(seed=seed)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
        gen = torch.Generator().manual_seed(seed)
        warmup = max(1, steps // 20)
        start = time.time()
        loss_value = float("nan")
        for step in range(steps):
            idx = torch.randint(0, len(seqs), (batch_size,), generator=gen)
            x, m = data[idx], mask[idx]
            logits = model(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                     reduction="none")
            loss = (loss * m[:, 1:].reshape(-1)).sum() / m[:, 1:].sum()
            scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_value = loss.item()
            if log and (step % 100 == 0 or step == steps - 1):
                print(f"step {step} loss {loss_value:.3f}", flush=True)
        model.eval()
        info = {"final_loss": loss_value, "seconds": time.time() - start, "params": model.num_parameters(),
                "steps": steps, "vocab_size": tok.vocab_size}
        return model, tok, info
    finally:
        torch.set_num_threads(old_threads)


def model_scorer(model, tokenizer) -> ModelScorer:
    """A scorer matching :func:`train_probe_lm`'s format (EOS before every text)."""
    return ModelScorer(model, tokenizer, prefix_ids=[tokenizer.eos_id])


def measure_bias(scorer, world, *, n_surnames: int = 0, n_permutations: int = 2000, seed: int = 0) -> dict[str, float]:
    """Every metric of :mod:`lmlab.eval.bias` on the world's planted bias, flattened, plus LLMBI."""
    all_pairs = name_pairs(world, n_surnames=n_surnames, all_pairs=True)
    zipped = name_pairs(world, n_surnames=n_surnames, all_pairs=False)
    cf = world_crows_pairs(scorer, world, all_pairs)
    occ = occupation_association(scorer, world, zipped)
    de = world_discrimination(scorer, world, all_pairs)
    we = world_weat(scorer, world, n_surnames=n_surnames, n_permutations=n_permutations, seed=seed)
    index = llmbi({"counterfactual": cf["bias_score"], "discrimination": de["stereotype_disparity"],
                   "weat": we["effect_size"], "association": occ["association"]})
    return {
        "crows_stereo_fraction": cf["stereo_fraction"], "crows_bias_score": cf["bias_score"],
        "crows_mean_logprob_diff": cf["mean_logprob_diff"],
        "occupation_association": occ["association"], "truth_association": occ["truth_association"],
        "occupation_tvd_to_truth": occ["tvd_to_truth"],
        "discrim_stereotype_disparity": de["stereotype_disparity"], "discrim_prob_gap": de["prob_gap"],
        "discrim_mean_abs_disparity": de["mean_abs_disparity"],
        "weat_effect_size": we["effect_size"], "weat_p_value": we["p_value"],
        "llmbi": index["llmbi"],
    }


def planted_world(strength: float, seed: int = 0, n_people: int = 192, first_names_per_gender: int = 6,
                  n_occupations: int = 8):
    """The validation world: many people per first name, so the per-name occupation statistics the
    metrics read are close to the planted ones (sampling noise is what keeps b=0 from reading exactly 0)."""
    from lmlab.data.world import WorldConfig, build_world

    return build_world(WorldConfig.quickstart(seed=seed, bias_strength=strength, n_people=n_people,
                                              first_names_per_gender=first_names_per_gender,
                                              n_occupations=n_occupations))


