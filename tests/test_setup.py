"""The project's set-up: pip and conda dependency lists agree; CI runs the README's test command."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[=<>!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_deps() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta["optional-dependencies"].values():
        reqs += extra
    return {_name(r): r.replace(" ", "") for r in reqs}


def _conda_pip_deps() -> dict[str, str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = []
    for line in lines[start + 1 :]:
        m = re.match(r"\s+- (.+)", line)
        if not m:
            break
        if not m.group(1).startswith("-e"):
            reqs.append(m.group(1))
    return {_name(r): r.replace(" ", "") for r in reqs}


def test_environment_yml_matches_pyproject():
    pip, conda = _pyproject_deps(), _conda_pip_deps()
    assert set(pip) == set(conda), (
        f"only pip: {set(pip) - set(conda)}, only conda: {set(conda) - set(pip)}"
    )
    for name in pip:  # same pins
        assert pip[name] == conda[name], name


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    commands = [line.strip() for b in blocks for line in b.splitlines() if line.strip()]
    assert "bash test.sh" in commands and "bash run.sh" in commands
    assert re.search(r"^bash test\.sh$", ci, re.M), ".ci/run must call the README's test command"
