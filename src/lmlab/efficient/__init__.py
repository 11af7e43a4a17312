"""Inference efficiency: weight-only quantization (RTN, GPTQ), KV-cache eviction policies, RoPE scaling search.

Public entry points (imported lazily, so ``import lmlab.efficient`` stays cheap):
``quantize``, ``dequantize_model``, ``QuantizationConfig``, ``QuantizedLinear``, ``save_quantized``,
``kv_policy``.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "quantize": "lmlab.efficient.quantization",
    "dequantize_model": "lmlab.efficient.quantization",
    "QuantizationConfig": "lmlab.efficient.quantization",
    "QuantizedLinear": "lmlab.efficient.quant",
    "save_quantized": "lmlab.efficient.quant_io",
    "load_quantized": "lmlab.efficient.quant_io",
    "kv_policy": "lmlab.efficient.kv_registry",
    "available_policies": "lmlab.efficient.kv_registry",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)


__all__ = list(_EXPORTS)
