"""HumanEval-format loading, program assembly, completion truncation and the model sample generator."""

import gzip
import json

import pytest

from lmlab.errors import LmlabError
from lmlab.eval.code.problems import (CodeProblem, load_problems, mini_humaneval, model_generator, save_problems,
                                      truncate_completion)


def test_bundled_problems_are_well_formed_and_solved_by_their_canonical_solutions():
    problems = mini_humaneval()
    assert len(problems) == 8 and len({p.task_id for p in problems}) == 8
    for p in problems:
        assert p.prompt.startswith("def ") and f"def {p.entry_point}(" in p.prompt
        namespace: dict = {}
        exec(compile(p.canonical_program, p.task_id, "exec"), namespace)
        with pytest.raises((AssertionError, TypeError)):  # a wrong body fails the tests
            exec(compile(p.program("    return None\n"), p.task_id, "exec"), {})


def test_roundtrip_and_gzip(tmp_path):
    problems = mini_humaneval()[:3]
    path = tmp_path / "p.jsonl"
    save_problems(problems, path)
    assert load_problems(path) == problems
    gz = tmp_path / "p.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(path.read_text())
    assert load_problems(gz) == problems


@pytest.mark.parametrize("record, message", [
    ({"task_id": "x", "prompt": "", "canonical_solution": "", "test": ""}, "entry_point"),
    ({"task_id": "x", "prompt": 1, "canonical_solution": "", "test": "", "entry_point": "f"}, "prompt"),
])
def test_invalid_records(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(LmlabError, match=message):
        load_problems(path)


def test_bad_json_and_duplicates(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(LmlabError, match="bad.jsonl:1"):
        load_problems(path)
    p = mini_humaneval()[0]
    save_problems([p, p], path)
    with pytest.raises(LmlabError, match="duplicate"):
        load_problems(path)
    with pytest.raises(LmlabError):
        load_problems(tmp_path / "missing.jsonl")


def test_program_layout():
    p = CodeProblem("t/0", "def f(x):\n", "    return x\n", "def check(c):\n    assert c(1) == 1\n", "f")
    assert p.program("    return x\n") == "def f(x):\n    return x\n\n\ndef check(c):\n    assert c(1) == 1\n\n\ncheck(f)\n"


def test_truncate_completion():
    text = "    return 1\n\ndef other():\n    pass\n"
    assert truncate_completion(text) == "    return 1\n"
    assert truncate_completion("    x = 1\n    if x:\n        return x\nprint(3)") == "    x = 1\n    if x:\n        return x"
    assert truncate_completion("    return 2") == "    return 2"


def test_model_generator_is_seeded_and_aligned():
    from lmlab.core.config import ModelConfig
    from lmlab.core.model import Transformer
    from lmlab.core.tokenizer import train_bpe

    problems = mini_humaneval()
    tok = train_bpe([p.prompt + p.canonical_solution for p in problems], 300)
    model = Transformer(ModelConfig.llama_like(tok.vocab_size, d_model=32, n_layers=1, n_heads=2)).init_weights(seed=0)
    gen = model_generator(model, tok, max_new_tokens=8, temperature=1.0, seed=5)
    a, b = gen(problems[0].prompt, 3), gen(problems[0].prompt, 3)
    assert a == b and len(a) == 3
    assert len(set(a)) > 1  # different seeds per sample
    greedy = model_generator(model, tok, max_new_tokens=8, temperature=0.0)
    g = greedy(problems[1].prompt, 2)
    assert g[0] == g[1]
