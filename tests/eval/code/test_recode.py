"""ReCode perturbations keep the canonical solutions correct; robust metrics match hand computations."""

import ast

import pytest

from lmlab.errors import LmlabError
from lmlab.eval.code.problems import mini_humaneval
from lmlab.eval.code.recode import (CATEGORIES, KINDS, evaluate_robustness, nominal, partial_problem, perturb,
                                    robust_metrics)
from lmlab.eval.code.sandbox import SandboxConfig

PROBLEMS = mini_humaneval()


def passes(problem) -> bool:
    namespace: dict = {}
    try:
        exec(compile(problem.canonical_program, "<canonical>", "exec"), namespace)  # our own trusted solutions
    except Exception:  # noqa: BLE001 -- any error means the canonical program does not pass
        return False
    return True


def test_every_category_has_kinds():
    assert set(CATEGORIES) == {"docstring", "func_name", "syntax", "format"}
    assert len(KINDS) == sum(len(v) for v in CATEGORIES.values()) >= 15


@pytest.mark.parametrize("kind", KINDS)
def test_perturbed_canonical_solutions_still_pass(kind):
    changed = 0
    for p in PROBLEMS:
        assert passes(nominal(p, kind)), (kind, p.task_id)
        for seed in range(3):
            q = perturb(p, kind, seed)
            assert passes(q), f"{kind} seed {seed} broke {p.task_id}:\n{q.canonical_program}"
            assert q.test == p.test
            changed += q.prompt != nominal(p, kind).prompt
    assert changed >= 6, f"{kind} changed only {changed} of {3 * len(PROBLEMS)} prompts"


@pytest.mark.parametrize("kind", KINDS)
def test_perturbations_are_deterministic(kind):
    p = PROBLEMS[1]
    assert perturb(p, kind, 7) == perturb(p, kind, 7)


def test_seeds_give_different_variants():
    p = PROBLEMS[0]
    variants = {perturb(p, "doc_typo", s).prompt for s in range(5)}
    assert len(variants) >= 4


def test_expected_kinds_of_change():
    p = PROBLEMS[0]  # count_vowels
    assert perturb(p, "func_camel").entry_point == "countVowels"
    assert "countVowels(" in perturb(p, "func_camel").prompt and "count_vowels" not in perturb(p, "func_camel").prompt
    typo = perturb(p, "doc_typo", 0)
    assert typo.prompt.split('"""')[0] == p.prompt.split('"""')[0]  # signature untouched
    assert '>>> count_vowels("Banana")' in typo.prompt  # doctest lines untouched
    assert "while" in perturb(p, "for_while").prompt and "for ch in" not in perturb(p, "for_while").prompt
    assert "if False:" in perturb(p, "dead_code", 0).prompt or "while False:" in perturb(p, "dead_code", 0).prompt
    assert "VAR_0" in perturb(p, "var_rename_naive").prompt
    assert "\t" in perturb(p, "tab_indent").prompt
    assert "\\\n" in perturb(p, "split_lines").prompt
    assert '"""' not in perturb(p, "doc2comments").prompt and "# Return how many vowels" in perturb(p, "doc2comments").prompt
    palin = PROBLEMS[3]
    assert "while right > left" in perturb(palin, "operand_swap").prompt


def test_partial_code_keeps_half_the_body_in_the_prompt():
    for p in PROBLEMS:
        part = partial_problem(p)
        ast.parse(part.prompt + part.canonical_solution)
        assert part.canonical_solution.strip(), p.task_id  # something is left to complete
        body_lines = [line for line in (part.prompt + part.canonical_solution).split('"""')[-1].split("\n") if line.strip()]
        prompt_lines = [line for line in part.prompt.split('"""')[-1].split("\n") if line.strip()]
        assert len(prompt_lines) >= len(body_lines) / 2 or len(body_lines) <= 2, p.task_id


def test_unknown_kind():
    with pytest.raises(LmlabError):
        perturb(PROBLEMS[0], "rot13")


def test_robust_metrics_on_a_constructed_table():
    # n = 2 samples, s = 2 variants, k = 1
    nominal_out = {"a": [True, True], "b": [True, False], "c": [False, False]}
    perturbed = {
        "a": [[True, True], [True, False]],    # sample 1 breaks on variant 2
        "b": [[True, False], [True, True]],    # sample 0 robust; sample 1 fixed by variant 2
        "c": [[False, False], [False, False]],
    }
    m = robust_metrics(nominal_out, perturbed, k=1)
    # pass@1: a 1, b 1/2, c 0 -> 1/2
    assert m["pass@1"] == pytest.approx(0.5)
    # rc_s: a 1 of 2, b 1 of 2, c 0 -> RP = (1/2 + 1/2 + 0) / 3
    assert m["RP@1"] == pytest.approx(1 / 3)
    assert m["RD@1"] == pytest.approx((0.5 - 1 / 3) / 0.5)
    # rc-: a 1 (sample 1), b 0, c 0;  rc+: a 0, b 1 (sample 1), c 0 -> RR = (1/2 + 1/2) / 3
    assert m["RR@1"] == pytest.approx(1 / 3)
    m2 = robust_metrics(nominal_out, perturbed, k=2)
    assert m2["pass@2"] == pytest.approx((1 + 1 + 0) / 3)
    assert m2["RP@2"] == pytest.approx((1 + 1 + 0) / 3)
    assert m2["RD@2"] == pytest.approx(0.0)


def test_robust_metrics_validation():
    with pytest.raises(LmlabError):
        robust_metrics({"a": [True]}, {"b": [[True]]})
    with pytest.raises(LmlabError):
        robust_metrics({"a": [True, False]}, {"a": [[True]]})


def test_end_to_end_oracle_vs_brittle_generator():
    problems = PROBLEMS[:3]
    kinds = ("func_camel", "for_while")
    solutions = {}
    for p in problems:
        for kind in kinds:
            solutions[nominal(p, kind).prompt] = nominal(p, kind).canonical_solution
            for seed in range(2):
                q = perturb(p, kind, seed)
                solutions[q.prompt] = q.canonical_solution
    nominal_prompts = {nominal(p, k).prompt for p in problems for k in kinds}

    def oracle(prompt, n):  # solves every prompt it is shown
        return [solutions[prompt]] * n

    def brittle(prompt, n):  # solves only the exact nominal prompts
        return [solutions[prompt] if prompt in nominal_prompts else "    return None\n"] * n

    cfg = SandboxConfig(timeout_s=5.0)
    good = evaluate_robustness(problems, oracle, kinds=kinds, s=2, n=1, k=1, config=cfg)
    bad = evaluate_robustness(problems, brittle, kinds=kinds, s=2, n=1, k=1, config=cfg)
    for kind in kinds:
        assert good[kind]["pass@1"] == 1.0 and good[kind]["RP@1"] == 1.0 and good[kind]["RD@1"] == 0.0
        assert good[kind]["RR@1"] == 0.0
        assert bad[kind]["pass@1"] == 1.0
        changed = sum(perturb(p, kind, s).prompt != nominal(p, kind).prompt or perturb(p, kind, s).entry_point
                      != p.entry_point for p in problems for s in range(2))
        assert changed > 0
        assert bad[kind]["RP@1"] < 1.0 and bad[kind]["RD@1"] > 0.0 and bad[kind]["RR@1"] > 0.0
