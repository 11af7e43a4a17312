"""Fixtures for the server tests: the shipped reference model behind a uvicorn server on 127.0.0.1 (a free
port), with a LoRA adapter, a steering vector, guides and KV policies loaded from a config file, and an ``openai`` client."""

from __future__ import annotations

import pytest
import torch
from servehelpers import FORBID, GEDI_CODES, STEER_COEFF, STEER_HOOK, WINDOW_BUDGET, make_adapter, make_steering

# Tiny models on a busy 2-core machine: one intra-op thread avoids OpenMP spin-waiting.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def methods_dir(tmp_path_factory):
    from lmlab.reference import ASSET_DIR, load_reference

    root = tmp_path_factory.mktemp("serve_methods")
    make_adapter(root / "tone")
    make_steering(root / "vectors.safetensors", load_reference().model.config.d_model)
    (root / "serve.yaml").write_text(
        "model_name: world\nmax_batch_size: 24\nmax_queue: 32\nmax_tokens_limit: 100\n"
        "adapters:\n  tone: tone\n"
        f"steering:\n  happy: {{path: vectors.safetensors, tensor: happy, hook: {STEER_HOOK}, coeff: {STEER_COEFF}}}\n"
        f"guides:\n  polite: {{guide: gedi, guide_model: {ASSET_DIR}, desired_code: '{GEDI_CODES[0]}', "
        f"anti_code: '{GEDI_CODES[1]}'}}\n"
        f"  clean: {{forbid: {list(FORBID)}}}\n"
        "kv_policies:\n"
        f"  win: {{policy: window, budget: {WINDOW_BUDGET}}}\n"
        "  h2o-half: {policy: h2o, budget: 0.5}\n")
    return root


@pytest.fixture(scope="session")
def engine(methods_dir):
    from lmlab.reference import ASSET_DIR
    from lmlab.serve.config import load_serve_config
    from lmlab.serve.server import build_engine

    eng = build_engine(ASSET_DIR, load_serve_config(methods_dir / "serve.yaml")).start()
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def server(engine):
    from lmlab.serve.app import create_app
    from lmlab.serve.server import ServerThread

    with ServerThread(create_app(engine)) as s:
        yield s


@pytest.fixture(scope="session")
def client(server):
    import openai

    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield c
    c.close()
