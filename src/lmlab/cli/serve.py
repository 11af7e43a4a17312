"""``lmlab serve MODEL``: an OpenAI-compatible server (``/v1/completions``, ``/v1/chat/completions``,
``/v1/models``, ``/health``, ``/metrics``) with continuous batching, and a playground page at ``/``.
Loopback only unless ``--host`` says otherwise; ``--api-key`` makes every API call need the key.
See docs/serving.md."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from lmlab.cli.common import add_model_argument
from lmlab.errors import LmlabError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("LMLAB_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on API calls (default: $LMLAB_API_KEY)")
    p.add_argument("--config", default=None, help="server config (YAML/JSON): limits, adapters, steering vectors")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set max_batch_size=32 (repeatable)")
    p.add_argument("--kv-policy", default=None,
                   help="default KV policy of requests that name none: a kv_policies entry of --config, or a "
                        "policy (window, sinks, h2o, keyformer) with --kv-budget")
    p.add_argument("--kv-budget", default=None,
                   help="with --kv-policy: tokens kept (e.g. 512) or a fraction of the prompt (e.g. 0.25)")
    p.add_argument("--pack", action="store_true", help="prepack weights for faster CPU decoding")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice; 1 on a machine shared with other work)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from lmlab.serve.app import create_app
    except ImportError as e:
        raise LmlabError(f"serving needs the 'serve' extra (pip install 'lmlab[serve]'): {e}") from None
    from lmlab.serve.config import load_serve_config, set_default_kv_policy
    from lmlab.serve.server import build_engine

    if not 0 <= args.port < 65536:
        raise LmlabError(f"--port must be in [0, 65535], got {args.port}")
    if args.threads is not None:
        if args.threads < 1:
            raise LmlabError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    config = load_serve_config(args.config, args.overrides)
    set_default_kv_policy(config, args.kv_policy, args.kv_budget)
    if not _is_loopback(args.host) and not args.api_key:
        print(f"lmlab serve: warning: listening on {args.host} without --api-key: anyone who can reach it may use it",
              file=sys.stderr)
    engine = build_engine(args.model, config, dtype=args.dtype, pack=args.pack).start()
    print(f"lmlab serve: model '{engine.model_name}' at http://{args.host}:{args.port}/v1 "
          f"(playground: http://{args.host}:{args.port}/)", file=sys.stderr)
    try:
        uvicorn.run(create_app(engine, api_key=args.api_key), host=args.host, port=args.port,
                    log_level=args.log_level, timeout_graceful_shutdown=5)
    finally:
        engine.close()
    return 0
