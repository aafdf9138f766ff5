"""Each service's modules import with only the base dependencies plus the service's own extra installed
(what its container image gets): imports from any other distribution are blocked in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Modules loaded by tritonserver's python backend (they import triton_python_backend_utils, which
# exists only inside Triton), and the export, a build step with its own extra.
RUNS_INSIDE_TRITON = "services/embedder/triton_models/"
EXTRAS_OF = {"services/embedder/export.py": ("embedder", "export")}


def closure(requirements: list[str]) -> set[str]:
    """The installed distributions that `requirements` pull in, transitively, following the extras
    they name (tritonclient[grpc] brings what its grpc extra requires)."""
    seen: set[tuple[str, str]] = set()
    names: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        for wanted in ["", *sorted(requirement.extras)]:
            if (name, wanted) in seen or name == "semsearch":
                continue
            seen.add((name, wanted))
            names.add(name)
            try:
                requires = metadata.requires(name) or []
            except metadata.PackageNotFoundError:
                continue
            todo += [(Requirement(r), wanted) for r in requires]
    return names


def allowed_distributions(extras: tuple[str, ...]) -> set[str]:
    project = PYPROJECT["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return closure(requirements)


def blocked_top_levels(allowed: set[str]) -> set[str]:
    """Top-level import names that belong only to installed distributions outside `allowed`."""
    owners: dict[str, set[str]] = {}
    for top, dists in metadata.packages_distributions().items():
        owners.setdefault(top, set()).update(canonicalize_name(d) for d in dists)
    return {
        top for top, dists in owners.items() if not dists & allowed and top not in ("semsearch", "services")
    }


BLOCKER = """
import importlib.abc, sys
BLOCKED = set({blocked!r})
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is not in this service's dependency set", name=name)
        return None
sys.meta_path.insert(0, Blocker())
import importlib
for module in {modules!r}:
    importlib.import_module(module)
print("imported", len({modules!r}), "modules")
"""


def service_modules(service: str) -> dict[tuple[str, ...], list[str]]:
    """The service's modules grouped by the extras they may use."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for path in sorted((ROOT / "services" / service).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(RUNS_INSIDE_TRITON) or path.name == "__main__.py":
            continue
        module = rel[:-3].replace("/", ".").removesuffix(".__init__")
        groups.setdefault(EXTRAS_OF.get(rel, (service,)), []).append(module)
    return groups


@pytest.mark.parametrize("service", ["indexer", "gateway", "embedder", "explorer"])
def test_a_service_imports_with_only_its_own_dependency_set(service):
    for extras, modules in service_modules(service).items():
        blocked = blocked_top_levels(allowed_distributions(extras))
        assert blocked, "nothing would be blocked: the check could not fail"
        script = BLOCKER.format(blocked=sorted(blocked), modules=modules)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, f"{service} with extras {extras}:\n{result.stderr[-2000:]}"


def test_the_blocker_catches_a_module_outside_the_set():
    blocked = blocked_top_levels(allowed_distributions(("indexer",)))
    assert {"redis", "PIL", "tritonclient"} <= blocked and "faiss" not in blocked
    script = BLOCKER.format(blocked=sorted(blocked), modules=["services.gateway.cache"])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and "not in this service's dependency set" in result.stderr
