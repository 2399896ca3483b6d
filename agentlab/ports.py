"""The agent's side of attached memories: finding the attachment points, sizing, hooking, threading state.

`MemoryPorts` puts each attached memory (`agentlab.attachment.AttachedMemory`) at its point of the
backbone with forward hooks, so the backbone's own `forward` needs no change:

    "input"          a pre-hook on the backbone (images are handed over flattened, (B, C*H*W))
    (a memory that keys whole examples, `per_example`, gets every example as one vector at any point)
    "head"           a pre-hook on the last layer (`backbone.head_name` if the backbone names it,
                     else the last Linear / Conv2d in module order)
    "<layer name>"   a hook on that layer's output

Binding happens before plasticity modules wrap layers (so a read-out widened by a concatenating
memory is what they wrap); hooks are put on the final modules afterwards. The recurrent state of
each memory is kept here between forward calls and reset at the boundary the memory declares.
A store is written after every training step: `write` runs the backbone once more without
gradients, with the hooks recording the raw features at the stores' points (reads switched off),
and hands them to the stores with the labels and task ids.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from agentlab.attachment import PER_CALL, AttachedMemory, AttachmentError
from agentlab.layers import replace_layer


class _Captured(Exception):
    """Raised by the recording hooks once every feature a write needs is in hand (the rest of the forward is skipped)."""


def head_name(backbone: nn.Module) -> str:
    """The backbone's read-out: `backbone.head_name`, else its last Linear / Conv2d in module order."""
    named = getattr(backbone, "head_name", None)
    if named:
        return str(named)
    from agentlab.wrapping import WrappedLayer  # the read-out may be wrapped already

    outside, inside = "", ""
    for n, m in backbone.named_modules():
        if not n or ".base_layer" in n or ".transforms." in n or n.endswith(".base_layer"):
            continue
        if isinstance(m, (nn.Linear, nn.Conv2d, WrappedLayer)):
            if _inside_memory(backbone, n):
                inside = n  # a backbone that is a memory (the `dnc` sequence model) reads out through it
            else:
                outside = n
    if not (outside or inside):
        raise AttachmentError("the backbone has no Linear / Conv2d layer to call its head; attach at a named layer")
    return outside or inside


def _inside_memory(backbone: nn.Module, name: str) -> bool:
    parts = name.split(".")
    for i in range(1, len(parts)):
        from agentlab.protocols import MemoryModule

        if isinstance(backbone.get_submodule(".".join(parts[:i])), MemoryModule):
            return True
    return False


def _detach(state: Any) -> Any:
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, state)


def _batch(state: Any) -> int | None:
    leaves, _ = tree_flatten(state)
    return next((int(t.shape[0]) for t in leaves if isinstance(t, Tensor) and t.dim() > 0), None)


class MemoryPorts:
    """Hooks, widths and explicit states of an agent's attached memories (see the module docstring)."""

    def __init__(self, backbone: nn.Module, memories: Sequence[AttachedMemory], input_shape: Sequence[int] | None) -> None:
        self.memories = list(memories)
        self.input_shape = tuple(input_shape) if input_shape else None
        self.states: list[Any] = [None] * len(self.memories)
        self.points: list[str] = []
        self.handles: list[Any] = []
        self.capturing: dict[str, Tensor] | None = None  # point -> raw features, while `features` records them
        self.wanted: set[str] = set()
        for m in self.memories:
            self.points.append(self._bind(backbone, m))

    # ---------------------------------------------------------------- building
    def _bind(self, backbone: nn.Module, m: AttachedMemory) -> str:
        """Size `m` for the features at its point (widening the read-out for a concatenation); returns the point's
        module name ('' = the backbone itself, for "input")."""
        if m.at == "input":
            if not self.input_shape:
                raise AttachmentError(f"memory {m.name!r} at 'input' needs the input shape: Agent(..., input_shape=...)")
            stepwise = len(self.input_shape) == 2 and not m.per_example
            m.bind(self.input_shape[-1] if stepwise else math.prod(self.input_shape))
            return ""
        try:
            name = head_name(backbone) if m.at == "head" else m.at
        except AttachmentError as e:
            raise AttachmentError(f"memory {m.name!r} at 'head': {e}") from None
        try:
            layer = backbone.get_submodule(name)
        except AttributeError:
            layers = [n for n, _ in backbone.named_modules() if n]
            raise AttachmentError(f"memory {m.name!r}: at={m.at!r} is not a layer of the backbone; its layers: "
                                  f"{', '.join(layers[:40])}{' ...' if len(layers) > 40 else ''}") from None
        shape = self._probe(backbone, name, before=m.at == "head", who=m.name) if self.input_shape else None
        base = getattr(layer, "base_layer", layer)
        if shape is not None:
            width = math.prod(shape) if m.per_example else (shape[0] if len(shape) == 3 else shape[-1])
        elif m.at == "head":
            width = base.in_features if isinstance(base, nn.Linear) else getattr(base, "in_channels", None)
        else:
            width = getattr(base, "out_features", None) or getattr(base, "out_channels", None)
        if width is None or (m.per_example and shape is None):
            raise AttachmentError(f"memory {m.name!r}: the width of the features at {name!r} is not known from the "
                                  "layer; give the agent the input shape: Agent(..., input_shape=...)")
        out = m.bind(int(width))
        if out != width:
            if not isinstance(layer, nn.Linear):
                raise AttachmentError(f"memory {m.name!r} widens the features to {out}, but the read-out {name!r} is a "
                                      f"{type(layer).__name__}, not a Linear that can be widened")
            replace_layer(backbone, name, _widened(layer, out))
        return name

    def _probe(self, backbone: nn.Module, name: str, *, before: bool, who: str) -> tuple[int, ...]:
        """The shape of one example's features at a layer (without the batch axis), from a forward pass of a zero
        batch of the input shape; refuses a point the backbone's forward never reaches."""
        assert self.input_shape is not None
        seen: dict[str, tuple[int, ...]] = {}
        layer = backbone.get_submodule(name)

        def pre(mod: nn.Module, args: tuple) -> None:
            seen.setdefault("shape", tuple(args[0].shape[1:]))

        def post(mod: nn.Module, args: tuple, out: Tensor) -> None:
            if isinstance(out, Tensor):
                seen.setdefault("shape", tuple(out.shape[1:]))

        h = layer.register_forward_pre_hook(pre) if before else layer.register_forward_hook(post)
        was = backbone.training
        try:
            backbone.eval()
            with torch.no_grad():
                backbone(torch.zeros(2, *self.input_shape))
        finally:
            h.remove()
            backbone.train(was)
        if "shape" not in seen:
            raise AttachmentError(f"memory {who!r}: layer {name!r} is not on the backbone's forward path "
                                  "(its forward never calls it); attach the memory at a layer it runs")
        return seen["shape"]

    def hook(self, backbone: nn.Module) -> None:
        """Put the reading hooks on the (possibly wrapped) modules at every point."""
        for i, (m, name) in enumerate(zip(self.memories, self.points)):
            if name == "":
                self.handles.append(backbone.register_forward_pre_hook(functools.partial(self._input_hook, i)))
            elif m.at == "head":
                self.handles.append(backbone.get_submodule(name).register_forward_pre_hook(functools.partial(self._pre_hook, i)))
            else:
                self.handles.append(backbone.get_submodule(name).register_forward_hook(functools.partial(self._post_hook, i)))

    # ---------------------------------------------------------------- reading
    def _input_hook(self, i: int, module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        flat = x.reshape(x.shape[0], -1) if x.dim() > 3 else x  # images enter a memory as vectors
        if self.capturing is not None:
            self._record("", flat)
            return None
        y = self._read(i, flat)
        return (y.reshape(x.shape), *args[1:])

    def _pre_hook(self, i: int, module: nn.Module, args: tuple) -> tuple | None:
        if self.capturing is not None:
            self._record(self.points[i], args[0])
            return None
        return (self._read(i, args[0]), *args[1:])

    def _post_hook(self, i: int, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        if self.capturing is not None:
            self._record(self.points[i], output)
            return None
        return self._read(i, output)

    def _read(self, i: int, h: Tensor) -> Tensor:
        m = self.memories[i]
        if m.per_example and h.dim() > 2:
            return self._read(i, h.reshape(h.shape[0], -1)).reshape(h.shape)
        state = self.states[i]
        if state is None or m.reset_on in PER_CALL or _batch(state) not in (None, h.shape[0]):
            state = m.initial_state(h.shape[0], h.device)
        y, state = m.read(h, state)
        self.states[i] = None if m.reset_on in PER_CALL else _detach(state)
        return y

    # ---------------------------------------------------------------- writing and inference
    def _record(self, point: str, h: Tensor) -> None:
        assert self.capturing is not None
        self.capturing.setdefault(point, h.detach())
        if self.wanted <= set(self.capturing):
            raise _Captured

    def features(self, backbone: nn.Module, x: Tensor, which: Sequence[int]) -> dict[str, Tensor]:
        """Raw features at the points of memories `which` for inputs x (no gradients, evaluation mode, no reads)."""
        self.wanted = {self.points[i] for i in which}
        self.capturing = {}
        was = backbone.training
        try:
            backbone.eval()
            with torch.no_grad():
                backbone(x)
        except _Captured:
            pass
        finally:
            backbone.train(was)
            got, self.capturing, self.wanted = self.capturing, None, set()
        return got

    def write(self, backbone: nn.Module, x: Tensor, labels: Tensor, task_ids: Tensor) -> None:
        writers = [i for i, m in enumerate(self.memories) if m.writes]
        if not writers:
            return
        feats = self.features(backbone, x, writers)
        for i in writers:
            if self.points[i] in feats:  # a point this forward reached
                self.memories[i].observe(feats[self.points[i]], labels, task_ids)

    def infer_task(self, backbone: nn.Module, x: Tensor) -> Tensor | None:
        """The first task-inferring memory's answer (in list order), or None."""
        for i, m in enumerate(self.memories):
            if m.infers_task:
                feats = self.features(backbone, x, [i])
                guess = m.infer_task(feats[self.points[i]]) if self.points[i] in feats else None
                if guess is not None:
                    return guess
        return None

    # ---------------------------------------------------------------- state boundaries
    def reset(self, boundary: str, done: Tensor | None = None) -> None:
        """Start afresh the states of memories that reset at `boundary` ("episode", "task"); with `done` (B,) bool
        only the rows of finished episodes."""
        for i, m in enumerate(self.memories):
            if m.reset_on != boundary or self.states[i] is None:
                continue
            if done is None:
                self.states[i] = None
                continue
            fresh = m.initial_state(done.shape[0], done.device)
            self.states[i] = tree_map(lambda old, new: torch.where(done.view(-1, *[1] * (old.dim() - 1)), new, old)
                                      if isinstance(old, Tensor) else old, self.states[i], fresh)

    def state_bytes(self, i: int) -> int:
        leaves, _ = tree_flatten(self.states[i])
        return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, Tensor))

    def get_state(self) -> dict[str, Any]:
        """Kept recurrent states as tensors (checkpoints)."""
        out: dict[str, Any] = {}
        for i, s in enumerate(self.states):
            if s is not None:
                leaves, _ = tree_flatten(s)
                out[str(i)] = [t for t in leaves]
        return out

    def set_state(self, saved: dict[str, Any]) -> None:
        for k, leaves in saved.items():
            i = int(k)
            _, spec = tree_flatten(self.memories[i].initial_state(int(leaves[0].shape[0]), leaves[0].device))
            self.states[i] = tree_unflatten(list(leaves), spec)


def _widened(layer: nn.Linear, width: int) -> nn.Linear:
    """`layer` taking `width` inputs: its weights on the first inputs, zeros on the new ones (the same function at first)."""
    new = nn.Linear(width, layer.out_features, bias=layer.bias is not None).to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : layer.in_features] = layer.weight
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new
