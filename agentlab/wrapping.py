"""The one layer wrapper every plasticity module uses, and the one way modules choose layers.

A plasticity module never replaces a layer by a class of its own. The first module to touch
a `Linear` or `Conv2d` puts a `WrappedLayer` in its place (the original kept as `base_layer`,
PEFT style); every module then registers one `LayerTransform` on it, keyed by the module's
name. The effective weight and bias are the base layer's passed through the transforms in
registration order, which is the agent's plasticity list order:

    W_eff = t_n( ... t_2( t_1(W) ) )         b_eff likewise

    mask      SupSup's supermask, SET's / a lottery ticket's connectivity:  W -> W * M
    gate      FNNSP's per-task module gate on output units:                 W -> g[:, None] * W,  b -> g * b
    delta     LoRA / NOLA / PRANC / MCNC:                                   W -> W + dW_t

so [set, supsup, lora] computes (W * M_set * M_supsup) + dW_lora, and a delta listed before a
mask is masked with the weight. `WrappedLayer.weight` and `.bias` return the effective tensors,
so code that reads `layer.weight` directly (nn.MultiheadAttention's output projection, an LSTM
cell's recurrent matrix) sees the masked or adapted weight, not the raw one. A transform with no
state for the current task returns its input unchanged, so an idle wrapper is exactly the base
layer (same tensors, bit-identical outputs).

Two shortcuts keep the forward pass as cheap as the method alone: trailing deltas may add their
output `x dW^T` instead of forming `W + dW` (`LayerTransform.residual`; equal up to rounding),
and a transform may take over the whole product for a per-example mixture of weights
(`LayerTransform.superposed`, SupSup's task inference).

Stacking is checked when a transform is added: every transform says what it needs of the
base weight (`base_weight`: "fixed" - its state indexes or adds to values that must not move;
"trained" - it trains or rewires the base weight itself; "any"). A "fixed" and a "trained"
transform on one layer are refused with a `CompositionError` naming both modules and the layer.

Layers are chosen by one syntax for every module: `layers` (fnmatch patterns over the
backbone's module names, default every layer) minus `exclude`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from agentlab.config import check
from agentlab.errors import UserError
from agentlab.layers import replace_layer

BaseWeight = Literal["fixed", "trained", "any"]
WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


class CompositionError(UserError):
    """Two plasticity modules that cannot stack on one layer, or a module that finds nothing to wrap."""


@dataclass(frozen=True)
class LayerTargets:
    """Which layers a plasticity module wraps; every module's config takes these two keys."""

    layers: list[str] = field(default_factory=lambda: ["*"])
    """fnmatch patterns over the backbone's module names (e.g. "layers.*", "blocks.*.mlp.*"); default every layer"""
    exclude: list[str] = field(default_factory=list)
    """fnmatch patterns of layers to leave alone"""

    def __post_init__(self) -> None:
        check(isinstance(self.layers, list) and len(self.layers) >= 1 and all(isinstance(p, str) for p in self.layers),
              "layers", self.layers, "a non-empty list of fnmatch patterns over module names")
        check(isinstance(self.exclude, list) and all(isinstance(p, str) for p in self.exclude),
              "exclude", self.exclude, "a list of fnmatch patterns")


# ---------------------------------------------------------------------------- transforms


class LayerTransform(nn.Module):
    """One plasticity module's change to one wrapped layer. Subclasses override what they change.

    Its state (scores, masks, gates, ownership) is registered on it, so it is saved with the
    backbone. `self.layer` is the `WrappedLayer` it sits on (a reference, not a submodule).
    """

    base_weight: BaseWeight = "any"
    """what this transform needs of the base weight (see the module docstring)"""
    base_weight_reason: str = ""
    """why, in words, for the refusal message"""

    def __init__(self) -> None:
        super().__init__()
        self.owner_name = ""
        self.enabled = True  # a disabled transform is skipped: its module's `disabled()` context
        object.__setattr__(self, "layer", None)

    @property
    def base_layer(self) -> nn.Module:
        """The wrapped `Linear` / `Conv2d`."""
        return self.layer.base_layer

    @property
    def weight(self) -> Tensor:
        """The base layer's own weight parameter (what this transform's state refers to), not the effective one."""
        return self.layer.base_layer.weight

    def transform_weight(self, w: Tensor) -> Tensor:
        """The weight after this transform, given the weight after the transforms before it."""
        return w

    def transform_bias(self, b: Tensor | None) -> Tensor | None:
        return b

    def residual(self, x: Tensor) -> Tensor | None:
        """Instead of `transform_weight` when no weight-changing transform follows: the output to add,
        `x dW^T` (None = nothing to add). Only deltas that leave the bias alone may answer."""
        return None

    has_residual = False
    """whether `residual` may replace `transform_weight` at the end of the chain"""

    def superposed(self, x: Tensor, w: Tensor, b: Tensor | None, after: Callable[[Tensor], Tensor],
                   after_bias: Callable[[Tensor | None], Tensor | None]) -> Tensor | None:
        """The whole output when this transform mixes several weights per example (None = not now).

        `w`, `b`: the weight and bias after the transforms before this one; `after(w_k)` applies
        the transforms after it to a stack of weights (k, o, ...) and `after_bias` to the bias.
        """
        return None

    def observe(self, x: Tensor, y: Tensor) -> None:
        """Called with the layer's input and output after every forward (activation statistics)."""


# ---------------------------------------------------------------------------- the wrapper


class WrappedLayer(nn.Module):
    """A `Linear` or `Conv2d` kept as `base_layer`, changed by the transforms registered on it, in order."""

    def __init__(self, base_layer: nn.Module, name: str = "") -> None:
        super().__init__()
        if not isinstance(base_layer, WEIGHT_LAYERS):
            raise TypeError(f"WrappedLayer wraps nn.Linear or nn.Conv2d, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.transforms = nn.ModuleDict()
        self.layer_name = name

    # ---------------------------------------------------------------- stacking
    def add(self, owner: str, transform: LayerTransform) -> LayerTransform:
        """Register `owner`'s transform after the ones already here; refuses a pair that cannot stack."""
        where = self.layer_name or "this layer"
        if owner in self.transforms:
            raise CompositionError(f"plasticity module {owner!r} wraps layer {where!r} twice; give each module a distinct name")
        for other_name, other in self.transforms.items():
            pair = {other.base_weight, transform.base_weight}
            if pair == {"fixed", "trained"}:
                fixed, trained = (other_name, other) if other.base_weight == "fixed" else (owner, transform)
                train_name, train_t = (owner, transform) if fixed == other_name else (other_name, other)
                raise CompositionError(
                    f"plasticity modules {other_name!r} and {owner!r} cannot stack on layer {where!r}: "
                    f"{fixed!r} needs its weights fixed ({trained.base_weight_reason}) but {train_name!r} changes them "
                    f"({train_t.base_weight_reason}); exclude the layer from one of them (`exclude`) or configure "
                    f"{train_name!r} not to change the weights"
                )
        transform.owner_name = owner
        object.__setattr__(transform, "layer", self)
        self.transforms[owner] = transform
        return transform

    def transform(self, owner: str) -> LayerTransform | None:
        return self.transforms[owner] if owner in self.transforms else None

    # ---------------------------------------------------------------- effective tensors
    def active(self) -> list[LayerTransform]:
        """The transforms in force, in order (a module's `disabled()` context takes its own out)."""
        return [t for t in self.transforms.values() if t.enabled]

    @property
    def weight(self) -> Tensor:
        """The effective weight: the base weight through every transform, in order."""
        w = self.base_layer.weight
        for t in self.active():
            w = t.transform_weight(w)
        return w

    @property
    def bias(self) -> Tensor | None:
        b = self.base_layer.bias
        for t in self.active():
            b = t.transform_bias(b)
        return b

    # Attributes code reads off a Linear / Conv2d.
    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def _product(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if isinstance(self.base_layer, nn.Conv2d):
            return self.base_layer._conv_forward(x, w, b)
        return F.linear(x, w, b)

    def forward(self, x: Tensor) -> Tensor:
        ts = self.active()
        # trailing deltas add their output (cheaper than forming W + dW, and what PEFT computes)
        k = len(ts)
        while k > 0 and ts[k - 1].has_residual:
            k -= 1
        w, b = self.base_layer.weight, self.base_layer.bias
        y = None
        for i, t in enumerate(ts):
            later = ts[i + 1 :]
            y = t.superposed(x, w, b, _chain_weight(later), _chain_bias(later))
            if y is not None:
                break
            if i < k:
                w, b = t.transform_weight(w), t.transform_bias(b)
        if y is None:
            y = self._product(x, w, b)
            for t in ts[k:]:
                r = t.residual(x)
                if r is not None:
                    y = y + r
        for t in ts:
            t.observe(x, y)
        return y

    def extra_repr(self) -> str:
        return f"{self.layer_name or type(self.base_layer).__name__}: " + " -> ".join(self.transforms) if self.transforms else ""


def _chain_weight(ts: list[LayerTransform]) -> Callable[[Tensor], Tensor]:
    def apply(w: Tensor) -> Tensor:
        for t in ts:
            w = t.transform_weight(w)
        return w

    return apply


def _chain_bias(ts: list[LayerTransform]) -> Callable[[Tensor | None], Tensor | None]:
    def apply(b: Tensor | None) -> Tensor | None:
        for t in ts:
            b = t.transform_bias(b)
        return b

    return apply


# ---------------------------------------------------------------------------- choosing and wrapping layers


def _kind_of(module: nn.Module) -> nn.Module | None:
    """The Linear / Conv2d a module is, or wraps."""
    if isinstance(module, WrappedLayer):
        return module.base_layer
    if isinstance(module, WEIGHT_LAYERS):
        return module
    return None


def select_layers(backbone: nn.Module, targets: LayerTargets, *, owner: str,
                  kinds: tuple[type, ...] = WEIGHT_LAYERS) -> list[str]:
    """Names of the backbone's layers of `kinds` (wrapped or not) that `targets` choose, in module order.

    Refuses (CompositionError, exit 2) when nothing matches, listing the layers there are.
    """
    names = []
    for n, m in backbone.named_modules():
        base = _kind_of(m)
        if n and base is not None and isinstance(base, kinds) and not _inside_wrapper(n, backbone):
            names.append(n)
    keep = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in targets.layers)]
    keep = [n for n in keep if not any(fnmatch.fnmatchcase(n, p) for p in targets.exclude)]
    if not keep:
        kind = "/".join(k.__name__ for k in kinds)
        raise CompositionError(
            f"{owner}.layers={list(targets.layers)} (exclude={list(targets.exclude)}) matches no {kind} layer of the backbone; "
            f"its {kind} layers: {', '.join(names) or 'none'}"
        )
    return keep


def _inside_wrapper(name: str, backbone: nn.Module) -> bool:
    """Whether `name` is a wrapper's own base layer (`x.base_layer`), which is chosen through its wrapper."""
    return name.endswith(".base_layer") or ".base_layer." in name or ".transforms." in name


def wrap(backbone: nn.Module, name: str) -> WrappedLayer:
    """The `WrappedLayer` at `name`, putting one in place of the plain layer there first if needed."""
    m = backbone.get_submodule(name)
    if isinstance(m, WrappedLayer):
        return m
    wrapped = WrappedLayer(m, name)
    replace_layer(backbone, name, wrapped)
    return wrapped


def attach_transforms(backbone: nn.Module, targets: LayerTargets, owner: str,
                      make: Callable[[str, nn.Module], LayerTransform], *, kinds: tuple[type, ...] = WEIGHT_LAYERS,
                      ) -> dict[str, LayerTransform]:
    """Wrap every layer `targets` choose and register `make(name, base_layer)` on it as `owner`'s transform."""
    out: dict[str, LayerTransform] = {}
    for n in select_layers(backbone, targets, owner=owner, kinds=kinds):
        layer = wrap(backbone, n)
        out[n] = layer.add(owner, make(n, layer.base_layer))
    return out


def transforms_of(backbone: nn.Module, owner: str) -> Iterator[tuple[str, LayerTransform]]:
    """`(layer name, transform)` of one module, in module order."""
    for n, m in backbone.named_modules():
        if isinstance(m, WrappedLayer) and owner in m.transforms:
            yield n, m.transforms[owner]


def named_base_parameters(backbone: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The backbone's own parameters: those of no plasticity module's transform (what 'the shared model' means
    when a module freezes, trains, rewinds or saves it)."""
    inside = {id(p) for m in backbone.modules() if isinstance(m, LayerTransform) for p in m.parameters()}
    return ((n, p) for n, p in backbone.named_parameters() if id(p) not in inside)


def base_parameters(backbone: nn.Module) -> Iterator[nn.Parameter]:
    return (p for _, p in named_base_parameters(backbone))


def freeze_base(backbone: nn.Module, keep: Iterable[Tensor] = ()) -> None:
    """Fix the shared model, as an isolating module needs it once old tasks depend on it: no gradient to any base
    parameter (but those in `keep`), and the running statistics of its BatchNorm layers no longer move (momentum 0;
    a batch is still normalised by its own statistics in training). Per-task norms a module keeps are left alone."""
    kept = {id(t) for t in keep}
    for p in base_parameters(backbone):
        if id(p) not in kept:
            p.requires_grad_(False)
    for n, m in backbone.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and ".per_task." not in f".{n}." and ".transforms." not in f".{n}.":
            m.momentum = 0.0
