"""``--kv-policy NAME --kv-budget F`` on ``generate``, ``chat`` and ``serve``: a bad budget, policy or pairing is
one line on stderr and a non-zero exit, before any model is loaded (the model path does not even exist)."""

from __future__ import annotations

import pytest
from cli_runner import assert_one_line_error, run

from lmlab.reference import ASSET_DIR


def verb_args(verb: str, model) -> list:
    return {"generate": ["generate", model, "--prompt", "hi"], "chat": ["chat", model],
            "serve": ["serve", model, "--port", "0"]}[verb]


@pytest.mark.parametrize("verb", ["generate", "chat", "serve"])
@pytest.mark.parametrize("flags, message", [
    (["--kv-policy", "window", "--kv-budget", "0"], "budget must be at least 1 token, got 0"),
    (["--kv-policy", "window", "--kv-budget", "-1"], "budget must be at least 1 token, got -1"),
    (["--kv-policy", "h2o", "--kv-budget", "1.5"], "a fractional budget must lie in (0, 1], got 1.5"),
    (["--kv-policy", "h2o", "--kv-budget", "lots"], "--kv-budget: expected a number of tokens or a fraction"),
    (["--kv-policy", "lru", "--kv-budget", "8"], "unknown KV policy 'lru'"),
    (["--kv-budget", "0.5"], "--kv-budget needs --kv-policy"),
])
def test_bad_kv_flags_are_one_line_before_loading(tmp_path, verb, flags, message):
    result = run(*verb_args(verb, tmp_path / "missing"), *flags, stdin="hello\n")
    assert_one_line_error(result, message)
    assert result.stdout == ""


def test_kv_policy_without_budget(tmp_path):
    assert_one_line_error(run("generate", tmp_path / "missing", "--prompt", "hi", "--kv-policy", "h2o"),
                          "--kv-policy needs --kv-budget")
    # serve: without --kv-budget the name must be an entry of the config's kv_policies
    assert_one_line_error(run("serve", tmp_path / "missing", "--kv-policy", "h2o"),
                          "--kv-policy 'h2o' is not a kv_policies entry of the config (entries: none)")
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("kv_policies:\n  half: {policy: h2o, budget: 0.5}\n")
    assert_one_line_error(run("serve", tmp_path / "missing", "--config", cfg, "--kv-policy", "half",
                              "--kv-budget", "0.25"), "already a kv_policies entry")


def test_chat_takes_a_kv_policy():
    result = run("chat", ASSET_DIR, "--max-new-tokens", 4, "--kv-policy", "window", "--kv-budget", 4,
                 stdin="hello\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
