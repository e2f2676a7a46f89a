"""scripts/mutation_check.py's mutant list still applies to the sources (nothing is run)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "mutation_check", ROOT / "scripts/mutation_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_mutant_pattern_is_found_exactly_once():
    mc = _script()
    assert mc.check_patterns(ROOT) == []
    assert len(mc.MUTANTS) >= 36
    # the checker itself can fail: a pattern that is not in the file is reported
    bad = mc.Mutant("x", "updetr_lite/models/detr.py", "no such source line", "y", "tests/x.py")
    mc.MUTANTS.append(bad)
    try:
        problems = mc.check_patterns(ROOT)
    finally:
        mc.MUTANTS.pop()
    assert problems == [
        "x: pattern found 0 times in updetr_lite/models/detr.py",
        "x: no test file tests/x.py",
    ]
    # a -k expression with spaces stays one pytest argument
    assert mc._split("tests/a.py tests/b.py -k lr or seed") == [
        "tests/a.py",
        "tests/b.py",
        "-k",
        "lr or seed",
    ]
