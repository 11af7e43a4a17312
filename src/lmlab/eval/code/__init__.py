"""Functional-correctness evaluation of generated code (HumanEval / pass@k) and its robustness (ReCode).

    from lmlab.eval.code import mini_humaneval, evaluate_samples, SandboxConfig
    problems = mini_humaneval()
    samples = {p.task_id: [generate(p.prompt) for _ in range(10)] for p in problems}
    result = evaluate_samples(problems, samples, ks=(1, 5, 10), config=SandboxConfig(timeout_s=5))
    result.pass_at_k                      # {"pass@1": ..., "pass@5": ..., "pass@10": ...}

Modules: :mod:`.problems` (HumanEval-format loading), :mod:`.passk` (the unbiased estimator),
:mod:`.sandbox` (isolated, limited execution; the verdict from a separate judge process, :mod:`.sandbox_child`),
:mod:`.recode` (perturbations, RP/RD/RR metrics).
"""

from lmlab.eval.code.passk import mean_pass_at_k, pass_at_k, pass_at_ks
from lmlab.eval.code.problems import (STOP_SEQUENCES, CodeProblem, load_problems, mini_humaneval, model_generator,
                                      program_for, save_problems, truncate_completion)
from lmlab.eval.code.recode import (CATEGORIES, KINDS, evaluate_robustness, nominal, partial_problem, perturb,
                                    perturbed_variants, robust_metrics)
from lmlab.eval.code.sandbox import (CodeEvalResult, SandboxConfig, SandboxResult, check_completion, evaluate_samples,
                                     run_check, run_program)

__all__ = [
    "CATEGORIES", "KINDS", "CodeEvalResult", "CodeProblem", "SandboxConfig", "SandboxResult", "check_completion",
    "evaluate_robustness", "evaluate_samples", "load_problems", "mean_pass_at_k", "mini_humaneval", "nominal",
    "partial_problem", "pass_at_k", "pass_at_ks", "perturb", "perturbed_variants", "program_for", "robust_metrics",
    "run_check", "run_program", "save_problems", "STOP_SEQUENCES", "model_generator", "truncate_completion",
]
