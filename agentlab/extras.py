"""Optional dependencies: a feature that needs one imports it through `require`, which names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from agentlab.errors import UserError

# extra -> the distributions it installs (pyproject.toml's [project.optional-dependencies])
EXTRAS = {"ann": "faiss-cpu", "ray": "ray[default]", "dnc-reference": "dnc"}


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """`import module`, or a UserError saying which feature needs it and `pip install 'agentlab[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(
            f"{feature} needs the optional package {EXTRAS.get(extra, module)!r}, which is not installed ({e}); "
            f"install it with: pip install 'agentlab[{extra}]'"
        ) from None
