"""The one Transformer: every supported family is this class with a different ModelConfig.

Separate q/k/v projections (fused HF weights are split at conversion), hook points at fixed names, an
optional KV cache object, and partial forwards (``start_at_layer`` / ``stop_at_layer``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.core import native
from lmlab.core.cache import KVCache
from lmlab.core.config import ModelConfig
from lmlab.core.linear import FusedProjections, Linear
from lmlab.core.hooks import BLOCK_HOOKS, HookPoint, enter_forward, exit_forward, run_with_cache
from lmlab.core.hooks import hooks as hooks_cm
from lmlab.core.rope import apply_rotary_prepared, inverse_frequencies, prepare_rotary, rotary_tables
from lmlab.errors import LmlabError


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back before the weight, as HF Llama does (matters in bf16)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is the same arithmetic, x * rsqrt(mean(x^2) + eps), in one call instead of six.
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            y = native.rms_norm(x, self.weight, self.eps)  # decode rows at inference: lmlab's kernel, else None
            return y if y is not None else F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state dict) whose fp32 decode rows run lmlab's kernel: one call
    instead of PyTorch's op, ~9 -> ~2 us, twice a layer. Prefill and training are PyTorch's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and len(self.normalized_shape) == 1:
            y = native.layer_norm(x, self.weight, self.bias, self.eps)  # None unless decode rows at inference
            if y is not None:
                return y
        return super().forward(x)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return LayerNorm(config.d_model, eps=config.norm_eps, bias=config.norm_bias)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU; decode rows in fp32 through lmlab's kernel (PyTorch's CPU tanh is scalar: ~14 us a call)."""
    y = native.gelu_tanh(x) if x.dtype == torch.float32 else None
    return y if y is not None else F.gelu(x, approximate="tanh")


ACTIVATION_FNS = {
    "gelu": F.gelu,
    "gelu_new": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
}


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, points: dict[str, HookPoint]) -> None:
        super().__init__()
        c = config
        self.config, self.layer = c, layer
        self.n_heads, self.n_kv, self.d_head = c.n_heads, c.kv_heads, c.head_dim
        self.q_proj = Linear(c.d_model, c.n_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = Linear(c.d_model, c.kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = Linear(c.d_model, c.kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = Linear(c.n_heads * c.head_dim, c.d_model, bias=c.attn_out_bias)
        self.window = c.window_for_layer(layer)
        self._fused_qkv = FusedProjections()  # one GEMV for q, k, v at inference (lmlab.core.linear)
        p = f"blocks.{layer}.attn."
        self.hook_q, self.hook_k, self.hook_v = points[p + "q"], points[p + "k"], points[p + "v"]
        self.hook_pattern, self.hook_z, self.hook_out = points[p + "pattern"], points[p + "z"], points[p + "out"]

    def forward(self, x: torch.Tensor, rope: tuple | None, ctx: "ForwardContext") -> torch.Tensor:
        B, T, _ = x.shape
        H, H_kv, dh = self.n_heads, self.n_kv, self.d_head
        qkv = self._fused_qkv(x, [self.q_proj, self.k_proj, self.v_proj])
        q, k, v = qkv if qkv is not None else (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        cache = ctx.cache
        # A decode step (one token per row) that no hook on q, k, v or z observes: [B, 1, H, dh] and [B, H, 1, dh]
        # are the same memory, so the projections are viewed heads-first at once and the output flattened back,
        # with no transposes (the same values and arithmetic as the general path, ~5 aten ops fewer per layer).
        lean = T == 1 and not (self.hook_q.fns or self.hook_k.fns or self.hook_v.fns or self.hook_z.fns)
        if lean:
            queries = q.view(B, H, 1, dh)  # [B, H, 1, dh]
            k, v = k.view(B, H_kv, 1, dh), v.view(B, H_kv, 1, dh)  # [B, Hkv, 1, dh]
            if rope is not None:  # tables [B, 1, 1, rot_dim]: with T == 1 they broadcast over heads in either layout
                queries = apply_rotary_prepared(queries, rope)
                k = apply_rotary_prepared(k, rope)
            if cache is not None:
                keys, values = cache.write(self.layer, k, v, heads_first=True)  # [B, Hkv, S, dh]
                mask = ctx.cache_mask(self.window)
            else:
                keys, values = k, v
                mask = ctx.plain_mask(self.window)
        else:
            q = self.hook_q(q.view(B, T, H, dh))  # [B, T, H, dh]
            k = self.hook_k(k.view(B, T, H_kv, dh))  # [B, T, Hkv, dh]
            v = self.hook_v(v.view(B, T, H_kv, dh))  # [B, T, Hkv, dh]
            if rope is not None:
                q = apply_rotary_prepared(q, rope)
                k = apply_rotary_prepared(k, rope)
            if cache is not None:
                keys, values = cache.write(self.layer, k, v)  # [B, Hkv, S, dh]
                mask = ctx.cache_mask(self.window)
            else:
                keys, values = k.transpose(1, 2), v.transpose(1, 2)
                mask = ctx.plain_mask(self.window)
            queries = q.transpose(1, 2)  # [B, H, T, dh]
        eager = self.hook_pattern.fns or (cache is not None and cache.policy.needs_attention)
        z = None
        if lean and mask is None and not self.hook_pattern.fns:  # one query a row, all keys visible
            z = self._decode_kernel(queries, keys, values, cache if eager else None)  # None: does not apply
        if z is None and eager:
            z = self._eager(queries, keys, values, mask, ctx)
        elif z is None:
            causal = mask is None and T > 1  # a None mask with T > 1 always means T == S
            z = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, is_causal=causal,
                                               enable_gqa=H_kv != H)  # [B, H, T, dh]
        if lean:
            return self.hook_out(self.o_proj(z.reshape(B, 1, H * dh)))
        z = self.hook_z(z.transpose(1, 2))  # [B, T, H, dh]
        return self.hook_out(self.o_proj(z.reshape(B, T, H * dh)))

    def _decode_kernel(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       observer: KVCache | None) -> torch.Tensor | None:
        """lmlab's one-query attention kernel (``lmlab.core.native``) -> [B, H, 1, dh], or None where it does
        not apply. ``observer``: a cache whose policy reads the attention probabilities; it gets the kernel's
        softmax [B, H, 1, S], as the eager path would give it."""
        if observer is None:
            return native.decode_attention(q, k, v)
        got = native.decode_attention(q, k, v, with_probs=True)
        if got is None:
            return None
        z, probs = got
        observer.policy.observe(observer, self.layer, probs)
        return z

    def _eager(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               ctx: "ForwardContext") -> torch.Tensor:
        """Explicit softmax(QK^T/sqrt(d)) V, so hooks and cache policies can see the pattern.

        Grouped-query heads are computed per KV head (the ``rep`` query heads sharing one KV head form the
        rows of one matmul) instead of repeating keys and values ``rep`` times: with a long cache the copy
        would cost more than the attention itself (a decode step of a cache policy that needs the scores)."""
        B, H, T, dh = q.shape
        S, rep = k.shape[2], self.n_heads // self.n_kv
        grouped = q.reshape(B, self.n_kv, rep * T, dh)  # head h = g * rep + r reads KV head g
        scores = (grouped @ k.transpose(-1, -2)).float().view(B, H, T, S)  # [B, H, T, S]
        scores = scores.div_(math.sqrt(self.d_head))  # a fresh tensor (the matmul's output or its float copy)
        if mask is None and T > 1:  # T == 1 with no mask: every cached key is in the past
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        if mask is not None:
            scores = scores.masked_fill_(~mask, float("-inf"))
        probs = self.hook_pattern(scores.softmax(dim=-1).to(q.dtype))  # [B, H, T, S]
        if ctx.cache is not None and ctx.cache.policy.needs_attention:
            ctx.cache.policy.observe(ctx.cache, self.layer, probs)
        return (probs.reshape(B, self.n_kv, rep * T, S) @ v).view(B, H, T, dh)  # [B, H, T, dh]


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, points: dict[str, HookPoint]) -> None:
        super().__init__()
        c = config
        self.gated = c.mlp_type == "gated"
        if self.gated:
            self.gate_proj = Linear(c.d_model, c.d_mlp, bias=c.mlp_bias)
        self.up_proj = Linear(c.d_model, c.d_mlp, bias=c.mlp_bias)
        self.down_proj = Linear(c.d_mlp, c.d_model, bias=c.mlp_bias)
        self.act = ACTIVATION_FNS[c.activation]
        self.silu_gate = self.gated and c.activation == "silu"  # silu(gate) * up: one kernel call at decode
        self._fused_gate_up = FusedProjections()  # one GEMV for gate and up at inference
        p = f"blocks.{layer}.mlp."
        self.hook_pre, self.hook_post, self.hook_out = points[p + "pre"], points[p + "post"], points[p + "out"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            # pre = gate projection (before the activation); post = act(gate) * up, the down projection's input.
            gate_up = self._fused_gate_up(x, [self.gate_proj, self.up_proj])
            gate, up = gate_up if gate_up is not None else (self.gate_proj(x), self.up_proj(x))
            post = native.silu_mul(gate, up) if self.silu_gate and not self.hook_pre.fns else None
            if post is None:
                post = self.act(self.hook_pre(gate)) * up  # [B, T, d_mlp]
        else:
            post = self.act(self.hook_pre(self.up_proj(x)))
        return self.hook_out(self.down_proj(self.hook_post(post)))  # [B, T, d_model]


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, points: dict[str, HookPoint]) -> None:
        super().__init__()
        self.ln1 = make_norm(config)
        self.attn = Attention(config, layer, points)
        self.ln2 = None if config.shared_block_norm else make_norm(config)
        self.mlp = MLP(config, layer, points)
        self.parallel = config.parallel_residual
        p = f"blocks.{layer}."
        self.hook_pre, self.hook_mid, self.hook_post = points[p + "resid_pre"], points[p + "resid_mid"], points[p + "resid_post"]
        self._points = tuple(points[p + h] for h in BLOCK_HOOKS)  # every hook point a native decode step would skip
        c = config
        # the block shapes lmlab's one-call decode layer computes (native.decode_layer): pre-norm, sequential
        # residual, full-width "half" rotary or learned positions, a SiLU-gated or a tanh-GELU MLP -- the Llama
        # and GPT-2 families
        positions = (c.pos_type == "learned" or (c.pos_type == "rotary" and c.rope_style == "half"
                                                 and c.rot_dim == c.head_dim))
        mlp = ((c.mlp_type == "gated" and c.activation == "silu")
               or (c.mlp_type == "plain" and ACTIVATION_FNS[c.activation] is gelu_tanh))
        self._native_shape = (not c.parallel_residual and not c.shared_block_norm and positions and mlp
                              and c.head_dim % 8 == 0 and c.window_for_layer(layer) is None)
        self._rotary = c.pos_type == "rotary"

    def forward(self, x: torch.Tensor, rope, ctx: "ForwardContext") -> torch.Tensor:
        if self._native_shape:
            y = self._native_decode(x, rope, ctx)  # None unless a plain decode step (see there)
            if y is not None:
                return y
        x = self.hook_pre(x)
        h = self.ln1(x)
        if self.parallel:
            # GPT-J / NeoX: attention and MLP both read the block input; resid_mid = x + attn for hooks.
            mlp_in = h if self.ln2 is None else self.ln2(x)
            mid = self.hook_mid(x + self.attn(h, rope, ctx))
            return self.hook_post(mid + self.mlp(mlp_in))
        mid = self.hook_mid(x + self.attn(h, rope, ctx))
        return self.hook_post(mid + self.mlp(self.ln2(mid)))

    def _native_decode(self, x: torch.Tensor, rope, ctx: "ForwardContext") -> torch.Tensor | None:
        """The whole block for one new token per row as one call of lmlab's kernels (``native.decode_layer``:
        norm, fused q/k/v, rotary, cache write, attention, output projection, norm, MLP projections and
        activation, residuals), or None where it does not apply: a forward of more than one token or more than
        ``native.MAX_ROWS`` rows, autograd on, a hook on any of the block's hook points or modules, a module that
        is neither the plain fp32 one nor a quantized one on lmlab's kernel (an adapter, a packed or replaced
        layer), a ragged or masked cache, or no kernels. The same kernels as the layer-by-layer path, so the same
        numbers up to the rotary's rounding; what it saves is ~30 PyTorch ops and the Python around them, which
        on a small model (or a quantized one) cost more than the bytes (docs/efficient.md, sessions 11-12)."""
        B, T, _ = x.shape
        cache = ctx.cache
        if (T != 1 or B > native.MAX_ROWS or cache is None or (rope is None) == self._rotary
                or x.dtype != torch.float32 or torch.is_grad_enabled() or not x.is_contiguous()
                or type(x) is not torch.Tensor):
            return None
        for point in self._points:
            if point.fns:
                return None
        attn, mlp = self.attn, self.mlp
        norm1, norm2 = _decode_norm(self.ln1), _decode_norm(self.ln2)
        if type(attn) is not Attention or type(mlp) is not MLP or norm1 is None or norm2 is None:
            return None
        for m in (attn, mlp):
            if m._forward_hooks or m._forward_pre_hooks:
                return None
        if ctx.cache_mask(None) is not None or cache._uniform is None or cache.k.dtype != torch.float32:
            return None  # ragged rows, padding or evicted holes; a mixed-precision cache (the kernels are fp32)
        # x stands for every projection's input: the same dtype, rows and autograd state
        qkv = attn._fused_qkv.decode_args(x, [attn.q_proj, attn.k_proj, attn.v_proj])
        o, dn = _projection_args(attn.o_proj, x), _projection_args(mlp.down_proj, x)
        up = (mlp._fused_gate_up.decode_args(x, [mlp.gate_proj, mlp.up_proj]) if mlp.gated
              else _projection_args(mlp.up_proj, x))
        kernels = native.kernels()
        if qkv is None or o is None or up is None or dn is None or kernels is None:
            return None
        if rope is None:
            cos = sin = native.NO_TENSOR
        else:
            cos, sin = rope[0].reshape(B, -1).contiguous(), rope[1].reshape(B, -1).contiguous()
        k_layers, v_layers = cache._layer_views()
        observe = cache.policy.needs_attention
        projections = (qkv, o, up, dn)
        out = kernels.decode_layer(x, norm1[0], norm1[1], qkv[2], attn.n_heads, attn.n_kv, cos, sin,
                                   k_layers[attn.layer], v_layers[attn.layer], cache._uniform, o[2], norm2[0],
                                   norm2[1], up[2], mlp.gated, dn[2], [p[0] for p in projections],
                                   [p[1] for p in projections], observe)
        if observe:
            cache.policy.observe(cache, attn.layer, out[1])
        return out[0]


def _projection_args(module: nn.Module, x: torch.Tensor) -> tuple | None:
    """(kind, group, tensors) of one projection for ``native.decode_layer`` (its ``decode_args``), or None for a
    module type without one (a wrapper, a replaced layer)."""
    args = getattr(module, "decode_args", None)
    return None if args is None else args(x)


def _decode_norm(norm: nn.Module | None) -> tuple[list[torch.Tensor], float] | None:
    """(tensors, eps) of a norm for ``native.decode_layer``: RMSNorm ``[weight]``, LayerNorm ``[weight, bias]``
    (an absent one ``native.NO_TENSOR``); None unless the model's own fp32 norm with no hooks."""
    kind = type(norm)
    if (kind is not RMSNorm and kind is not LayerNorm) or norm._forward_hooks or norm._forward_pre_hooks:
        return None
    if kind is RMSNorm:
        tensors = [norm.weight]
    elif len(norm.normalized_shape) != 1:
        return None
    else:
        tensors = [native.NO_TENSOR if t is None else t for t in (norm.weight, norm.bias)]
    for t in tensors:
        if t.dtype != torch.float32 or not t.is_contiguous():
            return None
    return tensors, norm.eps


class ForwardContext:
    """What every layer of one forward shares: the cache, positions and the masks (built once per window)."""

    def __init__(self, cache: KVCache | None, positions: torch.Tensor, pad_mask: torch.Tensor | None,
                 segment_ids: torch.Tensor | None) -> None:
        self.cache, self.positions = cache, positions
        self.pad_mask, self.segment_ids = pad_mask, segment_ids
        self._masks: dict[int | None, torch.Tensor | None] = {}

    def cache_mask(self, window: int | None) -> torch.Tensor | None:
        if window not in self._masks:
            self._masks[window] = self.cache.mask(self.positions, window)
        return self._masks[window]

    def plain_mask(self, window: int | None) -> torch.Tensor | None:
        """[B, 1, T, T] mask for a cache-less forward, or None when plain causal attention is exact."""
        if window not in self._masks:
            if self.pad_mask is None and self.segment_ids is None and window is None:
                self._masks[window] = None
            else:
                T = self.positions.shape[1]
                idx = torch.arange(T, device=self.positions.device)
                allowed = (idx[None, :] <= idx[:, None])[None, None]  # [1, 1, T, T]
                if window is not None:
                    allowed = allowed & (idx[:, None] - idx[None, :] < window)
                if self.pad_mask is not None:
                    allowed = allowed & self.pad_mask[:, None, None, :].bool()
                    # a query with no visible key (left padding) attends to itself to stay finite
                    allowed = allowed | torch.eye(T, dtype=torch.bool, device=idx.device)
                if self.segment_ids is not None:
                    seg = self.segment_ids
                    allowed = allowed & (seg[:, None, :, None] == seg[:, None, None, :])
                self._masks[window] = allowed
        return self._masks[window]


class Transformer(nn.Module):
    """Decoder-only LM. ``model(input_ids) -> logits [B, T, vocab]``; hook points in ``self.hook_points``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.hook_points: dict[str, HookPoint] = {}
        for name in ["embed", "ln_final", "logits"] + [f"blocks.{i}.{h}" for i in range(config.n_layers) for h in BLOCK_HOOKS]:
            self.hook_points[name] = HookPoint(name)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = nn.Embedding(config.max_seq_len, config.d_model) if config.pos_type == "learned" else None
        self.blocks = nn.ModuleList(Block(config, i, self.hook_points) for i in range(config.n_layers))
        self.ln_final = make_norm(config)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias)
        self._inv_freq: dict[torch.device, tuple[ModelConfig, torch.Tensor]] = {}  # see _inverse_frequencies
        self.tie_weights()
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def init_weights(self, std: float = 0.02, seed: int | None = None) -> "Transformer":
        """GPT-2 style init for training from scratch: N(0, std), residual projections scaled by 1/sqrt(2L)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0 if "ln" in name and name.endswith("weight") else 0.0)
                else:
                    scale = std / math.sqrt(2 * self.config.n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                    p.copy_(torch.randn(p.shape, generator=gen) * scale)
        return self

    def forward(self, input_ids: torch.Tensor | None = None, *, cache: KVCache | None = None,
                positions: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, input_lengths: torch.Tensor | None = None,
                residual: torch.Tensor | None = None, start_at_layer: int | None = None,
                stop_at_layer: int | None = None, logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] for ``input_ids`` [B, T].

        - ``cache``: a KVCache; the new tokens are appended per row (``input_lengths`` [B] = real tokens per
          row when prompts are right-padded to a common T).
        - ``attention_mask`` [B, T] (1 = token, 0 = padding) and ``segment_ids`` [B, T] (packed documents
          attend only within their segment) apply to cache-less forwards; ``positions`` [B, T] overrides
          the default 0..T-1 (or the cache's running positions).
        - ``start_at_layer=k`` takes ``residual`` [B, T, d_model] as the input of block k; ``stop_at_layer=k``
          returns the residual stream entering block k instead of logits (``stop_at_layer=n_layers``: the
          stream after the last block, before ``ln_final``, with no lm_head computed).
        - ``logits_at`` [B] (for generation): logits [B, 1, vocab] of one position per row only, which spares
          the lm_head over the rest of a prompt. With hooks on ``ln_final`` or ``logits`` the full logits are
          computed (the hooks see what they always see) and the positions picked afterwards.
        """
        c = self.config
        n_layers = c.n_layers
        start = 0 if start_at_layer is None else start_at_layer
        stop = n_layers if stop_at_layer is None else stop_at_layer
        if not (0 <= start <= stop <= n_layers):
            raise LmlabError(f"start_at_layer={start_at_layer} / stop_at_layer={stop_at_layer} must satisfy 0 <= start <= stop <= {n_layers}")
        if start_at_layer is None:
            if input_ids is None or input_ids.dim() != 2:
                raise LmlabError("input_ids must be a LongTensor of shape [batch, seq]")
            B, T = input_ids.shape
        else:
            if residual is None:
                raise LmlabError("start_at_layer needs residual= (the residual stream [B, T, d_model])")
            B, T = residual.shape[:2]
        cache_empty, token_index = None, None
        if cache is not None:
            if start != 0 or stop != n_layers:
                raise LmlabError("a KV cache cannot be used with start_at_layer / stop_at_layer")
            if cache.batch_size != B:
                raise LmlabError(f"cache batch size {cache.batch_size} != input batch size {B}")
            cache_empty = cache.is_empty
            cache_pos, _ = cache.begin(T, input_lengths)
            # true token indices for hooks' prompt/generated masks, when a policy re-indexed positions
            token_index = cache.token_index if positions is None else None
            positions = cache_pos if positions is None else positions
        elif positions is None:
            positions = torch.arange(T, device=self.device).expand(B, T)
            if attention_mask is not None:
                # left-padded rows start counting at their first real token, as HF generate does
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        ctx = ForwardContext(cache, positions, attention_mask, segment_ids)
        # what hooks read via current_context()
        token = enter_forward(positions, cache_empty, input_lengths, token_index=token_index)
        try:
            x = residual if start_at_layer is not None else None
            return self._forward(input_ids, x, positions, ctx, cache, start, stop, logits_at,
                                 partial=stop_at_layer is not None)
        finally:
            exit_forward(token)

    def _forward(self, input_ids, residual, positions, ctx: ForwardContext, cache: KVCache | None, start: int,
                 stop: int, logits_at: torch.Tensor | None, partial: bool = False) -> torch.Tensor:
        c = self.config
        B = positions.shape[0]
        if residual is None:
            x = self.embed(input_ids)
            if self.pos_embed is not None:
                if int(positions.max()) >= c.max_seq_len:
                    raise LmlabError(f"position {int(positions.max())} exceeds max_seq_len {c.max_seq_len} of learned positions")
                x = x + self.pos_embed(positions)
            x = self.hook_points["embed"](x)  # [B, T, d_model]
        else:
            x = residual
        rope = None
        if c.pos_type == "rotary":
            cos, sin = rotary_tables(c, positions, x.dtype, self._inverse_frequencies(positions.device))
            rope = prepare_rotary(cos, sin, c.rope_style)
        try:
            for i in range(start, stop):  # (slicing the ModuleList would build a new Module every forward)
                x = self.blocks[i](x, rope, ctx)
        finally:
            if cache is not None:
                cache.end()
        if partial:  # a partial forward: the residual stream, no ln_final / lm_head
            return x
        rows = None if logits_at is None else torch.arange(B, device=x.device)
        hooked = self.hook_points["ln_final"].active or self.hook_points["logits"].active
        if logits_at is not None and not hooked:
            x = x[rows, logits_at][:, None]  # [B, 1, d_model]: the lm_head only where it is needed
        x = self.hook_points["ln_final"](self.ln_final(x))
        logits = self.hook_points["logits"](self.lm_head(x))  # [B, T, vocab]
        if logits_at is not None and hooked:
            logits = logits[rows, logits_at][:, None]
        return logits

    def _inverse_frequencies(self, device: torch.device) -> torch.Tensor:
        """Rotary inverse frequencies on ``device``, computed once per device and config (a plain attribute,
        not a buffer: nothing in the state dict, nothing to materialise after meta-device loading)."""
        config, inv_freq = self._inv_freq.get(device, (None, None))
        if config is not self.config:  # first use on this device, or model.config was replaced
            inv_freq = inverse_frequencies(self.config).to(device)
            self._inv_freq[device] = (self.config, inv_freq)
        return inv_freq

    def hooks(self, pairs):
        """Context manager attaching ``(name_or_pattern, fn)`` hooks; see ``lmlab.core.hooks.hooks``."""
        return hooks_cm(self, pairs)

    def run_with_cache(self, *args, names=None, **kwargs):
        """(logits, {hook name: activation}) keeping only ``names``; see ``lmlab.core.hooks.run_with_cache``."""
        return run_with_cache(self, *args, names=names, **kwargs)

    def tie_weights(self) -> None:
        """Point the output projection at the input embedding (after loading with assign=True).

        A weight-only quantized head (``lmlab.efficient``) keeps its own codes: the table stays float for lookup."""
        if self.config.tie_embeddings and not getattr(self.lm_head, "weight_only_quantized", False):
            self.lm_head.weight = self.embed.weight

    def new_cache(self, batch_size: int, max_len: int, policy=None) -> KVCache:
        """A KV cache sized for this model, in its dtype and on its device."""
        return KVCache(self.config, batch_size, max_len, dtype=self.dtype, device=self.device, policy=policy)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
