"""Packaging: every subpackage is listed in pyproject (a missing one is silently left out of the wheel)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = {"datasets": "clinfuse.datasets", "encoders": "clinfuse.encoders", "fusion": "clinfuse.fusion"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages_on_disk() -> set[str]:
    found = set()
    for folder, dotted in CODE_FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([dotted, *rel.parts]))
    return found


def test_every_subpackage_on_disk_is_listed_in_pyproject():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = _packages_on_disk()
    assert on_disk - listed == set(), f"add these to [tool.setuptools].packages: {sorted(on_disk - listed)}"
    assert listed - on_disk == set(), f"listed but missing on disk: {sorted(listed - on_disk)}"


def test_package_dir_maps_the_three_folders_under_the_clinfuse_namespace():
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    assert mapping == {v: k for k, v in CODE_FOLDERS.items()}
    assert not (ROOT / "clinfuse" / "__init__.py").exists(), "clinfuse must stay a namespace package"


@pytest.mark.parametrize("bare", ["datasets", "encoders", "fusion"])
def test_bare_names_are_not_installed(bare):
    # The test runs against the installed package with the repository root off sys.path
    # (--import-mode=importlib), so a bare import must find nothing of ours.
    code = f"import importlib.util, sys; s = importlib.util.find_spec({bare!r}); " \
           "print('none' if s is None else s.origin)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    origin = out.stdout.strip()
    assert origin == "none" or str(ROOT) not in origin, f"bare {bare!r} resolves to our folder: {origin}"


def test_console_script_version_and_help():
    out = subprocess.run([sys.executable, "-m", "clinfuse.fusion.cli", "--version"], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0 and out.stdout.startswith("clinfuse "), out.stderr
    out = subprocess.run([sys.executable, "-m", "clinfuse.fusion.cli", "--help"],
                         capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0
    for command in ("demo", "train", "predict", "explain"):
        assert command in out.stdout


def test_each_package_ships_py_typed():
    """PEP 561: the marker is on disk, declared as package data and visible in the installed package."""
    from importlib.resources import files

    package_data = _pyproject()["tool"]["setuptools"]["package-data"]
    for folder, dotted in CODE_FOLDERS.items():
        assert (ROOT / folder / "py.typed").is_file(), f"{folder}/py.typed is missing"
        assert "py.typed" in package_data.get(dotted, []), f"add py.typed to package-data of {dotted}"
        assert files(dotted).joinpath("py.typed").is_file()


def test_docs_nav_pages_exist():
    """Every page mkdocs.yml's nav names is in docs/ (mkdocs build --strict runs in .ci/run)."""
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav):
        for item in nav:
            if isinstance(item, str):
                yield item
            else:
                for value in item.values():
                    yield from ([value] if isinstance(value, str) else pages(value))

    listed = list(pages(config["nav"]))
    assert len(listed) >= 6
    missing = [p for p in listed if not (ROOT / config.get("docs_dir", "docs") / p).is_file()]
    assert not missing, f"mkdocs.yml nav names missing pages: {missing}"
    assert "docs" in _pyproject()["project"]["optional-dependencies"]


def test_no_torchvision_or_timm_in_core_dependencies():
    deps = " ".join(_pyproject()["project"]["dependencies"]).lower()
    assert "torchvision" not in deps and "timm" not in deps


@pytest.mark.slow
def test_built_wheel_holds_every_subpackage_and_no_bare_names(tmp_path):
    """``pip install .`` installs what the wheel holds: every package on disk, all under clinfuse."""
    import zipfile

    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("clinfuse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"clinfuse", wheel.name.split("-py3")[0] + ".dist-info"}
    packaged = {".".join(n.split("/")[:-1]) for n in names if n.endswith("/__init__.py")}
    assert packaged == _packages_on_disk()
    assert "clinfuse/__init__.py" not in names  # namespace package
    for dotted in CODE_FOLDERS.values():  # PEP 561: each package ships its py.typed marker
        assert dotted.replace(".", "/") + "/py.typed" in names


def test_cli_starts_without_importing_torch():
    code = "import sys; from clinfuse.fusion.cli import build_parser; build_parser(); " \
           "sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd="/", check=False).returncode == 0


@pytest.mark.slow  # each starts a fresh interpreter that imports torch
@pytest.mark.parametrize("module, registry, name", [("clinfuse.fusion.base", "AGGREGATORS", "persam"),
                                                    ("clinfuse.encoders.base", "ENCODERS", "feature_bag")])
def test_registries_are_complete_however_they_are_reached(module, registry, name):
    code = (f"from {module} import {registry} as R; import sys; "
            f"sys.exit(0 if {name!r} in R and len(R) > 3 else 1)")
    assert subprocess.run([sys.executable, "-c", code], cwd="/", check=False).returncode == 0


def test_docs_list_every_yaml_key():
    """The YAML key tables of the CLI guide name every key the loaders accept (they were written from
    ``clinfuse.fusion.config``; a key added there must be documented)."""
    from clinfuse.fusion import config

    doc = (ROOT / "docs" / "guide" / "cli.md").read_text()
    keys = {**config.data_keys(), **config.RUN_KEYS, **config.TUNE_KEYS}
    missing = [k for k in keys if f"| `{k}` |" not in doc]
    assert not missing, f"docs/guide/cli.md does not document the YAML key(s) {missing}"
