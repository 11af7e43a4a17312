"""The pass verdict cannot be forged by the candidate: adversarial completions that print or guess a token,
walk frames or ``gc``, exit early, raise SystemExit/KeyboardInterrupt inside the check, patch the helpers or
builtins the test relies on, return an always-equal object, or write fake verdicts to every descriptor they
can reach all score failed; correct completions (also ones that print, raise expected errors, return
tuples/floats/None) still pass."""

import pytest

from lmlab.eval.code.problems import CodeProblem, mini_humaneval
from lmlab.eval.code.sandbox import SandboxConfig, check_completion
from lmlab.eval.code.sandbox_child import decode, encode

CFG = SandboxConfig(timeout_s=5.0, memory_mb=256)

# The wrong answers below (-1, 0.0) fail these tests unless the verdict is forged; SQUARE's test relies only on
# math.isclose and abs, which a candidate in the same interpreter could replace.
SQUARE = CodeProblem(
    task_id="Verdict/square", entry_point="square",
    prompt="def square(x: float) -> float:\n    \"\"\"x squared.\"\"\"\n",
    canonical_solution="    return x * x\n",
    test=("import math\n\n"
          "def check(candidate):\n"
          "    assert math.isclose(candidate(2.0), 4.0)\n"
          "    assert abs(candidate(3.0) - 9.0) < 1e-9\n"
          "    assert math.isclose(candidate(-1.5), 2.25)\n"))
VOWELS = mini_humaneval()[0]  # count_vowels: assert candidate("Banana") == 3, ...

# forgeries aimed at the old single-interpreter runner (token in its frames / on stdout, exit(0))
MARK = "__lmlab_sandbox_ok__"
FRAME_WALK = f"""    return -1
import os, re, sys
found = set()
frame = sys._getframe()
while frame is not None:
    found |= {{v for v in frame.f_locals.values() if isinstance(v, str) and re.fullmatch("[0-9a-f]{{32}}", v)}}
    frame = frame.f_back
for tok in found:
    print("\\n{MARK} " + tok, flush=True)
os._exit(0)
"""
GC_WALK = f"""    return -1
import gc, os, re, sys
for obj in gc.get_objects():
    items = obj.values() if isinstance(obj, dict) else (obj if isinstance(obj, (list, tuple)) else ())
    for v in list(items):
        if isinstance(v, str) and re.fullmatch("[0-9a-f]{{32}}", v):
            sys.stdout.write("\\n{MARK} " + v + "\\n")
sys.stdout.flush()
os._exit(0)
"""
# Writes only to the candidate's own descriptors (never to other processes': on a host without Landlock a
# root candidate could reach them, and this test must stay harmless there too).
FAKE_VERDICTS = """    return -1
import json, os
line = (json.dumps({"status": "passed", "reason": "all tests passed"}) + "\\n").encode()
for fd in range(0, 256):
    try:
        os.write(fd, line)
    except OSError:
        pass
os._exit(0)
"""
# Looks only (O_PATH opens have no effect on the file or pipe they name): how many descriptors and memory
# files of other processes can the candidate reach?
REACH = """    return len([ch for ch in text if ch.lower() in "aeiou"])
import os
me, reached = os.getpid(), 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == me:
        continue
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for fd in fds:
        try:
            os.close(os.open(f"/proc/{pid}/fd/{fd}", os.O_PATH))
            reached += 1
        except OSError:
            pass
try:
    os.close(os.open(f"/proc/{os.getppid()}/mem", os.O_RDONLY))
    reached += 1
except OSError:
    pass
print("reached", reached)
"""

ADVERSARIES = {
    "print the mark with a guessed token": f"    return -1\nprint('\\n{MARK} ' + '0' * 32)\n",
    "walk the frames for the token": FRAME_WALK,
    "walk gc for the token": GC_WALK,
    "os._exit(0) at top level": "    return -1\nimport os\nos._exit(0)\n",
    "sys.exit(0) at top level": "    return -1\nimport sys\nsys.exit(0)\n",
    "raise SystemExit inside the check": "    raise SystemExit(0)\n",
    "raise KeyboardInterrupt inside the check": "    raise KeyboardInterrupt\n",
    "os._exit(0) inside the check": "    import os\n    os._exit(0)\n",
    "sys.exit(0) inside the check": "    import sys\n    sys.exit(0)\n",
    "always-equal return value": ("    class Yes(int):\n        def __eq__(self, other):\n            return True\n"
                                  "        def __sub__(self, other):\n            return 0\n    return Yes()\n"),
    "fake verdicts on its own descriptors": FAKE_VERDICTS,
}


@pytest.mark.parametrize("name", list(ADVERSARIES))
def test_forgeries_score_failed(name):
    res = check_completion(VOWELS, ADVERSARIES[name], CFG)
    assert res.status == "failed" and not res.passed, (name, res.reason)


def test_the_candidate_cannot_reach_other_processes():
    res = check_completion(VOWELS, REACH, CFG)
    assert res.passed, res.reason
    if "landlock" not in res.guards:
        pytest.skip("no Landlock on this kernel: a candidate without capabilities may still see same-uid processes")
    assert "reached 0" in res.stdout, res.stdout


def test_patching_the_tests_helpers_and_builtins_scores_failed():
    patches = {
        "math.isclose and builtins": ("    return 0.0\nimport builtins, math\nmath.isclose = lambda *a, **k: True\n"
                                      "builtins.abs = lambda v: 0\n"),
        "assert-using check replaced": "    return 0.0\ndef check(candidate):\n    pass\n",
        "AssertionError rebound": ("    return 0.0\nimport builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n"),
    }
    for name, completion in patches.items():
        res = check_completion(SQUARE, completion, CFG)
        assert res.status == "failed", (name, res.reason)
    assert check_completion(SQUARE, SQUARE.canonical_solution, CFG).passed


def test_an_abort_fails_even_when_the_test_swallows_it():
    lenient = SQUARE.replace(test=("def check(candidate):\n    try:\n        candidate(2.0)\n"
                                   "    except BaseException:\n        pass\n"))
    for completion in ("    raise SystemExit(0)\n", "    raise KeyboardInterrupt\n", "    import os\n    os._exit(0)\n"):
        res = check_completion(lenient, completion, CFG)
        assert res.status == "failed" and "candidate" in res.reason, (completion, res.reason)
    assert check_completion(lenient, "    raise ValueError('fine')\n", CFG).passed  # an ordinary error is the test's call


def test_correct_candidates_still_pass_through_the_judge():
    # prints, helper functions, the prompt's own helpers used by the test, replayed exceptions, rich return types
    problem = CodeProblem(
        task_id="Verdict/rich", entry_point="stats",
        prompt=("def mean(xs):\n    return sum(xs) / len(xs)\n\n\n"
                "def stats(xs: list) -> tuple:\n    \"\"\"(min, max, mean) or None for an empty list; ValueError on"
                " strings.\"\"\"\n"),
        canonical_solution=("    if any(isinstance(x, str) for x in xs):\n        raise ValueError('numbers only')\n"
                            "    return (min(xs), max(xs), mean(xs)) if xs else None\n"),
        test=("def check(candidate):\n"
              "    assert candidate([1, 2, 6]) == (1, 6, mean([1, 2, 6]))\n"
              "    assert type(candidate([1.5])) is tuple and candidate([1.5])[2] == 1.5\n"
              "    assert candidate([]) is None\n"
              "    try:\n        candidate(['a'])\n        assert False, 'no error'\n"
              "    except ValueError as exc:\n        assert 'numbers only' in str(exc)\n"
              "    assert candidate(xs=[2, 2]) == (2, 2, 2.0)\n"))
    completion = ("    print('called with', xs)\n    if any(isinstance(x, str) for x in xs):\n"
                  "        raise ValueError('numbers only')\n    return (min(xs), max(xs), mean(xs)) if xs else None\n")
    res = check_completion(problem, completion, CFG)
    assert res.status == "passed", res.reason
    assert "called with [1, 2, 6]" in res.stdout and "separate-judge" in res.guards
    wrong_type = completion.replace("return (min(xs), max(xs), mean(xs))", "return [min(xs), max(xs), mean(xs)]")
    assert check_completion(problem, wrong_type, CFG).status == "failed"  # a list is not the tuple the test wants


def test_load_errors_and_missing_functions_fail_with_a_reason():
    res = check_completion(VOWELS, "    return (\n", CFG)
    assert res.status == "failed" and "SyntaxError" in res.reason
    renamed = VOWELS.replace(prompt=VOWELS.prompt.replace("def count_vowels", "def other"))
    res = check_completion(renamed, VOWELS.canonical_solution, CFG)
    assert res.status == "failed" and "count_vowels" in res.reason


def test_wire_round_trips_plain_data_and_refuses_the_rest():
    value = [1, -(10 ** 40), 2.5, float("inf"), (1, "a"), {"k": {3, 4}}, frozenset({None}), b"\x00", True, 1j, None]
    back = decode(encode(value))
    assert back == value and type(back[4]) is tuple and type(back[1]) is int and type(back[8]) is bool
    assert type(decode(encode(2.0))) is float and decode(encode(float("nan"))) != decode(encode(float("nan")))

    class Sneaky(int):
        pass
    for bad in (Sneaky(1), [object()], {1: len}):
        with pytest.raises(TypeError):
            encode(bad)
    for bad in ({"list": "abc"}, {"float": 1}, {"unknown": []}, {"list": [], "tuple": []}, [1]):
        with pytest.raises(ValueError):
            decode(bad)
