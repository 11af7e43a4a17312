"""lm-eval's ``local-completions`` model scores a multiple-choice task through the server (echo + logprobs)
exactly as lm-eval scores the same task in-process with ``LmlabLM`` -- with a local HF tokenizer, and with
the server's own tokenizer routes (``/tokenizer_info``, ``/tokenize``, which lm-eval detects by itself)."""

from __future__ import annotations

import random

import pytest

import lmlab
from lmlab.reference import ASSET_DIR, load_reference


def _docs(n=10):
    """Held-out paraphrases of world facts, the true object among two others of the same relation."""
    world = load_reference().world
    probes = world.probes("heldout")
    rng = random.Random(0)
    picked = rng.sample(probes, n)
    objects: dict[str, list[str]] = {}
    for f in world.facts:
        objects.setdefault(f.relation, []).append(f.object)
    docs = []
    for p in picked:
        wrong = sorted({o for o in objects[p.fact.relation] if o != p.fact.object})
        options = [p.fact.object] + rng.sample(wrong, 2)
        rng.shuffle(options)
        docs.append({"q": p.prompt, "options": options, "answer": options.index(p.fact.object)})
    return docs


@pytest.fixture(scope="module")
def runs(server, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_lm_eval")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                           "HF_HOME": str(root / "hf_home"), "HF_DATASETS_CACHE": str(root / "hf_datasets")}.items():
            mp.setenv(key, value)
        import lm_eval
        import yaml
        from lm_eval.tasks import TaskManager

        from lmlab.eval.lm_eval_adapter import LmlabLM, to_lm_eval_config
        from lmlab.eval.tasks import Task

        task = Task(name="serve_mc", output_type="multiple_choice", docs=_docs(), doc_to_text="{{q}}",
                    doc_to_choice="{{options}}", doc_to_target="answer", metrics=["acc"])
        task_dir = root / "tasks"
        cfg = to_lm_eval_config(task, task_dir)
        cfg["dataset_kwargs"]["cache_dir"] = str(root / "hf_datasets")
        (task_dir / "serve_mc.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        common = dict(tasks=["serve_mc"], task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                      bootstrap_iters=0, log_samples=True)
        local = lm_eval.simple_evaluate(
            model=LmlabLM(lmlab.load(ASSET_DIR).eval(), lmlab.load_tokenizer(ASSET_DIR), batch_size=4), **common)
        args = f"model=world,base_url={server.url}/v1/completions,max_length=128,num_concurrent=1,max_retries=1"
        hf = lm_eval.simple_evaluate(model="local-completions", **common,
                                     model_args=f"{args},tokenizer_backend=huggingface,tokenizer={ASSET_DIR}")
        auto = lm_eval.simple_evaluate(model="local-completions", model_args=args, **common)
    return local, {"hf": hf, "auto": auto}


@pytest.mark.parametrize("tokenizer", ["hf", "auto"])
def test_local_completions_equals_in_process(runs, tokenizer):
    local, remote = runs[0], runs[1][tokenizer]
    acc_local, acc_remote = local["results"]["serve_mc"]["acc,none"], remote["results"]["serve_mc"]["acc,none"]
    assert acc_remote == acc_local
    assert 0 < acc_local < 1  # informative: neither every answer right nor every answer wrong
    def key(sample):
        return sample["doc_id"]

    pairs = list(zip(sorted(local["samples"]["serve_mc"], key=key), sorted(remote["samples"]["serve_mc"], key=key)))
    assert len(pairs) == 10
    for mine, theirs in pairs:
        assert mine["arguments"] == theirs["arguments"]
        lls = [float(r[0]) for r in mine["filtered_resps"]]
        assert [float(r[0]) for r in theirs["filtered_resps"]] == pytest.approx(lls, abs=1e-4)
