"""Named KV-cache policies (``lmlab.efficient.kv_policy``) a request may ask for, and the server's default.

A KV policy belongs to a cache, not to a row: it decides which slots every row of its cache keeps, and the
policies keep per-cache state (a fractional budget is resolved once, on the first prompt; H2O and Keyformer
accumulate scores over the whole batch, Keyformer draws its Gumbel noise from one generator per cache). So
the engine gives each request that names a policy a decoder and a cache of its own, built from a fresh copy
of the policy: its tokens are those of ``lmlab.generate(..., cache_policy=policy)`` on the same prompts,
whatever else the server is doing. Requests with the full cache share the main batch.
"""

from __future__ import annotations

from lmlab.serve.config import KVPolicySpec, build_kv_policy

NO_POLICY = "none"  # what a request names to use the full cache on a server whose default is a policy


class KVPolicyTable:
    def __init__(self, specs: dict[str, KVPolicySpec], default: str | None = None) -> None:
        self.specs = dict(specs)
        self.default = default
        self._policies = {name: build_kv_policy(name, spec) for name, spec in self.specs.items()}

    @property
    def names(self) -> list[str]:
        return sorted(self.specs)

    def describe(self, name: str) -> dict:
        spec = self.specs[name]
        return {"policy": spec.policy, "budget": spec.budget, **({"options": spec.options} if spec.options else {})}

    def resolve(self, requested: str | None) -> str | None:
        """The entry a request gets: its own choice, else the default; None = the full cache.
        Raises KeyError for an unknown name (the caller answers 400)."""
        name = self.default if requested is None else requested
        if name is None or name == NO_POLICY:
            return None
        if name not in self.specs:
            raise KeyError(name)
        return name

    def policy(self, name: str):
        """The configured policy ``name``; each cache built with it works on its own fresh copy."""
        return self._policies[name]
