"""Weight-only integer quantization of one linear layer: the number formats, and ``QuantizedLinear``.

Formats (codes ``q``, per-group ``scale`` and integer ``zero``; ``w ~= (q - zero) * scale``):

- int8, per output channel, symmetric: ``scale = max|w_row| / 127``, ``q`` in [-127, 127], ``zero = 0``
  (LLM.int8()'s "vector-wise" weight quantization without the outlier part; the format PyTorch's
  ``_weight_int8pack_mm`` CPU kernel reads).
- int4, groups of ``group_size`` input columns, asymmetric min-max including 0 (GPTQ's quantizer,
  Frantar et al. 2023, ``sym=False``): ``scale = (max - min) / 15``, ``zero = round(-min / scale)``, ``q`` in
  [0, 15]. The last group may be shorter when ``group_size`` does not divide the input size.

Round-to-nearest puts every weight within ``scale / 2`` of its dequantised value (the range always covers
the group, and rounding the zero point moves the grid by at most half a step, which the clamp absorbs).

Why a module of its own rather than a flag on ``Linear``: the parameters differ in kind (int8 / packed
uint8 buffers instead of a float weight), the state dict names differ (``qweight``, ``scales``, ``qzeros``),
and code that expects ``module.weight`` to be a float matrix (LoRA merging, editing) must fail loudly
rather than silently edit codes: ``dequantize_model`` turns it back into a ``Linear`` first.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError

BITS = (8, 4)
INT4_KERNEL_GROUPS = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts
# torch 2.13's _weight_int8pack_mm uses aligned loads on AVX-512 CPUs and crashes (SIGSEGV) on a weight row that
# does not start on a 16-byte boundary (every K % 16 == 8 tried, 8..264, at 1 and 6 rows; a checkpoint's tensor
# memory-mapped at an odd offset) or on activations not 64-byte aligned (offsets of 1, 8 and 16 bytes crashed).
# So its weight is padded to a multiple of 16 columns and copied when misaligned, and its input copied likewise.
INT8_KERNEL_K_MULTIPLE = 16
KERNEL_ALIGNMENT = 64  # bytes: what PyTorch's CPU allocator gives a fresh tensor
FAST_KERNELS = True  # module-level switch: tests compare the packed kernels against the dequantised matmul
USE_GEMV = True  # module-level switch: lmlab's own batch-1 kernel (gemv_kernel.py) for M <= GEMV_MAX_ROWS rows
_FAST_DTYPES = (torch.float32, torch.bfloat16)
GEMV_MAX_ROWS = 4  # crossover to PyTorch's packed kernels, measured (docs/efficient.md; linear_kernels.py --quant)
# Activations of the batch-1 kernel: "fp32" (exact up to fp32 rounding) or "int8" (llama.cpp's Q8_0: each row
# quantized per 32 columns, integer dot products; see ``q8_0_activations``). None: $LMLAB_GEMV_ACT, else
# DEFAULT_GEMV_ACTIVATIONS. int8 is the default because its perplexity cost measured < 0.5% on the world
# reference and on SmolLM2 (-0.26% .. +0.01%, docs/claims.md, session 7) and it decodes faster.
GEMV_ACTIVATIONS: str | None = None
GEMV_ACTIVATION_MODES = ("fp32", "int8")
DEFAULT_GEMV_ACTIVATIONS = "int8"
ENV_GEMV_ACTIVATIONS = "LMLAB_GEMV_ACT"
Q8_BLOCK = 32  # columns per activation scale in the int8-activation mode (Q8_0)
# int4 prefill in the int8-activation mode: up to this many rows run lmlab's kernel over blocks of 4 rows instead
# of _weight_int4pack_mm_for_cpu (measured at 64 rows, one busy core, GPT-2 shapes: 1.0-2.0x faster; fp32
# activations over row blocks only tied PyTorch's kernel, so that mode keeps it; session 7, docs/efficient.md)
GEMV_PREFILL_MAX_ROWS = 64


def gemv_activations() -> str:
    """The batch-1 kernel's activation mode: ``GEMV_ACTIVATIONS`` if set, else $LMLAB_GEMV_ACT, else the default."""
    mode = GEMV_ACTIVATIONS if GEMV_ACTIVATIONS is not None else (
        os.environ.get(ENV_GEMV_ACTIVATIONS) or DEFAULT_GEMV_ACTIVATIONS)
    if mode not in GEMV_ACTIVATION_MODES:
        source = "quant.GEMV_ACTIVATIONS" if GEMV_ACTIVATIONS is not None else f"${ENV_GEMV_ACTIVATIONS}"
        raise LmlabError(f"{source} must be one of {'|'.join(GEMV_ACTIVATION_MODES)}, got {mode!r}")
    return mode


_ENV_DATA = getattr(os.environ, "_data", None)  # CPython's dict behind os.environ (keys encoded), if it has one
_ENV_KEY = os.environ.encodekey(ENV_GEMV_ACTIVATIONS) if hasattr(os.environ, "encodekey") else None


def _environment_mode() -> object:
    """$LMLAB_GEMV_ACT as stored (unchecked, possibly bytes), for the decode plan's cache key only.

    ``os.environ.get`` costs ~2 us when the variable is unset (it raises and catches KeyError inside), and the
    plan is looked up on every decode call of every layer; the mapping's own dict answers in ~0.1 us and sees
    every change made through ``os.environ`` (monkeypatch.setenv included)."""
    if _ENV_DATA is None or _ENV_KEY is None or os.environ.__dict__.get("_data") is not _ENV_DATA:
        return os.environ.get(ENV_GEMV_ACTIVATIONS)
    return _ENV_DATA.get(_ENV_KEY)


def q8_0_activations(x: torch.Tensor) -> torch.Tensor:
    """What the int8-activation kernel multiplies by: ``x`` [..., K] float32 quantized per block of 32 columns
    as llama.cpp's Q8_0 does (``d = max|x_block| / 127``, ``xq = round(x / d)`` with ties to even, clamped to
    [-127, 127], 0 where the block is all zero) and dequantized back, ``d * xq``, in float32. The rounding
    moves each element by at most ``d / 2 = max|x_block| / 254``. The torch reference of the kernel's
    arithmetic (tests; perplexity of the mode over whole sequences)."""
    K = x.shape[-1]
    pad = -K % Q8_BLOCK
    xb = F.pad(x.float(), (0, pad)).reshape(*x.shape[:-1], -1, Q8_BLOCK)  # [..., K/32, 32]
    d = xb.abs().amax(dim=-1, keepdim=True) / 127  # [..., K/32, 1]
    xq = torch.where(d > 0, torch.round(xb / torch.where(d > 0, d, 1)), 0).clamp(-127, 127)
    return (xq * d).flatten(-2)[..., :K]


def qrange(bits: int) -> tuple[int, int]:
    """(lowest, highest) integer code."""
    return (-127, 127) if bits == 8 else (0, 15)


def n_groups(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)


def find_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scale, zero [N, 1] for the columns ``w`` [N, g] of one group (per row)."""
    w = w.float()
    if bits == 8:
        amax = w.abs().amax(dim=1, keepdim=True)
        scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
        return scale, torch.zeros_like(scale)
    lo = w.amin(dim=1, keepdim=True).clamp(max=0)
    hi = w.amax(dim=1, keepdim=True).clamp(min=0)
    empty = (lo == 0) & (hi == 0)  # GPTQ's quantizer: an all-zero row gets the range [-1, 1]
    lo, hi = torch.where(empty, -torch.ones_like(lo), lo), torch.where(empty, torch.ones_like(hi), hi)
    scale = (hi - lo) / 15
    return scale, torch.round(-lo / scale)


def quantize_columns(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes (as float) of ``w`` [N, c] with one scale/zero [N, 1] per row."""
    lo, hi = qrange(bits)
    return (torch.round(w.float() / scale) + zero).clamp(lo, hi)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """float32 [N, K] from codes [N, K] and per-group scale/zero [N, n_groups]."""
    K = q.shape[1]
    s = scale.float().repeat_interleave(group_size, dim=1)[:, :K]  # [N, K]
    z = zero.float().repeat_interleave(group_size, dim=1)[:, :K]
    return (q.float() - z) * s


def rtn(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest: (codes [N, K], scale [N, G], zero [N, G]) for weight ``w`` [N, K]."""
    K = w.shape[1]
    codes, scales, zeros = [], [], []
    for start in range(0, K, group_size):
        cols = w[:, start:start + group_size]
        scale, zero = find_params(cols, bits)
        codes.append(quantize_columns(cols, scale, zero, bits))
        scales.append(scale)
        zeros.append(zero)
    return torch.cat(codes, 1), torch.cat(scales, 1), torch.cat(zeros, 1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 [N, ceil(K/2)] from codes [N, K] in [0, 15]: column 2j in the low nibble, 2j+1 in the high one."""
    q = q.to(torch.uint8)
    if q.shape[1] % 2:
        q = F.pad(q, (0, 1))
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor, K: int) -> torch.Tensor:
    """Codes [N, K] (uint8) from ``pack_int4``'s output."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(1)[:, :K]


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is stored as int8 / int4 codes with float scales; bias stays float.

    Buffers (the state dict): ``qweight`` (int8 [N, K] for 8 bits; uint8 [N, ceil(K/2)], two codes a byte,
    for 4 bits), ``scales`` float32 [N, n_groups], ``qzeros`` uint8 [N, n_groups] (4 bits only).

    Forward, on CPU when autograd does not need the weight path:

    - at most ``GEMV_MAX_ROWS`` rows (decode): lmlab's own AVX2 kernel (``gemv_kernel``), reading the
      buffers in place (int4: group sizes that are multiples of 32). Activations per ``gemv_activations()``:
      "fp32" computes ``x @ dequantize().T`` up to fp32 rounding; "int8" computes
      ``q8_0_activations(x) @ dequantize().T`` (llama.cpp's Q8_0: x rounded to int8 per 32 columns with
      scale ``d = max|x_block| / 127``, exact integer dot products, fp32 scaling), so each output moves from
      the fp32 mode's by at most ``sum_k |w_k| max|x_block(k)| / 254`` (plus fp32 rounding);
    - int4 with int8 activations, up to ``GEMV_PREFILL_MAX_ROWS`` rows (short prefills): the same kernel over
      blocks of 4 rows (faster than PyTorch's int4 kernel there, measured);
    - more rows (prefill), or where that kernel cannot run: ``torch._weight_int8pack_mm`` /
      ``torch._weight_int4pack_mm_for_cpu`` with activations cast to ``activation_dtype`` (bf16 by default:
      the int8 kernel streams ~10x faster with bf16 than with fp32 activations, PERF_NOTES.md).

    Otherwise (training LoRA on top, odd shapes, other devices) the matmul runs against the dequantised
    weight, so gradients reach the input and the adapters.
    """

    weight_only_quantized = True  # read by lmlab.peft (LoRA targets it; merging refuses it)

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None, bias: bool,
                 activation_dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None) -> None:
        super().__init__()
        if bits not in BITS:
            raise LmlabError(f"bits must be one of {BITS}, got {bits!r}")
        group_size = in_features if group_size is None else group_size
        if bits == 8 and group_size != in_features:
            raise LmlabError(f"int8 is per output channel: group_size must be None, got {group_size}")
        if not (isinstance(group_size, int) and group_size > 0):
            raise LmlabError(f"group_size must be a positive integer, got {group_size!r}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.activation_dtype = bits, group_size, activation_dtype
        g = n_groups(in_features, group_size)
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
            self.qzeros = None
        else:
            self.register_buffer("qweight", torch.zeros(out_features, -(-in_features // 2), dtype=torch.uint8,
                                                        device=device))
            self.register_buffer("qzeros", torch.zeros(out_features, g, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, g, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None
        self._kernel: tuple | None = None  # (key, packed weight, scales) for the CPU kernel, built on first use
        self._gemv: tuple | None = None  # (key, kernel name or None, its weight arguments): the decode plan

    # -- building ----------------------------------------------------------------------------------------
    def set_codes(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> "QuantizedLinear":
        """Store codes [N, K], scale and zero [N, n_groups] (from ``rtn`` or GPTQ)."""
        with torch.no_grad():
            if self.bits == 8:
                self.qweight.copy_(q.to(torch.int8))
            else:
                self.qweight.copy_(pack_int4(q))
                self.qzeros.copy_(zero.to(torch.uint8))
            self.scales.copy_(scale.float())
        self._kernel = None
        self._gemv = None
        return self

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None,
                    activation_dtype: torch.dtype = torch.bfloat16) -> "QuantizedLinear":
        """Round-to-nearest quantization of ``linear``."""
        new = cls(linear.in_features, linear.out_features, bits, group_size, linear.bias is not None,
                  activation_dtype, device=linear.weight.device)
        new.set_codes(*rtn(linear.weight.detach(), bits, new.group_size))
        if linear.bias is not None:
            new.bias.data.copy_(linear.bias.detach().float())
        return new

    # -- reading -----------------------------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        """Integer codes [N, K] (int8 for 8 bits, uint8 for 4)."""
        return self.qweight if self.bits == 8 else unpack_int4(self.qweight, self.in_features)

    def zeros(self) -> torch.Tensor:
        return torch.zeros_like(self.scales) if self.bits == 8 else self.qzeros.float()

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] the codes stand for."""
        return dequantize_codes(self.codes(), self.scales, self.zeros(), self.group_size)

    def kernel_supported(self) -> bool:
        """Whether PyTorch's packed CPU kernel can run this layer (int4: any shape whose group size the kernel
        knows; rows are padded to a multiple of 16 and input columns to a whole group when packing)."""
        return self.bits == 8 or self.group_size in INT4_KERNEL_GROUPS

    def gemv_supported(self) -> bool:
        """Whether lmlab's batch-1 kernel can run this layer (int4: group sizes that are multiples of 32;
        float32 scales and bias, i.e. the model was not cast to another dtype; CPU; contiguous codes)."""
        return self._gemv_plan()[1] is not None

    def _gemv_plan(self) -> tuple:
        """(key, name of the gemv_kernel function or None, its weight arguments, the gemv_kernel module or None),
        cached: decode calls every layer once per token, so the checks run once, not per call (they cost ~15 us
        a call in Python). The key is cheap to rebuild (no validation, no import): the switches as set, the
        environment's mode, and the identity of the buffers' storage."""
        buffers = self._buffers  # direct dict access: nn.Module attribute lookup is slow on a hot path
        qweight, scales, bias = buffers["qweight"], buffers["scales"], self._parameters.get("bias")
        # a bias that trains is added outside the kernel (which has no autograd), so its gradient flows; with
        # grad mode off (generate) no gradient can flow, so the kernel adds it: one aten::add less per layer
        trains = bias is not None and bias.requires_grad and torch.is_grad_enabled()
        key = (USE_GEMV, GEMV_ACTIVATIONS, _environment_mode(), DEFAULT_GEMV_ACTIVATIONS, qweight.data_ptr(), scales.data_ptr(), scales.dtype,
               None if bias is None else (bias.data_ptr(), trains))
        plan = self._gemv
        if plan is None or plan[0] != key:
            from lmlab.efficient import gemv_kernel

            suffix = "_a8" if gemv_activations() == "int8" else ""  # validates the mode (one-line error)
            ok = (USE_GEMV and (self.bits == 8 or self.group_size % gemv_kernel.INT4_GROUP_MULTIPLE == 0)
                  and qweight.is_cpu and qweight.is_contiguous() and scales.dtype == torch.float32
                  and (bias is None or bias.dtype == torch.float32) and gemv_kernel.available())
            in_kernel = None if bias is None or trains or not bias.is_contiguous() else bias
            if not ok:
                plan = (key, None, (), None)
            else:
                name = ("int8_gemv" if self.bits == 8 else "int4_gemv") + suffix
                args = ((qweight, scales, in_kernel) if self.bits == 8
                        else (qweight, scales, buffers["qzeros"], self.group_size, in_kernel))
                plan = (key, name, args, gemv_kernel)  # the module: its function is looked up per call (tests patch it)
            self._gemv = plan
        return plan

    def _padded_k(self) -> int:
        """Input columns PyTorch's kernel sees: int4, ``in_features`` rounded up to a whole group; int8, to a
        multiple of ``INT8_KERNEL_K_MULTIPLE`` (zero weight columns meet zero activations)."""
        if self.bits == 8:
            return -(-self.in_features // INT8_KERNEL_K_MULTIPLE) * INT8_KERNEL_K_MULTIPLE
        return n_groups(self.in_features, self.group_size) * self.group_size

    # -- computing ---------------------------------------------------------------------------------------
    def _kernel_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = (self.qweight.data_ptr(), self.scales.data_ptr(), self.activation_dtype)
        if self._kernel is None or self._kernel[0] != key:
            if self.bits == 8:
                pad = self._padded_k() - self.in_features
                packed = self.qweight  # [N, K]: a copy only where the kernel needs one (INT8_KERNEL_K_MULTIPLE)
                if pad or packed.data_ptr() % KERNEL_ALIGNMENT:
                    packed = F.pad(packed, (0, pad))  # a fresh, aligned [N, Kp]
                scales = self.scales[:, 0].to(self.activation_dtype)  # [N]
            else:
                # the kernel wants N % 16 == 0 and K a whole number of groups: pad with zero-scale rows and
                # columns (a padded row computes 0 and is sliced off; padded columns meet zero activations)
                N, K = self.out_features, self.in_features
                Np, Kp = -(-N // 16) * 16, self._padded_k()
                q = F.pad(self.codes().to(torch.int32), (0, Kp - K, 0, Np - N))  # [Np, Kp]
                packed = torch._convert_weight_to_int4pack_for_cpu(q, 8)
                # the kernel computes (q - 8) * scale + zero_f, so zero_f = (8 - zero) * scale
                zero_f = (8 - self.qzeros.float()) * self.scales  # [N, G]
                scales = torch.stack((self.scales, zero_f), dim=-1)  # [N, G, 2]
                scales = F.pad(scales, (0, 0, 0, 0, 0, Np - N)).transpose(0, 1).contiguous()  # [G, Np, 2]
                scales = scales.to(self.activation_dtype)
            self._kernel = (key, packed, scales)
        return self._kernel[1], self._kernel[2]

    def _use_kernel(self, x: torch.Tensor) -> bool:
        return (FAST_KERNELS and x.is_cpu and x.numel() > 0 and x.dtype in _FAST_DTYPES
                and not (x.requires_grad and torch.is_grad_enabled())
                and self._buffers["qweight"].is_cpu and not torch.compiler.is_compiling())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self._use_kernel(x)
        K = self.in_features
        rows = x.numel() // K
        if fast and (rows <= GEMV_MAX_ROWS or (self.bits == 4 and rows <= GEMV_PREFILL_MAX_ROWS)):
            _, name, args, module = self._gemv_plan()
            if module is not None and (rows <= GEMV_MAX_ROWS or name == "int4_gemv_a8"):
                kernel = getattr(module, name)
                # decode's hot path (~75 calls a token on GPT-2): no op that would return its input (a same-dtype
                # .to, a contiguous tensor's .contiguous) is dispatched, each costs ~2 us through aten
                xf = x.reshape(rows, K)  # [M, K]
                if xf.dtype != torch.float32:
                    xf = xf.float()
                if not xf.is_contiguous():
                    xf = xf.contiguous()
                if rows <= GEMV_MAX_ROWS:
                    y = kernel(xf, *args)  # [M, N], bias added unless it trains
                else:  # int4 prefill, int8 activations: the kernel over blocks of GEMV_MAX_ROWS rows
                    y = torch.cat([kernel(xf[i:i + GEMV_MAX_ROWS], *args) for i in range(0, rows, GEMV_MAX_ROWS)])
                if args[-1] is None:
                    bias = self._parameters.get("bias")
                    if bias is not None:
                        y = y + bias
                if y.dtype != x.dtype:
                    y = y.to(x.dtype)
                return y.view(*x.shape[:-1], self.out_features)
        if fast and self.kernel_supported():
            packed, scales = self._kernel_tensors()
            x2 = x.reshape(-1, self.in_features).to(self.activation_dtype)  # [M, K]
            if self._padded_k() != self.in_features or x2.data_ptr() % KERNEL_ALIGNMENT or not x2.is_contiguous():
                x2 = F.pad(x2, (0, self._padded_k() - self.in_features))  # a fresh, aligned [M, Kp]
            if self.bits == 8:
                y = torch._weight_int8pack_mm(x2, packed, scales)  # [M, N]
            else:
                y = torch._weight_int4pack_mm_for_cpu(x2, packed, self.group_size, scales)[:, :self.out_features]
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        w = self.dequantize().to(x.dtype)  # [N, K]
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    @staticmethod
    def fused_inference(holder: object, x: torch.Tensor, modules: list[nn.Module]) -> list[torch.Tensor] | None:
        """The outputs [..., out_i] of several layers that read the same input (q/k/v, gate/up) from one kernel
        call, or None where that does not apply (called by ``lmlab.core.linear.FusedProjections``).

        Why: a decode step calls ~75 quantized layers on GPT-2, each with a fixed cost in Python and in the
        kernel's thread fork/join; one call for q, k and v removes two of every seven per block. It applies at
        decode (at most ``GEMV_MAX_ROWS`` rows) when every module is a plain ``QuantizedLinear`` (no hooks, no
        adapters) of one int4 format on lmlab's kernel with its bias inside. ``holder`` keeps the concatenated codes,
        scales, zero points and biases (one extra copy of these layers' buffers), rebuilt whenever a module's plan
        or any buffer's identity, storage or in-place version changes; buffers without a version counter (made
        under ``torch.inference_mode``) are never fused. Each output row is the kernel's independent dot product
        over the same (possibly Q8_0-rounded) input, so the results equal the separate calls bit for bit
        (tests/core/test_decode_fast_path.py).
        """
        cache = _fused_current(holder, x, modules)
        if cache is None:
            return None
        K = modules[0].in_features
        _, name, args, sizes, _, module = cache
        kernel = getattr(module, name)  # the gemv_kernel module's function, looked up per call (tests patch it)
        rows = x.numel() // K
        xf = x.reshape(rows, K)  # [M, K]
        if xf.dtype != torch.float32:
            xf = xf.float()
        if not xf.is_contiguous():
            xf = xf.contiguous()
        y = kernel(xf, *args)  # [M, sum N]
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return list(y.view(*x.shape[:-1], y.shape[-1]).split_with_sizes(sizes, dim=-1))  # [..., out_i] views

    @staticmethod
    def fused_decode_args(holder: object, x: torch.Tensor, modules: list[nn.Module]) -> tuple | None:
        """(kind, group, tensors) of the fused projection for lmlab's one-call decode layer
        (``lmlab.core.native.decode_layer``, which calls the same kernel), or None where ``fused_inference``
        would not apply."""
        cache = _fused_current(holder, x, modules)
        return None if cache is None else _decode_args(cache[1], cache[2])

    def decode_args(self, x: torch.Tensor) -> tuple | None:
        """(kind, group, tensors) of this layer for lmlab's one-call decode layer (the kernel ``forward`` would
        call, with its bias inside), or None where ``forward`` would not take lmlab's kernel for ``x``: hooks,
        adapters, a subclass, a bias that trains, no kernel."""
        if (type(self) is not QuantizedLinear or self._forward_hooks or self._forward_pre_hooks or self._modules
                or x.numel() // self.in_features > GEMV_MAX_ROWS or not self._use_kernel(x)):
            return None
        _, name, args, module = self._gemv_plan()
        if module is None or (args[-1] is None and self._parameters.get("bias") is not None):
            return None
        return _decode_args(name, args)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")

    def __getstate__(self) -> dict:  # copies never carry the kernel's repacked tensor or cached plan
        state = dict(super().__getstate__())
        state["_kernel"] = None
        state["_gemv"] = None
        return state


# decode_layer's projection kinds (lmlab/core/native_kernels.cpp, ``project``) of gemv_kernel's functions
_DECODE_KINDS = {"int8_gemv": 1, "int8_gemv_a8": 2, "int4_gemv": 3, "int4_gemv_a8": 4}


def _decode_args(name: str, args: tuple) -> tuple:
    """(kind, group, tensors) for ``native.decode_layer`` from a gemv plan's kernel name and arguments."""
    from lmlab.core import native

    bias = native.NO_TENSOR if args[-1] is None else args[-1]
    if name.startswith("int8"):
        return _DECODE_KINDS[name], 0, [args[0], args[1], bias]  # qweight, scales
    return _DECODE_KINDS[name], args[3], [args[0], args[1], args[2], bias]  # qweight, scales, qzeros; group


def _fused_current(holder: object, x: torch.Tensor, modules: list[nn.Module]) -> tuple | None:
    """The fused plan of ``modules`` kept on ``holder``, checked (cheaply) or rebuilt for this call, or None
    where the fused path does not apply (see ``QuantizedLinear.fused_inference``)."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return None
    first = modules[0]
    # int4 only: the int8 kernels compute a block's tail rows in another order, so which rows of a
    # concatenation fall in a tail changes their fp32 rounding (~1e-7; int4 was bit-exact on 240 cases)
    if first.bits != 4 or x.numel() // first.in_features > GEMV_MAX_ROWS:
        return None
    cache = getattr(holder, "_quantized_fused", None)
    if cache is None or not _fused_still_valid(cache[4], x, modules):
        cache = _fused_build(holder, x, modules)
    return cache


def _version(t: torch.Tensor) -> int | None:
    """The in-place-modification counter; None for inference-mode tensors, which keep none."""
    try:
        return t._version
    except RuntimeError:
        return None


def _switch_state() -> tuple:
    """The module-level switches and the environment a decode plan depends on."""
    return FAST_KERNELS, USE_GEMV, GEMV_ACTIVATIONS, _environment_mode(), DEFAULT_GEMV_ACTIVATIONS


def _watched(modules: list[QuantizedLinear]) -> tuple:
    """(owner dict, name, tensor, data pointer, version) of every buffer and bias a fused plan reads."""
    out = []
    for m in modules:
        for owner, name in ((m._buffers, "qweight"), (m._buffers, "scales"), (m._buffers, "qzeros"), (m._parameters, "bias")):
            t = owner.get(name)
            if t is not None:
                out.append((owner, name, t, t.data_ptr(), t._version))
    return tuple(out)


def _fused_still_valid(check: tuple, x: torch.Tensor, modules: list[nn.Module]) -> bool:
    """Whether a fused plan built earlier still applies to this call: the same modules, still plain (no hooks, no
    adapters), the same switches, every buffer the same tensor, storage and version, and an input the kernel
    takes. A few dozen attribute reads, against ~40 us for re-deriving each module's plan (a decode step calls
    this once a layer)."""
    mods, switches, watched, bias_trains = check
    if len(modules) != len(mods) or not (x.dtype in _FAST_DTYPES and x.is_cpu and FAST_KERNELS):
        return False
    grad = torch.is_grad_enabled()
    if (grad and (x.requires_grad or bias_trains)) or torch.compiler.is_compiling():
        return False
    for m, n in zip(modules, mods):
        if m is not n or m._forward_hooks or m._forward_pre_hooks or m._modules:
            return False
    if _switch_state() != switches:
        return False
    for owner, name, t, ptr, version in watched:
        if owner.get(name) is not t or t.data_ptr() != ptr or t._version != version:
            return False
    return True


def _fused_build(holder: object, x: torch.Tensor, modules: list[nn.Module]) -> tuple | None:
    """Check every module in full (as the separate calls would) and build the fused plan, or None."""
    first = modules[0]
    K = first.in_features
    key = []
    for m in modules:
        if (type(m) is not QuantizedLinear or m._forward_hooks or m._forward_pre_hooks or m._modules
                or m.in_features != K or m.bits != first.bits or m.group_size != first.group_size
                or not m._use_kernel(x)):
            return None
        plan = m._gemv_plan()
        bias = m._parameters.get("bias")
        if plan[3] is None or (bias is not None and plan[2][-1] is None):  # no kernel, or a bias that trains
            return None
        tensors = [t for t in (m._buffers["qweight"], m._buffers["scales"], m._buffers.get("qzeros"), bias)
                   if t is not None]
        versions = [_version(t) for t in tensors]
        if None in versions:  # inference-mode tensors keep no version counter: an in-place change would be unseen
            return None
        key.append((m, plan[0], tuple(versions)))
    old = getattr(holder, "_quantized_fused", None)
    fused = old[:4] if old is not None and old[0] == key else _fused_plan(key, modules)  # the copy, if still good
    if fused is None:
        return None
    bias_trains = any(b is not None and b.requires_grad for b in (m._parameters.get("bias") for m in modules))
    check = (tuple(modules), _switch_state(), _watched(modules), bias_trains)
    holder._quantized_fused = fused + (check, plan[3])
    return holder._quantized_fused


def _fused_plan(key: list, modules: list[QuantizedLinear]) -> tuple | None:
    """(key, kernel name, its arguments over the concatenated buffers, output sizes) for
    ``QuantizedLinear.fused_inference``; None when the layers disagree on having a bias."""
    plans = [m._gemv_plan() for m in modules]
    biases = [m._parameters.get("bias") for m in modules]
    if len({b is None for b in biases}) > 1 or len({p[1] for p in plans}) > 1:
        return None
    with torch.no_grad():
        cat = lambda i: torch.cat([p[2][i] for p in plans]).contiguous()  # noqa: E731 - along the output rows
        bias = None if biases[0] is None else torch.cat([b.detach() for b in biases]).float().contiguous()
        if modules[0].bits == 8:
            args = (cat(0), cat(1), bias)  # qweight [N, K], scales [N, 1]
        else:
            args = (cat(0), cat(1), cat(2), modules[0].group_size, bias)  # qweight, scales, qzeros, group
    return key, plans[0][1], args, [m.out_features for m in modules]
