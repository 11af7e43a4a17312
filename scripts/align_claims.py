"""Alignment claims on the world, judged by its ground truth (docs/claims.md, "Preference alignment").

On the shipped quickstart model (``lmlab.reference``), first SFT-tuned on the question/answer format (the
chosen answers of the *factual* training pairs, plain style), and the world's preference pairs (factual: the
true object vs a wrong one; politeness: polite vs rude frames around the true answer):

1. reward models (Bradley-Terry vs HaF-RM): held-out pair accuracy;
2. DPO and SPIN policies: win rate of a sampled answer against the SFT policy's sample on held-out prompts,
   judged by the true reward, and the KL to the SFT policy estimated on the policy's own samples;
3. best-of-N (N = 1, 4, 16) with the trained reward model, and InfAlign's calibrate-and-transform tilt
   (sampling-importance-resampling of 32 reference samples, calibrated reward, exp transform with the t the
   analytic tool picks for N) vs the same tilt on the raw reward at the same KL; win rate over plain sampling.

True reward of a response: +1 if it names the fact's true object, +1 if its politeness label is polite, -1 if
rude. Ties count half. Usage (about 10 minutes on a quiet 2-core machine)::

    python scripts/align_claims.py --steps 60 --out align_claims.json
    python scripts/align_claims.py --model world-llama-2m-1k --dpo-lrs 5e-4,1e-4,2e-5 --out align_world.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import tempfile
import time

import torch

from lmlab.align.best_of_n import reward_model_scorer
from lmlab.align.dpo import DPOObjective, PrecomputedPreferenceData, precompute_reference
from lmlab.align.infalign import beta_for_kl, best_exponent, calibrate, exp_transform, tilted_resample
from lmlab.align.preference_data import PreferenceData, collate_pairs, tokenize_record, world_preferences
from lmlab.align.reward import HaFRMObjective, RewardObjective, reward_model
from lmlab.align.spin import SPINConfig, spin
from lmlab.core.generate import GenerationConfig, generate
from lmlab.core.logprobs import sequence_logprobs
from lmlab.data.world.attributes import label_politeness
from lmlab.reference import load_reference


def true_reward(text: str, obj: str) -> float:
    return float(obj in text) + float(label_politeness(text))


def train(model, objective, data, steps: int, lr: float, batch: int) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    it = iter(())
    model.train()
    for _ in range(steps):
        try:
            b = next(it)
        except StopIteration:
            it = iter(data.batches(batch))
            b = next(it)
        loss, _ = objective(model, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def sft_loop(model, pairs, pad, steps: int, lr: float = 1e-3, batch: int = 8) -> None:
    """Plain SFT: mean token NLL of the chosen responses given their prompts."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        chunk = [pairs[(step * batch + i) % len(pairs)] for i in range(batch)]
        b = collate_pairs(chunk, pad)
        n = len(chunk)
        loss = -sequence_logprobs(model, b["input_ids"][:n], loss_mask=b["completion_mask"][:n],
                                  attention_mask=b["attention_mask"][:n], reduction="mean").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def pair_accuracy(rm, pairs, pad) -> float:
    with torch.no_grad():
        b = collate_pairs(pairs, pad)
        r = rm(b["input_ids"], b["attention_mask"])[:, 0]
        c, rj = r.chunk(2)
    return float((c > rj).float().mean())


def sample(model, prompts, n, seed, max_new=24, eos=None):
    cfg = GenerationConfig(max_new_tokens=max_new, temperature=1.0, seed=seed, num_samples=n,
                           stop_token_ids=None if eos is None else [eos])
    rows = generate(model, prompts, cfg)
    return [[row[len(p):] for row in rows[i * n:(i + 1) * n]] for i, p in enumerate(prompts)]


def logp(model, prompt, responses):
    rows = [prompt + r for r in responses]
    T = max(map(len, rows))
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    with torch.no_grad():
        return sequence_logprobs(model, ids, prompt_lengths=torch.full((len(rows),), len(prompt)),
                                 attention_mask=mask)


def empirical_kl(logits: torch.Tensor) -> float:
    """KL(softmax(logits) || uniform) over a prompt's samples: how far a tilt moves from plain sampling."""
    w = torch.softmax(logits, 0)
    return float((w * (w * len(w)).clamp_min(1e-300).log()).sum())


def match_kl(rewards: torch.Tensor, target: float) -> float:
    """The temperature b of exp(r / b) whose resampling KL equals ``target`` (bisection in log b)."""
    lo, hi = 1e-6, 1e6
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if empirical_kl(rewards / mid) > target else (lo, mid)
    return math.sqrt(lo * hi)


def win_rate(a: list[float], b: list[float]) -> float:
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--prompts", type=int, default=48, help="held-out prompts for win rates")
    ap.add_argument("--out", default="align_claims.json")
    ap.add_argument("--model", default="world-llama-0.9m", help="shipped reference name or directory")
    ap.add_argument("--dpo-lrs", default="5e-4", help="comma-separated DPO learning rates (a sweep)")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    ref = load_reference(args.model)
    tok, pad, eos = ref.tokenizer, ref.tokenizer.pad_id, ref.tokenizer.eos_id
    train_recs = world_preferences(ref.world, "train")
    held_recs = world_preferences(ref.world, "heldout")
    train_pairs = [tokenize_record(tok, r) for r in train_recs]
    held_pairs = [tokenize_record(tok, r) for r in held_recs]
    results: dict = {"model": args.model, "steps": args.steps, "train_pairs": len(train_pairs), "heldout_pairs": len(held_pairs)}

    # 0. the SFT policy every method starts from (and is compared with)
    sft_pairs = [p for p, r in zip(train_pairs, train_recs) if r.meta["reason"] == "factual"]
    sft = copy.deepcopy(ref.model)
    sft_loop(sft, sft_pairs, pad, args.steps)
    ref = dataclasses.replace(ref, model=sft)  # from here on "the reference policy" is the SFT model

    # 1. reward models
    rms = {}
    for name, obj in (("bradley_terry", RewardObjective()), ("haf_rm", HaFRMObjective(alpha=1.0, beta=0.1))):
        rm = reward_model(copy.deepcopy(ref.model), seed=0)
        train(rm, obj, PreferenceData(train_pairs, pad, seed=0), args.steps, 1e-3, 8)
        rms[name] = rm
        results[f"rm_{name}_heldout_accuracy"] = pair_accuracy(rm, held_pairs, pad)
        print(name, results[f"rm_{name}_heldout_accuracy"], flush=True)

    # held-out prompts, one per fact (the factual pair's prompt), with the fact's true object
    facts = {}
    for r in held_recs:
        facts.setdefault(r.prompt, r.meta["fact"]["object"])
    prompts_text = list(facts)[:args.prompts]
    prompts = [tok.encode(p, add_special_tokens=True) for p in prompts_text]
    objects = [facts[p] for p in prompts_text]

    def judged(groups):
        return [[true_reward(tok.decode(r), o) for r in g] for g, o in zip(groups, objects)]

    base_samples = sample(ref.model, prompts, 1, seed=1, eos=eos)
    base_scores = [g[0] for g in judged(base_samples)]
    results["sft_mean_true_reward"] = sum(base_scores) / len(base_scores)

    # 2. DPO and SPIN policies vs the base policy
    policies = {}
    logps = precompute_reference(ref.model, train_pairs, pad)
    for lr in [float(x) for x in args.dpo_lrs.split(",")]:
        dpo = copy.deepcopy(ref.model)
        train(dpo, DPOObjective(beta=0.1, reference_model=ref.model),
              PrecomputedPreferenceData(train_pairs, logps, pad), args.steps, lr, 8)
        policies["dpo" if args.dpo_lrs == "5e-4" else f"dpo_lr{lr:g}"] = dpo
    spin_model = copy.deepcopy(ref.model)
    chosen = [(p.prompt_ids, p.chosen_ids) for p in train_pairs]
    spin(spin_model, [c[0] for c in chosen], [c[1] for c in chosen], pad,
         SPINConfig(iterations=2, steps=max(1, args.steps // 2), generation=GenerationConfig(
             max_new_tokens=24, temperature=1.0, seed=0, stop_token_ids=[eos]), out_dir=tempfile.mkdtemp(prefix="spin-claims-")))
    policies["spin"] = spin_model
    for name, policy in policies.items():
        samples = sample(policy, prompts, 1, seed=2, eos=eos)
        scores = [g[0] for g in judged(samples)]
        kl = sum(float((logp(policy, p, g) - logp(ref.model, p, g)).mean()) for p, g in zip(prompts, samples))
        results[f"{name}_win_rate_vs_sft"] = win_rate(scores, base_scores)
        results[f"{name}_mean_true_reward"] = sum(scores) / len(scores)
        results[f"{name}_kl_to_sft"] = kl / len(prompts)
        print(name, results[f"{name}_win_rate_vs_sft"], results[f"{name}_kl_to_sft"], flush=True)

    # 3. best-of-N with the reward model, and InfAlign's calibrated tilt
    scorer = reward_model_scorer(rms["bradley_terry"], pad)
    pool = sample(ref.model, prompts, 32, seed=3, eos=eos)  # reference samples per prompt
    truth = judged(pool)
    rm_scores = [scorer([p] * len(g), g) for p, g in zip(prompts, pool)]
    for n in (1, 4, 16):
        picks = [int(s[:n].argmax()) for s in rm_scores]  # best of the first n samples
        results[f"bon{n}_win_rate_vs_sampling"] = win_rate([t[k] for t, k in zip(truth, picks)], base_scores)
        # InfAlign: tilted resampling with the calibrated reward (exp transform, t from the analytic tool) vs raw
        t, _ = best_exponent(n, kl=1.0)
        phi = exp_transform(t)
        beta = beta_for_kl(phi, 1.0)
        g = torch.Generator().manual_seed(n)
        cal_wins, raw_wins = [], []
        for s, tr, b in zip(rm_scores, truth, base_scores):
            c = calibrate(s, s)
            idx = tilted_resample(c, phi, beta, k=n, generator=g)
            cal_wins.append(max(tr[int(i)] for i in idx))
            # the raw reward's tilt exp(r / b), with b chosen so that both tilts are equally far (KL) from sampling
            raw_beta = match_kl(s.double(), empirical_kl(phi(c.double()) / beta))
            idx = tilted_resample(s, lambda u: u, raw_beta, k=n, generator=g)
            raw_wins.append(max(tr[int(i)] for i in idx))
        results[f"infalign_bon{n}_win_rate_vs_sampling"] = win_rate(cal_wins, base_scores)
        results[f"raw_tilt_bon{n}_win_rate_vs_sampling"] = win_rate(raw_wins, base_scores)
        print(n, results[f"bon{n}_win_rate_vs_sampling"], results[f"infalign_bon{n}_win_rate_vs_sampling"],
              results[f"raw_tilt_bon{n}_win_rate_vs_sampling"], flush=True)
    results["wall_s"] = round(time.time() - t0, 1)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
