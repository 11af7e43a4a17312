"""Running the app: ``build_engine`` loads a checkpoint and the config's methods; ``ServerThread`` runs
uvicorn in a background thread on loopback (tests, benchmarks, notebooks); the CLI runs it in the foreground."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.serve.config import ServeConfig
from lmlab.serve.engine import Engine


def build_engine(model_dir: str | Path, config: ServeConfig, *, dtype: str | None = None,
                 pack: bool = False) -> Engine:
    """The engine for the checkpoint at ``model_dir`` (config.json + safetensors [+ tokenizer.json])."""
    from lmlab.cli.common import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(model_dir), dtype, need_tokenizer=False, pack=pack)
    name = config.model_name or Path(model_dir).resolve().name
    return Engine(model, tokenizer, config, model_name=name)


class ServerThread:
    """``with ServerThread(app) as s:`` serves ``app`` at ``s.url`` (port 0 = a free port) until the block ends."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                                     timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="lmlab-serve-http", daemon=True)
        self.host, self.port = host, port

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise LmlabError(f"serve: the HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
