"""``Linear``: an ``nn.Linear`` whose inference path on CPU in fp32 runs oneDNN instead of the BLAS default.

Why: PyTorch's CPU build sends fp32 ``F.linear`` to MKL's sgemm. Decoding is matrix-vector work, bound by how
fast the weights stream from memory, and on the AMD EPYC hosts we measured, MKL's small-M sgemm streams them at
~10 GB/s while oneDNN's matmul (which PyTorch already uses for bf16) streams at ~20 GB/s: 1.6-3x faster for
batch 1-8 decode shapes, and 1.1-1.4x for prefill shapes (``benchmarks/linear_kernels.py``). Results differ from
``F.linear`` only in summation order (relative error ~1e-6). Decode calls (at most 4 rows) go one step further,
to lmlab's own fp32 GEMV (``lmlab.core.native``: 1.1-2.3x faster than oneDNN on the decode shapes measured).

The fast path is taken only when autograd does not need this op (``torch.no_grad``/``inference_mode``, or
nothing here requires grad), on CPU, with fp32 input and weight, outside autocast and ``torch.compile``. Any
other call -- and every call if the private oneDNN op is missing or fails its one-time self-check -- is plain
``F.linear``, so training numerics are PyTorch's own. ``FAST_INFERENCE = False`` switches the fast path off.

It stays an ``nn.Linear`` (same parameters, state-dict names, ``isinstance``), so hooks, LoRA and checkpoint
code see no difference.

``pack_for_inference(model)`` (opt-in, costs a second copy of the weights) goes one step further for decode:
it stores each weight in oneDNN's blocked layout once, instead of letting oneDNN reorder it on every call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.core import native

FAST_INFERENCE = True  # module-level switch (tests and benchmarks compare both paths)
_onednn_ok: bool | None = None  # None: not probed yet
_PLAIN = (torch.Tensor, nn.Parameter)  # not DTensor/FSDP shards, fake or meta subclasses


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _probe() -> bool:
    """Whether the private oneDNN linear op exists here and agrees with F.linear on a small problem."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=g) for s in ((3, 5, 16), (24, 16), (24,)))
        return bool(torch.allclose(_onednn_linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5))
    except Exception:  # noqa: BLE001 -- any failure means: use F.linear
        return False


def _onednn_available() -> bool:
    global _onednn_ok
    if _onednn_ok is None:
        _onednn_ok = _probe()
    return _onednn_ok


def _version(t: torch.Tensor) -> int | None:
    """The in-place-modification counter; None for inference-mode tensors, which keep none."""
    try:
        return t._version
    except RuntimeError:
        return None


def _inference_call(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether this call may skip autograd and PyTorch's dispatch: plain CPU tensors, nothing needing grad."""
    return (FAST_INFERENCE and type(x) is torch.Tensor and type(weight) in _PLAIN and x.is_cpu and weight.is_cpu
            and x.numel() > 0
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def fast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN when that is safe and faster (see the module docstring)."""
    if (x.dtype == torch.float32 and weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
            and _inference_call(x, weight, bias)):
        y = native.f32_gemv(x, weight, bias)  # decode rows (<= 4): lmlab's own GEMV, None when it does not apply
        if y is not None:
            return y
        if _onednn_available():
            return _onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` with :func:`fast_linear` as its forward, and an optional prepacked inference weight."""

    _packed: tuple[int | None, int, torch.Tensor] | None = None  # (weight._version, weight.data_ptr(), packed copy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is not None:
            version, ptr, packed = self._packed
            w, b = self.weight, self.bias
            if version != _version(w) or ptr != w.data_ptr():
                self._packed = None  # the weight changed (LoRA merge, load_state_dict, ...): drop the stale copy
            elif x.dtype == w.dtype and (b is None or b.dtype == w.dtype) and _inference_call(x, w, b):
                return _onednn_linear(x, packed, b)
        return fast_linear(x, self.weight, self.bias)

    def decode_args(self, x: torch.Tensor) -> tuple | None:
        """(kind, group, tensors) of this layer for lmlab's one-call decode layer (``native.decode_layer``): kind 0
        (fp32), ``[weight, bias or native.NO_TENSOR]``; None unless a plain fp32 layer (no hooks, adapter slots
        or packed copy) on an inference call that the fast path would take."""
        w, b = self.weight, self.bias
        if (type(self) is not Linear or self._modules or self._packed is not None or self._forward_hooks
                or self._forward_pre_hooks or w.dtype != torch.float32 or not w.is_contiguous()
                or (b is not None and (b.dtype != torch.float32 or not b.is_contiguous()))
                or not _inference_call(x, w, b)):
            return None
        return 0, 0, [w, native.NO_TENSOR if b is None else b]

    def __getstate__(self) -> dict:  # copies and pickles never carry the packed (opaque oneDNN) tensor
        state = dict(super().__getstate__())  # a copy: the default returns the live __dict__
        state.pop("_packed", None)
        return state


def pack_for_inference(model: nn.Module, batch_hint: int = 1) -> int:
    """Give every fp32/bf16 CPU ``Linear`` of ``model`` a oneDNN-prepacked copy of its weight; returns bytes added.

    Why: bf16 matmul kernels want the weight in a blocked (VNNI) layout; with a plain weight oneDNN reorders it
    on every call. Prepacked, bf16 decode streams weights ~1.3x faster at batch 1 and ~2x at batch 8 on the
    machine of BENCHMARKS.md (fp32: ~1.2x at batch 8). The cost is a second copy of each weight, so this is
    opt-in. The copy is used only on inference calls, and dropped as soon as the weight changes in place
    (weights made under ``torch.inference_mode`` are first given a version counter, so this holds for them too:
    see :func:`give_version_counters`).
    """
    if not _onednn_available():
        return 0
    targets = [m for m in model.modules() if isinstance(m, Linear) and type(m.weight) in _PLAIN and m.weight.is_cpu
               and m.weight.dtype in (torch.float32, torch.bfloat16) and packing_supported(m.weight.dtype)]
    give_version_counters(model, [m.weight for m in targets])
    added = 0
    for module in targets:
        w = module.weight
        packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch_hint)
        module._packed = (_version(w), w.data_ptr(), packed)
        added += w.numel() * w.element_size()
    return added


_PACKABLE: dict[torch.dtype, bool] = {}  # dtype -> this CPU's oneDNN can prepack it (probed once per process)


def packing_supported(dtype: torch.dtype) -> bool:
    """Whether oneDNN can prepack weights of ``dtype`` on this CPU. bf16 packing needs AVX-512 (BW/VL/DQ) or
    AVX-NE-CONVERT: on a CPU without them PyTorch raises, and ``pack_for_inference`` leaves those weights as
    they are (they still run, unpacked)."""
    if dtype not in _PACKABLE:
        try:
            torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), 1)
            _PACKABLE[dtype] = True
        except (RuntimeError, AttributeError):
            _PACKABLE[dtype] = False
    return _PACKABLE[dtype]


def give_version_counters(model: nn.Module, weights: list[torch.Tensor]) -> int:
    """Replace each inference-mode tensor among ``weights`` by a normal Parameter with the same values, in every
    module of ``model`` that holds it (tied weights stay tied); returns how many were replaced.

    Why: a tensor created under ``torch.inference_mode`` keeps no version counter, so an in-place change of it
    (an edit, a merged LoRA, ``load_state_dict``) could not be noticed and a packed copy would keep serving
    the old weight. A normal tensor's counter is bumped by every in-place write, inside inference mode too.
    The swap costs one transient copy per weight; code holding the old Parameter object keeps the old one.
    """
    fresh: dict[int, nn.Parameter] = {}
    for w in weights:
        if id(w) not in fresh and _version(w) is None:
            with torch.inference_mode(False):
                fresh[id(w)] = nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)
    if fresh:
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None and id(p) in fresh:
                    module._parameters[name] = fresh[id(p)]
    return len(fresh)


def unpack(model: nn.Module) -> None:
    """Drop every prepacked copy made by :func:`pack_for_inference`."""
    for module in model.modules():
        if isinstance(module, Linear):
            module._packed = None


class FusedProjections:
    """One GEMV instead of several for projections that read the same input (q/k/v, gate/up) at inference.

    Why: a batch-1 decode step is dominated by per-call overhead on small models (SmolLM2: 30 layers, 211 linear
    calls per token, each ~30 us of fixed cost through oneDNN on this project's CPU). The modules stay as they
    are (state-dict names, hooks, LoRA, editing see no difference); this object keeps a concatenated copy of
    their weights, used only when every module is a plain :class:`Linear` (no hooks, no adapter slots, no packed
    copy), nothing needs autograd and ``FAST_INFERENCE`` is on. The copy is rebuilt whenever any weight or bias
    is replaced, re-pointed or changed in place (identity, data pointer and version counter are compared on every
    call); tensors without a version counter (made under ``torch.inference_mode``) are never fused, since an
    in-place change to them could not be seen. Costs one extra copy of those weights.
    """

    def __init__(self) -> None:
        # (keys, weight, bias, sizes, fast check) -- see _rebuild and _still_valid
        self._cache: tuple[list, torch.Tensor, torch.Tensor | None, list[int], tuple] | None = None

    def __call__(self, x: torch.Tensor, modules: list[nn.Module]) -> list[torch.Tensor] | None:
        """The outputs [..., out_features] of ``modules`` on ``x``, or None when the fused path does not apply."""
        kind = type(modules[0])
        if kind is not Linear and hasattr(kind, "fused_inference"):  # a layer type with its own fused path
            return kind.fused_inference(self, x, modules)  # (lmlab.efficient's QuantizedLinear, at decode)
        fused = self.weights(x, modules)
        if fused is None:
            return None
        weight, bias, sizes = fused
        y = native.f32_gemv(x, weight, bias) if x.dtype == torch.float32 else None  # decode rows: the kernel
        if y is None:
            y = fast_linear(x, weight, bias)
        return list(y.split(sizes, dim=-1))

    def weights(self, x: torch.Tensor, modules: list[nn.Module]) -> tuple | None:
        """(weight [sum N, K], bias or None, sizes) of the concatenated plain ``Linear`` modules, current and
        valid for an inference call on ``x``; None when the fused path does not apply."""
        if not FAST_INFERENCE or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return None
        cache = self._cache
        if cache is None or not self._still_valid(cache[4], modules):
            cache = self._rebuild(x, modules)
            if cache is None:
                return None
        _, weight, bias, sizes, _ = cache
        if x.dtype != weight.dtype or not _inference_call(x, weight, bias):
            return None
        return weight, bias, sizes

    def decode_args(self, x: torch.Tensor, modules: list[nn.Module]) -> tuple | None:
        """(kind, group, tensors) of the concatenated projection for lmlab's one-call decode layer (see
        ``Linear.decode_args``; a layer type with its own fused path, e.g. int4 ``QuantizedLinear``, gives its
        own), or None when the fused path does not apply."""
        kind = type(modules[0])
        if kind is not Linear:
            own = getattr(kind, "fused_decode_args", None)
            return None if own is None else own(self, x, modules)
        fused = self.weights(x, modules)
        if fused is None or fused[0].dtype != torch.float32 or not fused[0].is_contiguous():
            return None
        weight, bias, _ = fused
        return 0, 0, [weight, native.NO_TENSOR if bias is None else bias]

    @staticmethod
    def _still_valid(check: tuple, modules: list[nn.Module]) -> bool:
        """The cached copy still stands for ``modules``: the same plain modules (no hooks, adapter slots or packed
        copy), each weight and bias the same tensor, storage and version, and autograd not needing them. A few
        dozen attribute reads per call, instead of rebuilding the tensor list and its keys (decode calls this
        twice a layer)."""
        mods, watched, needs_grad = check
        if len(modules) != len(mods) or (needs_grad and torch.is_grad_enabled()):
            return False
        for m, n in zip(modules, mods):
            if m is not n or m._forward_hooks or m._forward_pre_hooks or m._modules or m._packed is not None:
                return False
        for owner, name, t, ptr, version in watched:
            if owner.get(name) is not t or t.data_ptr() != ptr or t._version != version:
                return False
        return True

    def _rebuild(self, x: torch.Tensor, modules: list[nn.Module]):
        """Check every module in full and (re)build the concatenated copy when a weight changed; None when the
        fused path does not apply to this call."""
        tensors = []
        for m in modules:
            if type(m) is not Linear or m._forward_hooks or m._forward_pre_hooks or m._modules or m._packed is not None:
                return None
            tensors.append(m.weight)
            if m.bias is not None:
                tensors.append(m.bias)
        if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in tensors)):
            return None
        cache = self._cache
        if cache is None or len(cache[0]) != len(tensors) or not all(
                t is s and t.data_ptr() == p and _version(t) == v for t, (s, p, v) in zip(tensors, cache[0])):
            cache = self._build(modules, tensors)
            if cache is None:
                return None
        watched = tuple((m._parameters, name, m._parameters[name], m._parameters[name].data_ptr(),
                         m._parameters[name]._version) for m in modules for name in ("weight", "bias")
                        if m._parameters.get(name) is not None)
        check = (tuple(modules), watched, any(t.requires_grad for t in tensors))
        self._cache = cache[:4] + (check,)
        return self._cache

    def _build(self, modules: list[nn.Module], tensors: list[torch.Tensor]):
        self._cache = None
        has_bias = [m.bias is not None for m in modules]
        if any(_version(t) is None for t in tensors) or len(set(has_bias)) > 1 or len(
                {(m.weight.dtype, m.weight.device, m.in_features) for m in modules}) > 1:
            return None
        with torch.no_grad():
            weight = torch.cat([m.weight.detach() for m in modules])  # [sum N, K]
            bias = torch.cat([m.bias.detach() for m in modules]) if has_bias[0] else None
        self._cache = ([(t, t.data_ptr(), _version(t)) for t in tensors], weight, bias,
                       [m.out_features for m in modules])
        return self._cache

    def __getstate__(self) -> dict:  # copies and pickles never carry the fused copy
        return {"_cache": None}
