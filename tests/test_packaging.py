"""requirements.txt (pins for CI), pyproject.toml (ranges) and environment.yml must agree."""

import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            spec = str(req.specifier)
            assert spec.startswith("=="), f"requirements.txt must pin exact versions: {line}"
            pins[_norm(req.name)] = spec[2:]
    return pins


def test_torch_is_pinned_to_the_cpu_wheel():
    assert _pins()["torch"] == "2.13.0"


def test_pyproject_ranges_admit_the_pins():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in meta["dependencies"] + meta["optional-dependencies"]["test"]]
    ranges = {_norm(r.name): r.specifier for r in reqs}
    pins = _pins()
    assert set(ranges) == set(pins), (
        f"only in pyproject: {set(ranges) - set(pins)}; only pinned: {set(pins) - set(ranges)}"
    )
    for name, spec in ranges.items():
        assert spec.contains(pins[name]), f"{name}=={pins[name]} is outside pyproject's {spec}"


def test_environment_yml_has_the_same_versions():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    found = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                name, version = line.split("==")
                found[_norm(name)] = version
        elif "=" in dep:
            name, version = dep.split("=", 1)
            found[_norm(name)] = version.lstrip("=")
    found.pop("python", None)
    assert found == _pins()


# distributions used as tools or kernels, not imported; and import names that differ from the distribution's
NOT_IMPORTED = {"jupyterlab", "ipykernel", "nbval", "ruff", "pytest"}
IMPORT_NAME = {"pyyaml": "yaml"}


def test_every_dependency_is_used():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [_norm(Requirement(r).name) for r in meta["dependencies"] + meta["optional-dependencies"]["test"]]
    sources = [p for d in ("xecbench", "tests", "benchmarks", "notebooks") for p in (ROOT / d).rglob("*.py")]
    sources += list((ROOT / "notebooks").glob("*.ipynb"))
    text = "\n".join(p.read_text() for p in sources)
    for name in names:
        if name in NOT_IMPORTED:
            continue
        module = IMPORT_NAME.get(name, name.replace("-", "_"))
        assert (
            re.search(rf"^\s*(import|from) {module}\b", text, re.M)
            or f'"import {module}' in text
            or (f'"from {module}' in text)
        ), f"{name} is a dependency that nothing imports"
