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


# extras that CI does not install (heavy, and their tests skip with a reason without them)
UNPINNED_EXTRAS = ("mlflow",)


def _declared() -> list[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    return meta["dependencies"] + [r for name, rs in extras.items() if name not in UNPINNED_EXTRAS for r in rs]


def test_pyproject_ranges_admit_the_pins():
    reqs = [Requirement(r) for r in _declared()]
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
# (onnxscript: torch.onnx's; pytest-xdist: a pytest plugin; isal: uproot's, for ZLIB.library = "isal")
NOT_IMPORTED = {"jupyterlab", "ipykernel", "nbval", "ruff", "pytest", "pytest-xdist", "onnxscript", "isal"}
IMPORT_NAME = {"pyyaml": "yaml"}


def test_every_dependency_is_used():
    names = [_norm(Requirement(r).name) for r in _declared()]
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


def test_configs_and_the_dead_channel_map_ship_as_package_data():
    """``pip install .`` (not editable) must carry them: pyproject's package-data covers every file."""
    import fnmatch

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = [f"{pkg.replace('.', '/')}/{pattern}" for pkg, patterns in data.items() for pattern in patterns]
    needed = [p.relative_to(ROOT).as_posix() for p in (ROOT / "xecbench" / "configs").glob("*.yaml")]
    needed.append("xecbench/data/dead_channels.txt")
    assert len(needed) >= 7
    for path in needed:
        assert any(fnmatch.fnmatch(path, pattern) for pattern in shipped), f"{path} is not package data"
    # the clone's configs/ and data/dead_channels.txt are the packaged files, not copies
    assert (ROOT / "configs").resolve() == (ROOT / "xecbench" / "configs").resolve()
    assert (ROOT / "data" / "dead_channels.txt").resolve() == (
        ROOT / "xecbench" / "data" / "dead_channels.txt"
    ).resolve()


def test_a_config_is_named_by_its_short_name_from_any_folder(tmp_path, monkeypatch):
    from xecbench.train import ConfigError, load_config
    from xecbench.train.config import packaged_configs

    monkeypatch.chdir(tmp_path)
    assert packaged_configs() == ["inpaint", "inpaint_tiny", "mae", "mae_tiny", "regress", "regress_tiny"]
    assert load_config("mae_tiny").model.preset == "tiny"
    assert load_config("mae.yaml").model.preset == "base"
    (tmp_path / "mae_tiny.yaml").write_text("training:\n  epochs: 9\n")  # a file of that name wins
    assert load_config("mae_tiny.yaml").training.epochs == 9
    try:
        load_config("mae_small")
    except FileNotFoundError as exc:
        assert "no packaged config has that name" in str(exc) and "mae_tiny" in str(exc)
    else:
        raise AssertionError("an unknown name must fail")
    assert ConfigError  # imported for the error type the CLI maps; a missing file is FileNotFoundError
