"""``lmlab.serve``: an OpenAI-compatible HTTP server over the continuous-batching decoder.

``lmlab serve MODEL [--config FILE]`` runs it. Pieces, one job each: ``config`` (the YAML/JSON file),
``engine`` (the decoding thread and its scheduler), ``methods`` (adapters, steering vectors), ``prepare``
(request checks -> jobs), ``openai_schema`` (request bodies), ``responses`` (bodies and SSE streams),
``text`` (incremental detokenization), ``metrics`` (Prometheus text), ``app`` (routes), ``server``
(uvicorn in a thread), ``playground/index.html`` (the page at ``/``).
"""

from lmlab.serve.config import ServeConfig, SteerSpec, load_serve_config

__all__ = ["ServeConfig", "SteerSpec", "load_serve_config"]
