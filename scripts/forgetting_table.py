"""Forgetting table: fine-tune the quickstart model on a NEW task and measure what it keeps of the old one.

New task (never in the world's corpus): every person gets a pet, asked and answered in ChatML chat turns,
user "What is the name of {person}'s pet?" -> assistant "{pet}" (pets are named after the world's cities, so
the tokens exist but the relation is new). Trained with SFT (assistant-only loss, packed conversations).

- new-task accuracy: greedy answer == the pet name followed by <|im_end|>, over all pet facts (memorisation);
- retention: recall of the original facts with the train templates (``world.probes("train")``, subsample),
  scored by the library's own :func:`lmlab.data.recall.recall` (greedy, each prompt after the BOS token the
  model was trained with, the number quickstart reports);
- time: wall-clock seconds of the fine-tuning loop only.

Methods: full fine-tuning, LoRA (r=8, all linear layers), HFT, EWC, MIGU, replay, and WiSE-FT interpolation
of the full fine-tune (alpha=0.5). Every method gets the same steps, batch and schedule (LoRA a 2.5x higher lr:
5e-3 vs 2e-3).
Usage (after ``lmlab quickstart --out runs/qs-base``; ~4 minutes on a busy 2-core machine)::

    python scripts/forgetting_table.py --base runs/qs-base/model --steps 60
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch


def read_world(world_dir: Path):
    """(people, cities, train probes) from the world files quickstart wrote next to the model, so the ground
    truth is the one the model was trained on even if the generator changes later."""
    facts = json.loads((world_dir / "facts.json").read_text())["facts"]
    people = sorted({f["subject"] for f in facts if f["relation"] == "born_in"})
    cities = sorted({f["subject"] for f in facts if f["relation"] == "city_in"})
    probes = [SimpleNamespace(prompt=r["prompt"], answer=r["answer"]) for r in
              map(json.loads, (world_dir / "probes_train.jsonl").read_text().splitlines()) if r]
    return people, cities, probes


def build_task(people, pets, seed: int = 0):
    rng = random.Random(seed)
    facts = {p: rng.choice(pets) for p in people}
    convs = [[{"role": "user", "content": f"What is the name of {p}'s pet?"},
              {"role": "assistant", "content": pet}] for p, pet in facts.items()]
    return facts, convs


@torch.no_grad()
def greedy(model, prompts: list[list[int]], max_new_tokens: int, stop: int | None = None) -> list[list[int]]:
    """Cache-free greedy decoding (full forward per token), rows of equal prompt length batched together:
    slow but independent of the KV cache, so it measures the weights only."""
    out: list[list[int] | None] = [None] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for idx in by_len.values():
        ids = torch.tensor([prompts[i] for i in idx])
        for _ in range(max_new_tokens):
            nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
        for row, i in zip(ids.tolist(), idx):
            gen = row[len(prompts[i]):]
            if stop is not None and stop in gen:
                gen = gen[:gen.index(stop) + 1]
            out[i] = gen
    return out


def recall(model, tok, probes) -> float:
    """Retention through the library's recall (BOS-prefixed prompts, as in training and in quickstart)."""
    from lmlab.data.recall import recall as library_recall

    return library_recall(model, tok, probes)


def new_task_accuracy(model, tok, facts) -> float:
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is the name of {p}'s pet?"}],
                                       add_generation_prompt=True, tokenize=True) for p in facts]
    end = tok.token_to_id("<|im_end|>")
    rows = greedy(model, prompts, 8, end)
    hits = 0
    for gen, pet in zip(rows, facts.values()):
        text = tok.decode(gen, skip_special_tokens=False)
        hits += text.startswith(pet + "<|im_end|>")
    return hits / len(facts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="runs/qs-base/model")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--retention-probes", type=int, default=400)
    ap.add_argument("--methods", default="full,lora,hft,ewc,migu,replay,wise")
    ap.add_argument("--ewc-lambda", type=float, default=1e6)
    ap.add_argument("--lora-lr", type=float, default=5e-3, help="LoRA usually wants a higher lr than full FT")
    ap.add_argument("--replay-ratio", type=float, default=0.25)
    ap.add_argument("--migu-ratio", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="runs/forgetting")
    ap.add_argument("--json", default=None, help="also write the rows and command as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import lmlab
    from lmlab.data.shards import PackedBlocks, TokenShards
    from lmlab.finetune import (EWC, MIGU, EWCConfig, HalfFineTuning, HFTConfig, MIGUConfig, RegularizedObjective,
                                SFTData, SFTObjective, fisher_diagonal, interpolate_weights,
                                mix_replay)
    from lmlab.train.config import TrainConfig
    from lmlab.train.loop import Trainer
    from lmlab.train.objectives import CausalLMObjective

    base = lmlab.load(args.base).float()
    tok = lmlab.load_tokenizer(args.base)
    people, cities, probes = read_world(Path(args.base).parent / "world")
    facts, convs = build_task(people, cities)
    probes = random.Random(0).sample(probes, min(args.retention_probes, len(probes)))
    data_rows = SFTData(convs, tok, block_size=128, seed=0)
    steps_per_epoch = max(1, len(data_rows) // args.batch_size)

    def cfg(name, lr=None):
        c = TrainConfig()
        c.data.batch_size, c.run.out_dir = args.batch_size, f"{args.work}/{name}"
        c.run.max_steps = 3 if name == "warmup" else args.steps
        c.run.device, c.run.progress, c.run.ckpt_every, c.run.eval_every = "cpu", False, 0, 0
        c.run.keep_last, c.run.log_every = 1, 1000
        c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay, c.optim.schedule = lr or args.lr, 10, 0.0, "cosine"
        return c

    import shutil
    shutil.rmtree(args.work, ignore_errors=True)
    base_retention = recall(base, tok, probes)
    base_acc = new_task_accuracy(base, tok, facts)
    rows = [("base (no fine-tuning)", 0, base_acc, base_retention, 0.0)]
    print(f"base: new-task {base_acc:.3f}, retention {base_retention:.3f}, "
          f"{len(convs)} pet facts in {len(data_rows)} packed rows ({steps_per_epoch} steps/epoch)", flush=True)
    # warm-up: the first Trainer pays one-time costs (imports, allocator); keep them out of the first row's time
    Trainer(copy.deepcopy(base).train(), cfg("warmup"), SFTData(convs, tok, block_size=128, seed=0),
            objective=SFTObjective(), progress=False).fit()
    tuned_full, full_time = None, 0.0
    for method in args.methods.split(","):
        model = copy.deepcopy(base).train()
        data = SFTData(convs, tok, block_size=128, seed=0)
        objective, extra_cleanup, label, lr, callbacks = SFTObjective(), None, method, None, []
        trainable = sum(p.numel() for p in model.parameters())
        if method == "wise":
            if tuned_full is None:
                continue
            model = copy.deepcopy(tuned_full)
            interpolate_weights(base, model, 0.5)
            acc, ret = new_task_accuracy(model, tok, facts), recall(model, tok, probes)
            rows.append(("full FT + WiSE-FT interpolation (α=0.5)", trainable, acc, ret, full_time))
            print(rows[-1], flush=True)
            continue
        if method == "full":
            label = "full fine-tuning"
        elif method == "lora":
            from lmlab.peft import LoraConfig, add_adapter, count_parameters
            add_adapter(model, LoraConfig(r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                         "gate_proj", "up_proj", "down_proj"]))
            trainable = count_parameters(model)[0]
            label, lr = f"LoRA r=8 (all linear, lr {args.lora_lr:g})", args.lora_lr
        elif method == "hft":
            hft = HalfFineTuning(HFTConfig(stage_steps=max(1, args.steps // 4), seed=0))
            callbacks = [hft]  # re-selects at the start of optimizer steps 0, k, 2k, ...
            hft.select(model, 0)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            for p in model.parameters():
                p.requires_grad_(True)  # the optimizer must hold every parameter; HFT re-freezes at step 1
            hft.stage = -1
            label = f"HFT (half frozen, redrawn every {hft.config.stage_steps} steps)"
        elif method == "ewc":
            shards = TokenShards(Path(args.base).parent / "shards", "train")
            old = PackedBlocks(shards, 128, seed=1).batches(4)
            fisher = fisher_diagonal(model, old, CausalLMObjective(), max_batches=16)
            objective = RegularizedObjective(SFTObjective(), [EWC(model, fisher, EWCConfig(lam=args.ewc_lambda))])
            label = f"EWC (λ={args.ewc_lambda:g}, Fisher of 16 old-corpus batches)"
        elif method == "migu":
            migu = MIGU(MIGUConfig(ratio=args.migu_ratio)).attach(model)
            extra_cleanup = migu.detach
            label = f"MIGU (top {args.migu_ratio:.0%} output rows)"
        elif method == "replay":
            shards = TokenShards(Path(args.base).parent / "shards", "train")
            old_rows = []
            for x, y in PackedBlocks(shards, 128, seed=2).batches(1):
                if len(old_rows) >= len(data.rows):
                    break
                old_rows.append({"input_ids": x[0], "labels": y[0], "segment_ids": torch.ones_like(x[0]),
                                 "positions": torch.arange(x.shape[1])})
            data.rows = mix_replay(data.rows, old_rows, args.replay_ratio, seed=0)
            label = f"replay ({args.replay_ratio:.0%} old-corpus blocks mixed in)"
        else:
            raise SystemExit(f"unknown method {method}")
        trainer = Trainer(model, cfg(method, lr), data, objective=objective, progress=False, callbacks=callbacks)
        t0 = time.perf_counter()
        summary = trainer.fit()
        elapsed = time.perf_counter() - t0
        if extra_cleanup:
            extra_cleanup()
        model.eval()
        acc, ret = new_task_accuracy(model, tok, facts), recall(model, tok, probes)
        if method == "full":
            tuned_full, full_time = model, elapsed
        rows.append((label, trainable, acc, ret, elapsed))
        print(rows[-1], f"final loss {summary['final_loss']:.3f}", flush=True)

    cmd = "python scripts/forgetting_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["| method | trainable params | new-task accuracy | retention (train-template recall) | fine-tune time (s) |",
             "|---|---:|---:|---:|---:|"]
    for label, n, acc, ret, t in rows:
        lines.append(f"| {label} | {n:,} | {acc:.3f} | {ret:.3f} | {t:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": cmd, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
