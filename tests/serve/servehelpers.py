"""Helpers for the server tests (a module with a unique name, so tests can import it by name)."""

from __future__ import annotations

import torch

STEER_HOOK = "blocks.1.resid_post"
STEER_COEFF = 6.0
GEDI_CODES = ("polite", "rude")  # GeDi control codes (the reference model itself is the guide)
FORBID = ("resident", "Humar")  # the "clean" guide's forbidden strings (both in the unguided replies)
WINDOW_BUDGET = 6  # the "win" KV policy keeps this many tokens: short prompts already evict


def make_adapter(directory):
    """A LoRA adapter for the reference model whose update is non-zero (B drawn at random, alpha 32)."""
    from lmlab.peft import LoraConfig, add_adapter, save_adapter
    from lmlab.reference import load_reference

    model = load_reference().model
    torch.manual_seed(0)
    add_adapter(model, LoraConfig(r=4, alpha=32.0, target_modules=["q_proj", "v_proj", "down_proj"],
                                  init_b="random"), "tone")
    return save_adapter(model, directory, "tone")


def make_steering(path, d_model: int):
    from safetensors.torch import save_file

    vec = torch.randn(d_model, generator=torch.Generator().manual_seed(3))
    save_file({"happy": vec / vec.norm() * 4.0}, str(path))
    return path


def metric(server, name: str) -> float:
    """One unlabelled sample of ``name`` from /metrics."""
    import httpx

    text = httpx.get(server.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")
