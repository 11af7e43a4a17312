"""``quantize(model, bits=8|4, method="rtn"|"gptq", group_size=...)``: weight-only quantization of a model.

The linear layers chosen by ``modules`` (default: every projection inside the blocks, plus the output head
when ``head=True``; embeddings and norms stay float) are replaced, by module swap, with ``QuantizedLinear``.

The output head is quantized by default (``head=True``, at ``head_bits``, default 8): at batch-1
decode on a small model it is the largest single read (GPT-2-124M: 154 MB of ~500 MB in fp32), so leaving it
float caps the speed-up. GPTQ's paper leaves it float (its models are large, the head a small share);
llama.cpp quantizes it. A head tied to the embedding table is quantized as llama.cpp does: the embedding keeps
its float table for the row lookup, the head's matmul reads the int8/int4 codes (``dequantize_model`` re-ties
it to the float table). The head stays int8 for an int4 model unless ``head_bits=4`` (llama.cpp likewise keeps
the output matrix at higher precision): on SmolLM2 an int4 head added ~12 points of perplexity to int4 RTN
(+52% vs +36%), an int8 head nothing (docs/real-model.md); an int8 head costs +0.45% there and 0% on the
world model, and GPT-2's bytes per token still allow 5.3x fp32 at the bandwidth bound (docs/claims.md).
Hooks and adapter slots registered on a swapped module move to its replacement, so hook points, LoRA and
the state-dict names of everything else are untouched.

GPTQ runs layer by layer (the paper's Sec. 4 "sequential" procedure): the calibration batch's residual stream
enters block i through the partial forward (``start_at_layer=i, stop_at_layer=i+1``), forward pre-hooks on the
block's linears accumulate each one's input Hessian, the block's linears are solved, and the block is run
again -- now quantized -- to produce the next block's input, so each layer corrects for earlier layers' error.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from lmlab.efficient.gptq import GPTQConfig, HessianAccumulator, gptq_quantize
from lmlab.efficient.quant import BITS, QuantizedLinear
from lmlab.errors import LmlabError

METHODS = ("rtn", "gptq")
DEFAULT_MODULES = r"blocks\.\d+\.(attn|mlp)\.[a-z_]+_proj"
HEAD = "lm_head"
ACTIVATION_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class QuantizationConfig:
    """What was quantized and how; saved as ``quantization_config`` in config.json.

    - ``bits``: 8 (per output channel, symmetric) or 4 (groups of ``group_size`` input columns, asymmetric).
    - ``group_size``: None = per channel (the only choice for 8 bits); 4 bits default to 128, the group size
      of GPTQ's grouping experiments (paper Sec. 5, Table 4) and of most released int4 checkpoints.
    - ``method``: "rtn" (round to nearest) or "gptq" (``damp``, ``block_size``, ``act_order``: see gptq.py).
    - ``activation_dtype``: activations are cast to it for PyTorch's packed CPU kernels, i.e. the prefill
      (bf16: the fast case); decode steps (<= 4 rows) run lmlab's GEMV kernel in fp32 (gemv_kernel.py).
    - ``modules``: regex (full match) on module names; ``quantized``: the names it matched (filled in).
    - ``head_bits``: bits of ``lm_head`` when it is quantized (``quantize`` defaults it to 8; None in a file
      means ``bits``); int8 is per channel, int4 uses ``group_size`` (128 when that is None).
    """

    bits: int = 8
    method: str = "rtn"
    group_size: int | None = None
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    activation_dtype: str = "bfloat16"
    modules: str = DEFAULT_MODULES
    quantized: tuple[str, ...] = ()
    head_bits: int | None = None

    def validate(self) -> None:
        if self.bits not in BITS:
            raise LmlabError(f"quantize: bits must be one of {BITS}, got {self.bits!r}")
        if self.head_bits is not None and self.head_bits not in BITS:
            raise LmlabError(f"quantize: head_bits must be one of {BITS} or None, got {self.head_bits!r}")
        if self.method not in METHODS:
            raise LmlabError(f"quantize: method must be one of {METHODS}, got {self.method!r}")
        if self.bits == 8 and self.group_size is not None:
            raise LmlabError(f"quantize: int8 is per output channel; group_size must be None, got {self.group_size}")
        if self.group_size is not None and not (isinstance(self.group_size, int) and self.group_size > 0):
            raise LmlabError(f"quantize: group_size must be a positive integer, got {self.group_size!r}")
        if self.activation_dtype not in ACTIVATION_DTYPES:
            raise LmlabError(f"quantize: activation_dtype must be one of {tuple(ACTIVATION_DTYPES)}, "
                             f"got {self.activation_dtype!r}")
        GPTQConfig(self.damp, self.block_size, self.act_order).validate()

    @property
    def effective_group_size(self) -> int | None:
        return 128 if self.bits == 4 and self.group_size is None else self.group_size

    def format_of(self, name: str) -> tuple[int, int | None]:
        """(bits, group size or None = per channel) of module ``name``: ``lm_head`` may differ (``head_bits``)."""
        if name != HEAD or self.head_bits is None or self.head_bits == self.bits:
            return self.bits, self.effective_group_size
        return (8, None) if self.head_bits == 8 else (4, self.group_size or 128)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["quantized"] = list(self.quantized)
        return {"quant_method": "lmlab", **out}

    @classmethod
    def from_json(cls, d: Any, where: str) -> "QuantizationConfig":
        if not isinstance(d, dict):
            raise LmlabError(f"{where}: quantization_config must be a JSON object")
        if d.get("quant_method") != "lmlab":
            raise LmlabError(f"{where}: quantization_config.quant_method {d.get('quant_method')!r} is not supported "
                             "(lmlab reads the 'lmlab' weight-only format written by `lmlab quantize`)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"quant_method"})
        if unknown:
            raise LmlabError(f"{where}: quantization_config has unknown field(s) {unknown}")
        values = {k: v for k, v in d.items() if k in known}
        if not isinstance(values.get("quantized", []), list) or not all(isinstance(n, str) for n in values.get("quantized", [])):
            raise LmlabError(f"{where}: quantization_config.quantized must be a list of module names")
        values["quantized"] = tuple(values.get("quantized", ()))
        cfg = cls(**values)
        try:
            cfg.validate()
        except LmlabError as err:
            raise LmlabError(f"{where}: {err}") from None
        return cfg


def parse_quant_case(case: str) -> tuple[int, str, int | None, dict]:
    """A quantization setting written as one token, as the benchmarks and scripts take them on the command
    line: ``BITS-METHOD[-GROUP][-h8|-h4|-nohead]`` -> ``(bits, method, group_size, extra quantize() kwargs)``;
    '4-gptq-h8' -> (4, 'gptq', 128, {'head_bits': 8}), '4-rtn-32' -> group 32, '-nohead' -> head left float."""
    parts = case.split("-")
    if len(parts) < 2 or parts[0] not in ("8", "4") or parts[1] not in ("rtn", "gptq") or not all(
            p in ("h8", "h4", "nohead") or p.isdigit() for p in parts[2:]):
        raise LmlabError(f"--cases: {case!r} is not BITS-METHOD[-GROUP][-h8|-h4|-nohead] (e.g. 4-gptq-h4)")
    bits, group, extra = int(parts[0]), 128 if parts[0] == "4" else None, {}
    for p in parts[2:]:
        if p == "nohead":
            extra["head"] = False
        elif p.startswith("h"):
            extra["head_bits"] = int(p[1:])
        else:
            group = int(p)
    return bits, parts[1], group, extra


def swap_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where ``name`` is, moving the old module's hooks and child modules (adapter slots) over."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = parent._modules[child]
    for key, sub in old._modules.items():
        if key not in new._modules:
            new.add_module(key, sub)
    new._forward_hooks, new._forward_pre_hooks = old._forward_hooks, old._forward_pre_hooks
    new.train(old.training)
    setattr(parent, child, new)
    return old


def quantizable(model: nn.Module, pattern: str) -> list[str]:
    """Names of the float linear layers ``pattern`` (regex, full match) selects."""
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise LmlabError(f"quantize: modules {pattern!r} is not a valid regex ({err})") from None
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and regex.fullmatch(n)]


def quantize(model: nn.Module, bits: int = 8, method: str = "rtn", group_size: int | None = None,
             calibration: torch.Tensor | None = None, *, damp: float = 0.01, block_size: int = 128,
             act_order: bool = False, activation_dtype: str = "bfloat16", modules: str | None = None,
             batch_size: int = 8, head: bool = True, head_bits: int | None = None) -> nn.Module:
    """Quantize ``model``'s linear layers in place and return it (``model.quantization_config`` records how).

    ``calibration`` (GPTQ only): token ids [n_samples, seq_len]; the paper uses 128 random 2048-token
    segments of C4; any text from the model's domain will do. ``batch_size`` rows are run at a time.
    ``modules`` (regex) overrides the default choice (the blocks' projections, plus ``lm_head`` if ``head``).
    """
    if modules is None:
        modules = DEFAULT_MODULES + (f"|{HEAD}" if head else "")
    head_bits = 8 if head_bits is None else head_bits
    if getattr(model, "quantization_config", None) is not None:
        raise LmlabError("quantize: the model is already quantized (dequantize_model first to re-quantize)")
    cfg = QuantizationConfig(bits=bits, method=method, group_size=group_size, damp=damp, block_size=block_size,
                             act_order=act_order, activation_dtype=activation_dtype, modules=modules,
                             head_bits=head_bits)
    cfg.validate()
    names = quantizable(model, modules)
    if not names:
        raise LmlabError(f"quantize: modules {modules!r} matches no linear layer of this model")
    act = ACTIVATION_DTYPES[activation_dtype]
    if method == "rtn":
        for name in names:
            old = model.get_submodule(name)
            swap_module(model, name, QuantizedLinear.from_linear(old, *cfg.format_of(name), act))
    else:
        _gptq_model(model, names, cfg, calibration, batch_size)
    model.quantization_config = QuantizationConfig(**{**asdict(cfg), "quantized": tuple(names)})
    return model


def _check_calibration(model: nn.Module, calibration: Any) -> torch.Tensor:
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.dtype != torch.long:
        raise LmlabError("quantize: method='gptq' needs calibration= token ids, a LongTensor [n_samples, seq_len]")
    if calibration.numel() == 0:
        raise LmlabError("quantize: calibration is empty")
    if int(calibration.max()) >= model.config.vocab_size or int(calibration.min()) < 0:
        raise LmlabError(f"quantize: calibration ids must lie in [0, {model.config.vocab_size})")
    return calibration.to(model.device)


@torch.no_grad()
def _gptq_model(model: nn.Module, names: list[str], cfg: QuantizationConfig, calibration: Any,
                batch_size: int) -> None:
    ids = _check_calibration(model, calibration)
    solver = GPTQConfig(cfg.damp, cfg.block_size, cfg.act_order)
    act = ACTIVATION_DTYPES[cfg.activation_dtype]
    chunks = [model(ids[i:i + batch_size], stop_at_layer=0) for i in range(0, len(ids), batch_size)]  # [b, T, d]
    n_layers = model.config.n_layers
    for layer in range(n_layers):
        prefix = f"blocks.{layer}."
        mine = [n for n in names if n.startswith(prefix)]
        if mine:
            accs = {n: HessianAccumulator(model.get_submodule(n).in_features) for n in mine}
            handles = [model.get_submodule(n).register_forward_pre_hook(
                lambda module, args, n=n: accs[n].add(args[0])) for n in mine]
            try:
                for x in chunks:
                    model(residual=x, start_at_layer=layer, stop_at_layer=layer + 1)
            finally:
                for h in handles:
                    h.remove()
            for n in mine:
                _gptq_swap(model, n, accs[n], cfg, solver, act)
        chunks = [model(residual=x, start_at_layer=layer, stop_at_layer=layer + 1) for x in chunks]
    if HEAD in names:  # the head's inputs: the final norm of the (quantized) stack's output
        acc = HessianAccumulator(model.get_submodule(HEAD).in_features)
        handle = model.get_submodule(HEAD).register_forward_pre_hook(lambda module, args: acc.add(args[0]))
        try:
            for x in chunks:
                model(residual=x, start_at_layer=n_layers)
        finally:
            handle.remove()
        _gptq_swap(model, HEAD, acc, cfg, solver, act)
    leftovers = [n for n in names if not n.startswith("blocks.") and n != HEAD]
    for n in leftovers:  # another linear outside the blocks (only if `modules` asks): RTN
        old = model.get_submodule(n)
        swap_module(model, n, QuantizedLinear.from_linear(old, *cfg.format_of(n), act))


def _gptq_swap(model: nn.Module, name: str, acc: HessianAccumulator, cfg: QuantizationConfig, solver: GPTQConfig,
               act: torch.dtype) -> None:
    """Solve GPTQ for linear ``name`` from its accumulated Hessian and put the quantized layer in its place."""
    old = model.get_submodule(name)
    bits, group = cfg.format_of(name)
    q, scale, zero = gptq_quantize(old.weight, acc.H, bits, group or old.in_features, solver)
    new = QuantizedLinear(old.in_features, old.out_features, bits, group, old.bias is not None, act,
                          device=old.weight.device).set_codes(q, scale, zero)
    if old.bias is not None:
        new.bias.data.copy_(old.bias.detach().float())
    swap_module(model, name, new)


def dequantize_model(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every ``QuantizedLinear`` by a float ``Linear`` holding its dequantised weight (in place).

    The explicit step before merging a LoRA trained on a quantized base (QLoRA-style) into the weights.
    """
    from lmlab.core.linear import Linear

    config = getattr(model, "config", None)
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantizedLinear) and name == HEAD and getattr(config, "tie_embeddings", False):
            new = Linear(module.in_features, module.out_features, bias=module.bias is not None,
                         device=module.scales.device, dtype=dtype or torch.float32)
            if module.bias is not None:
                with torch.no_grad():
                    new.bias.copy_(module.bias)
            swap_module(model, name, new)
            new.weight = model.embed.weight  # tied: the float table the codes came from, exactly
        elif isinstance(module, QuantizedLinear):
            w = module.dequantize()
            new = Linear(module.in_features, module.out_features, bias=module.bias is not None,
                         device=w.device, dtype=dtype or torch.float32)
            with torch.no_grad():
                new.weight.copy_(w)
                if module.bias is not None:
                    new.bias.copy_(module.bias)
            swap_module(model, name, new)
    model.quantization_config = None
    return model


def simulate_int8_activations(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Make every ``QuantizedLinear`` of ``model`` see its input as the int8-activation GEMV mode does
    (``quant.q8_0_activations``: llama.cpp's Q8_0, per 32 columns) on every row, prefill included: the
    perplexity of a sequence scored this way is what the mode costs when each token is decoded with it.
    Returns the hook handles (``handle.remove()`` undoes it)."""
    from lmlab.efficient.quant import q8_0_activations

    def hook(_module: nn.Module, args: tuple) -> tuple:
        return (q8_0_activations(args[0]).to(args[0].dtype), *args[1:])

    return [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, QuantizedLinear)]
