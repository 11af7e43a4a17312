"""Why a locate-then-edit method does or does not write a fact: ROME's target-vector search per layer.

For one counterfactual request of the world (``world_edits(world, n, seed)[index]``) and each layer, runs ROME's
v* optimisation (``lmlab.edit.locate.optimise_target`` at ``blocks.{l}.mlp.out``, the subject's last token, the
bare prompt) at the paper's settings (20 Adam steps, lr 0.5, weight decay 0.5, KL 0.0625, ``|delta| <= 4 |v|``)
and once with the norm clamp lifted and more steps, and prints the initial MLP-output norm ``|v|``, the final
``|delta|`` (``= 4 |v|`` when the clamp binds) and the target NLL reached. If the NLL at the paper's settings
stays high, no rank-one update built from that v* can make the target the model's answer.

    python scripts/edit_diagnose.py --model world-llama-2m-1k --index 2
    python scripts/edit_diagnose.py --model world-llama-2m-1k --ratio --n 10 --layers 0 1   # eq. 2's share of delta

``--ratio``: for each of the ``n`` requests, the share ``(C^-1 k*)^T k / (C^-1 k*)^T k*`` of ROME's delta that the
eq.-2 update (prefix-averaged ``k*``) delivers at the bare prompt's key ``k``, and cos(k*, k).
"""

from __future__ import annotations

import argparse

import torch

from lmlab.edit.evaluate import world_edits
from lmlab.edit.locate import TargetSettings, optimise_target
from lmlab.reference import load_reference


def print_ratios(model, tok, world, args) -> None:
    from lmlab.edit.locate import context_templates, mean_keys
    from lmlab.edit.stats import second_moments

    layers = args.layers if args.layers else [1]
    stats = second_moments(model, tok, layers, world.training_documents(), 100000, stats_dir=False)
    groups = context_templates(model, tok, ((5, 10), (10, 10)), 0)
    flat = [[t for g in groups for t in g]]
    print("| layer | request | share of delta at the prompt | cos(k*, k) |")
    print("|---|---|---|---|")
    for layer in layers:
        for e in world_edits(world, args.n, seed=args.seed):
            k_star = mean_keys(model, tok, [e.request], layer, flat)[0]
            k = mean_keys(model, tok, [e.request], layer, [["{}"]])[0]
            u = torch.linalg.solve(stats[layer], k_star)
            cos = float(torch.nn.functional.cosine_similarity(k_star, k, dim=0))
            print(f"| {layer} | {e.request.text!r} | {float(u @ k / (u @ k_star)):.3f} | {cos:.3f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="reference model name (default: lmlab.reference's default)")
    p.add_argument("--n", type=int, default=3, help="world_edits(world, n, seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index", type=int, default=2, help="which of the n requests")
    p.add_argument("--layers", type=int, nargs="*", default=None, help="default: every layer")
    p.add_argument("--long-steps", type=int, default=100, help="steps of the unclamped run")
    p.add_argument("--ratio", action="store_true", help="print eq. 2's delivered share of delta per request instead")
    args = p.parse_args()
    torch.set_num_threads(1)
    ref = load_reference(args.model) if args.model else load_reference()
    model, tok = ref.model, ref.tokenizer
    model.eval()
    if args.ratio:
        return print_ratios(model, tok, ref.world, args)
    req = world_edits(ref.world, args.n, seed=args.seed)[args.index].request
    print(f"request: {req.text!r} -> {req.target_text!r}")
    print("| layer | settings | steps | init norm | delta norm | delta / init | target NLL |")
    print("|---|---|---|---|---|---|---|")
    layers = args.layers if args.layers is not None else range(model.config.n_layers)
    for layer in layers:
        for name, steps, clamp in (("paper (clamp 4)", 20, 4.0), ("no clamp", args.long_steps, 1e9)):
            init, delta, log = optimise_target(model, tok, req, f"blocks.{layer}.mlp.out", [["{}"]],
                                               TargetSettings(steps, 0.5, 0.5, clamp, 0.0625))
            ratio = float(delta.norm() / init.norm())
            print(f"| {layer} | {name} | {log['steps']} | {float(init.norm()):.1f} | {float(delta.norm()):.1f} | "
                  f"{ratio:.2f} | {log['nll']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
