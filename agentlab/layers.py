"""Finding and replacing a backbone's layers by their dotted names (`layers.0`, `blocks.1.attn.out_proj`).

Plasticity modules wrap layers in place: the wrapper takes the layer's name in its
parent, so the backbone's own `forward` calls the wrapper without knowing of it.
"""

from __future__ import annotations

from torch import nn


def replace_layer(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` where the submodule called `name` sits in `root`; returns the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = parent.get_submodule(child)
    setattr(parent, child, new)
    return old
