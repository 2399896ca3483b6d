"""Plug-in discovery (application layer): import every module that registers components.

The core registry knows names only once their modules are imported. `load_plugins()` imports the
shipped plug-in packages (backbones, learners, scenarios, plasticity, memory) and every third-party
module declared under the `agentlab.plugins` entry-point group:

    [project.entry-points."agentlab.plugins"]
    mylab = "mylab.components"        # a module (or package) whose imports call agentlab.registry.register

Benchmarks are a leaf: `load_benchmarks()` imports them, and only `agentlab bench` and `agentlab list` call it.
Heavy imports (Avalanche) stay inside functions of the component modules, so this stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

PLUGIN_PACKAGES = ("agentlab.backbones", "agentlab.learners", "agentlab.scenarios", "agentlab.plasticity", "agentlab.memory")
ENTRY_POINT_GROUP = "agentlab.plugins"

_done: set[str] = set()


def _import_package(name: str) -> None:
    if name in _done:
        return
    pkg = importlib.import_module(name)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=name + "."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(info.name)
    _done.add(name)


def load_plugins() -> None:
    """Import the shipped component packages and the `agentlab.plugins` entry points, once."""
    for name in PLUGIN_PACKAGES:
        _import_package(name)
    if ENTRY_POINT_GROUP not in _done:
        _done.add(ENTRY_POINT_GROUP)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()


def load_benchmarks() -> None:
    """Also import every benchmark (for `agentlab bench` and `agentlab list`)."""
    load_plugins()
    _import_package("agentlab.bench")
