"""Modern Hopfield layers with the `hopfield-layers` package's API (Ramsauer et al., ICLR 2021).

`Hopfield`, `HopfieldPooling` and `HopfieldLayer` take the package's constructor
arguments with the same meaning and defaults, so code written for
`from hflayers import Hopfield` runs with `from agentlab.memory.hopfield import Hopfield`:

    input_size      width of the state patterns (queries) R
    hidden_size     width of one head in Hopfield space (default input_size // num_heads)
    output_size     width after the output projection (default input_size)
    pattern_size    width of one head's pattern projection (default hidden_size)
    num_heads       parallel association heads
    scaling         beta, a float or one per head (default 1/sqrt(hidden_size); 1.0 when all is static)
    update_steps_max  0 = one update; n = up to n further state updates; None = until converged
    update_steps_eps  stop a head once its association matrix moves by at most this much
    normalize_{stored_pattern,state_pattern,pattern_projection}[_affine, _eps]
                    LayerNorm on the raw inputs before projection (default on)
    normalize_hopfield_space[_affine, _eps]  LayerNorm of R and Y per head in Hopfield space
    {stored_pattern,state_pattern,pattern_projection}_as_static
                    use that input as it is in Hopfield space (no projection; repeated over heads)
    pattern_projection_as_connected  values pass through the stored patterns' projection first
    stored_pattern_size, pattern_projection_size  input widths of Y and V (default input_size)
    batch_first     inputs (b, l, e) instead of (l, b, e)
    association_activation  name of a torch function applied to the output
    dropout         on the association matrix (training only)
    input_bias      biases in the input projections
    concat_bias_pattern  a learned pattern appended to the stored patterns and values
    add_zero_association a zero pattern appended to the stored patterns and values
    disable_out_projection  no output projection (output width num_heads * pattern_size)

The pure-retrieval switch the package lacks: `Hopfield(pure_retrieval=True, scaling=beta)`
(or `Hopfield.retrieval(beta)`) has no projections and no normalisation, so
`hopfield((Y, R, Y))` returns Y^T softmax(beta Y xi) for each state pattern xi: the
stored patterns themselves when retrieval succeeds.

Forward input: one tensor used as stored, state and projection (self-association),
or a tuple (stored, state, pattern_projection). `get_association_matrix` returns the
softmax associations (b, h, l, s); `get_projected_pattern_matrix` the values (b, h, s, p).

Axis legend: b batch, l state patterns, s stored patterns, e input width,
h heads, d head width (hidden_size), p pattern width (pattern_size), q quantity.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from agentlab.memory.hopfield_core import Retrieval, additive_mask, hopfield_retrieve

Scalar = Union[float, Tensor]


def _layer_norm(size: Optional[int], on: bool, affine: bool, eps: float, what: str) -> Optional[nn.LayerNorm]:
    if affine and not on:
        raise ValueError(f"normalize_{what}_affine=True needs normalize_{what}=True")
    if not on:
        return None
    if size is None:
        raise ValueError(f"normalize_{what}=True needs its input width (input_size or {what}_size)")
    return nn.LayerNorm(size, elementwise_affine=affine, eps=eps)


class Hopfield(nn.Module):
    """A modern Hopfield association: stored patterns Y, state patterns R, pattern projections V."""

    def __init__(
        self,
        input_size: Optional[int] = None,
        hidden_size: Optional[int] = None,
        output_size: Optional[int] = None,
        pattern_size: Optional[int] = None,
        num_heads: int = 1,
        scaling: Optional[Scalar] = None,
        update_steps_max: Optional[Union[int, Tensor]] = 0,
        update_steps_eps: Scalar = 1e-4,
        normalize_stored_pattern: bool = True,
        normalize_stored_pattern_affine: bool = True,
        normalize_stored_pattern_eps: float = 1e-5,
        normalize_state_pattern: bool = True,
        normalize_state_pattern_affine: bool = True,
        normalize_state_pattern_eps: float = 1e-5,
        normalize_pattern_projection: bool = True,
        normalize_pattern_projection_affine: bool = True,
        normalize_pattern_projection_eps: float = 1e-5,
        normalize_hopfield_space: bool = False,
        normalize_hopfield_space_affine: bool = False,
        normalize_hopfield_space_eps: float = 1e-5,
        stored_pattern_as_static: bool = False,
        state_pattern_as_static: bool = False,
        pattern_projection_as_static: bool = False,
        pattern_projection_as_connected: bool = False,
        stored_pattern_size: Optional[int] = None,
        pattern_projection_size: Optional[int] = None,
        batch_first: bool = True,
        association_activation: Optional[str] = None,
        dropout: float = 0.0,
        input_bias: bool = True,
        concat_bias_pattern: bool = False,
        add_zero_association: bool = False,
        disable_out_projection: bool = False,
        *,
        pure_retrieval: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first must be a bool, got {type(batch_first).__name__}")
        if pure_retrieval:
            # no projections, no normalisation anywhere: plain Y^T softmax(beta Y xi)
            if num_heads != 1:
                raise ValueError("pure_retrieval=True works with num_heads=1")
            normalize_stored_pattern = normalize_stored_pattern_affine = False
            normalize_state_pattern = normalize_state_pattern_affine = False
            normalize_pattern_projection = normalize_pattern_projection_affine = False
            normalize_hopfield_space = normalize_hopfield_space_affine = False
            stored_pattern_as_static = state_pattern_as_static = pattern_projection_as_static = True
            disable_out_projection = True
        self.pure_retrieval = pure_retrieval
        self.num_heads = num_heads
        self.stored_pattern_as_static = stored_pattern_as_static
        self.state_pattern_as_static = state_pattern_as_static
        self.pattern_projection_as_static = pattern_projection_as_static
        self.pattern_projection_as_connected = pattern_projection_as_connected
        static = stored_pattern_as_static and state_pattern_as_static and pattern_projection_as_static

        kdim = stored_pattern_size if stored_pattern_size is not None else input_size
        vdim = pattern_projection_size if pattern_projection_size is not None else input_size
        if hidden_size is None and input_size is not None:
            if input_size % num_heads:
                raise ValueError(f"input_size={input_size} must divide by num_heads={num_heads} when hidden_size is not given")
            hidden_size = input_size // num_heads
        if pattern_size is None:
            pattern_size = hidden_size
        if pattern_projection_as_connected and pattern_size != hidden_size:
            raise ValueError("pattern_projection_as_connected needs pattern_size == hidden_size")
        self._input_size, self._hidden_size, self._pattern_size = input_size, hidden_size, pattern_size
        self._kdim, self._vdim = kdim, vdim
        hd = None if hidden_size is None else num_heads * hidden_size
        pd = None if pattern_size is None else num_heads * pattern_size

        def proj(n_in: Optional[int], n_out: Optional[int], what: str) -> nn.Linear:
            if n_in is None or n_out is None:
                raise ValueError(f"the {what} projection needs input_size (or its *_size) and hidden_size")
            return nn.Linear(n_in, n_out, bias=input_bias)

        self.q_proj = None if state_pattern_as_static else proj(input_size, hd, "state pattern")
        self.k_proj = None if stored_pattern_as_static else proj(kdim, hd, "stored pattern")
        v_in = hd if pattern_projection_as_connected and not stored_pattern_as_static else vdim
        self.v_proj = None if pattern_projection_as_static else proj(v_in, pd, "pattern projection")
        self._output_size = None
        self.out_proj = None
        if not disable_out_projection:
            out = output_size if output_size is not None else input_size
            self.out_proj = proj(pd, out, "output")
            self._output_size = out
        elif pd is not None:
            self._output_size = pd

        self.norm_stored_pattern = _layer_norm(kdim, normalize_stored_pattern, normalize_stored_pattern_affine,
                                               normalize_stored_pattern_eps, "stored_pattern")
        self.norm_state_pattern = _layer_norm(input_size, normalize_state_pattern, normalize_state_pattern_affine,
                                              normalize_state_pattern_eps, "state_pattern")
        self.norm_pattern_projection = _layer_norm(vdim, normalize_pattern_projection, normalize_pattern_projection_affine,
                                                   normalize_pattern_projection_eps, "pattern_projection")
        self.norm_hopfield_space = _layer_norm(hidden_size, normalize_hopfield_space, normalize_hopfield_space_affine,
                                               normalize_hopfield_space_eps, "hopfield_space")
        self.bias_k = self.bias_v = None
        if concat_bias_pattern:
            if hd is None or pd is None:
                raise ValueError("concat_bias_pattern needs hidden_size and pattern_size")
            self.bias_k = nn.Parameter(torch.zeros(1, 1, hd))
            self.bias_v = nn.Parameter(torch.zeros(1, 1, pd))
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)
        self.add_zero_association = add_zero_association
        self.association_activation = getattr(torch, association_activation) if association_activation else None
        self.dropout = dropout
        self._batch_first = batch_first
        if scaling is None:
            scaling = 1.0 if static or hidden_size is None else 1.0 / math.sqrt(hidden_size)
        self._scaling = scaling
        self._update_steps_max = update_steps_max
        self._update_steps_eps = update_steps_eps
        self.last_steps = 0  # update steps the last forward made

    @classmethod
    def retrieval(cls, scaling: Scalar = 1.0, update_steps_max: Optional[int] = 0, update_steps_eps: float = 1e-4,
                  batch_first: bool = True) -> "Hopfield":
        """A pure associative memory: no projections, no normalisation (see the module docstring)."""
        return cls(scaling=scaling, update_steps_max=update_steps_max, update_steps_eps=update_steps_eps,
                   batch_first=batch_first, pure_retrieval=True)

    # ------------------------------------------------------------------ computing
    def _split(self, data: Union[Tensor, Tuple[Tensor, Tensor, Tensor]]) -> Tuple[Tensor, Tensor, Tensor]:
        if isinstance(data, Tensor):
            return data, data, data
        if isinstance(data, (tuple, list)) and len(data) == 3:
            return data[0], data[1], data[2]
        raise ValueError("input must be one tensor (stored = state = projection) or a tuple (stored, state, pattern_projection)")

    def _heads(self, x: Tensor, proj: Optional[nn.Linear], width: Optional[int]) -> Tensor:
        """(b, n, e) -> (b, h, n, width): projected, or used as it is and repeated over heads (static)."""
        if proj is None:
            return repeat(x, "b n e -> b h n e", h=self.num_heads)
        return rearrange(proj(x), "b n (h d) -> b h n d", h=self.num_heads)

    def _associate(self, data: Any, stored_pattern_padding_mask: Optional[Tensor], association_mask: Optional[Tensor],
                   need_association: bool) -> Tuple[Tensor, Retrieval, Tensor]:
        stored, state, proj = self._split(data)
        if not self._batch_first:
            stored, state, proj = (rearrange(t, "n b e -> b n e") for t in (stored, state, proj))
        if self.norm_stored_pattern is not None:
            stored = self.norm_stored_pattern(stored)
        if self.norm_state_pattern is not None:
            state = self.norm_state_pattern(state)
        if self.norm_pattern_projection is not None:
            proj = self.norm_pattern_projection(proj)
        q = self._heads(state, self.q_proj, self._hidden_size)  # (b, h, l, d)
        k = self._heads(stored, self.k_proj, self._hidden_size)  # (b, h, s, d)
        if self.pattern_projection_as_connected and self.k_proj is not None:
            proj = self.k_proj(proj)
        v = self._heads(proj, self.v_proj, self._pattern_size)  # (b, h, s, p)
        if self.norm_hopfield_space is not None:
            q, k = self.norm_hopfield_space(q), self.norm_hopfield_space(k)
        b, h = q.shape[0], self.num_heads
        padding = stored_pattern_padding_mask
        extra = []
        if self.bias_k is not None:
            extra.append((rearrange(self.bias_k, "o n (h d) -> o h n d", h=h), rearrange(self.bias_v, "o n (h p) -> o h n p", h=h)))
        if self.add_zero_association:
            extra.append((k.new_zeros(1, h, 1, k.shape[-1]), v.new_zeros(1, h, 1, v.shape[-1])))
        for ek, ev in extra:
            k = torch.cat([k, ek.expand(b, -1, -1, -1)], dim=2)
            v = torch.cat([v, ev.expand(b, -1, -1, -1)], dim=2)
            if padding is not None:
                padding = F.pad(padding, (0, 1))
            if association_mask is not None:
                association_mask = F.pad(association_mask, (0, 1))
        mask = additive_mask(padding, association_mask, b, h, q.dtype)
        r = hopfield_retrieve(q, k, v, scaling=self._scaling, update_steps_max=self._update_steps_max,
                              update_steps_eps=self._update_steps_eps, mask=mask, dropout=self.dropout,
                              training=self.training, need_association=need_association)
        self.last_steps = r.steps
        return rearrange(r.output, "b h l p -> b l (h p)"), r, v

    def forward(self, input: Union[Tensor, Tuple[Tensor, Tensor, Tensor]], stored_pattern_padding_mask: Optional[Tensor] = None,
                association_mask: Optional[Tensor] = None) -> Tensor:
        """Retrieved patterns (b, l, output_size), or (l, b, output_size) without batch_first."""
        out, _, _ = self._associate(input, stored_pattern_padding_mask, association_mask, False)
        if self.out_proj is not None:
            out = self.out_proj(out)
        if self.association_activation is not None:
            out = self.association_activation(out)
        return out if self._batch_first else rearrange(out, "b l e -> l b e")

    def get_association_matrix(self, input: Any, stored_pattern_padding_mask: Optional[Tensor] = None,
                               association_mask: Optional[Tensor] = None) -> Tensor:
        """The final softmax associations (b, h, l, s) (after the iterated updates)."""
        with torch.no_grad():
            _, r, _ = self._associate(input, stored_pattern_padding_mask, association_mask, True)
        assert r.association is not None
        return r.association

    def get_projected_pattern_matrix(self, input: Any, stored_pattern_padding_mask: Optional[Tensor] = None,
                                     association_mask: Optional[Tensor] = None) -> Tensor:
        """The pattern projections (values) in Hopfield space, (b, h, s, p)."""
        with torch.no_grad():
            _, _, v = self._associate(input, stored_pattern_padding_mask, association_mask, False)
        return v

    # ------------------------------------------------------------------ the package's properties
    batch_first = property(lambda self: self._batch_first)
    scaling = property(lambda self: self._scaling.clone() if isinstance(self._scaling, Tensor) else self._scaling)
    update_steps_max = property(lambda self: self._update_steps_max)
    update_steps_eps = property(lambda self: self._update_steps_eps)
    input_size = property(lambda self: self._input_size)
    hidden_size = property(lambda self: self._hidden_size)
    output_size = property(lambda self: self._output_size)
    pattern_size = property(lambda self: self._pattern_size)
    stored_pattern_dim = property(lambda self: self._kdim)
    state_pattern_dim = property(lambda self: self._input_size)
    pattern_projection_dim = property(lambda self: self._vdim)
    normalize_stored_pattern = property(lambda self: self.norm_stored_pattern is not None)
    normalize_state_pattern = property(lambda self: self.norm_state_pattern is not None)
    normalize_pattern_projection = property(lambda self: self.norm_pattern_projection is not None)
    normalize_hopfield_space = property(lambda self: self.norm_hopfield_space is not None)
    normalize_stored_pattern_affine = property(lambda self: bool(self.norm_stored_pattern and self.norm_stored_pattern.elementwise_affine))
    normalize_state_pattern_affine = property(lambda self: bool(self.norm_state_pattern and self.norm_state_pattern.elementwise_affine))
    normalize_pattern_projection_affine = property(lambda self: bool(self.norm_pattern_projection and self.norm_pattern_projection.elementwise_affine))
    normalize_hopfield_space_affine = property(lambda self: bool(self.norm_hopfield_space and self.norm_hopfield_space.elementwise_affine))


_FORWARDED = ("batch_first", "scaling", "update_steps_max", "update_steps_eps", "input_size", "hidden_size", "output_size",
              "pattern_size", "stored_pattern_dim", "state_pattern_dim", "pattern_projection_dim", "stored_pattern_as_static",
              "state_pattern_as_static", "pattern_projection_as_static", "normalize_stored_pattern",
              "normalize_stored_pattern_affine", "normalize_state_pattern", "normalize_state_pattern_affine",
              "normalize_pattern_projection", "normalize_pattern_projection_affine")


class _Wrapped(nn.Module):
    """Shared plumbing of HopfieldPooling and HopfieldLayer: a `hopfield` inside and its properties outside."""

    hopfield: Hopfield

    def __getattr__(self, name: str) -> Any:
        if name in _FORWARDED:
            return getattr(self.hopfield, name)
        return super().__getattr__(name)

    @property
    def quantity(self) -> int:
        return self._quantity

    def _expand(self, weights: Tensor, batch: int) -> Tensor:
        """Learned patterns (1, q, e) [or (q, 1, e)] repeated over the batch."""
        if self.hopfield.batch_first:
            return weights.expand(batch, -1, -1)
        return weights.expand(-1, batch, -1)


def _hopfield_kwargs(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k not in ("self", "__class__", "quantity", "trainable",
                                                     "lookup_weights_as_separated", "lookup_targets_as_trainable")}


class HopfieldPooling(_Wrapped):
    """Hopfield pooling: `quantity` learned state patterns (queries) retrieve from the input.

    input (b, s, e) [or (s, b, e)], or a tuple (stored, pattern_projection) -> (b, quantity * output_size).
    """

    def __init__(self, input_size: int, hidden_size: Optional[int] = None, output_size: Optional[int] = None,
                 pattern_size: Optional[int] = None, num_heads: int = 1, scaling: Optional[Scalar] = None,
                 update_steps_max: Optional[Union[int, Tensor]] = 0, update_steps_eps: Scalar = 1e-4,
                 normalize_stored_pattern: bool = True, normalize_stored_pattern_affine: bool = True,
                 normalize_state_pattern: bool = True, normalize_state_pattern_affine: bool = True,
                 normalize_pattern_projection: bool = True, normalize_pattern_projection_affine: bool = True,
                 normalize_hopfield_space: bool = False, normalize_hopfield_space_affine: bool = False,
                 stored_pattern_as_static: bool = False, state_pattern_as_static: bool = False,
                 pattern_projection_as_static: bool = False, pattern_projection_as_connected: bool = False,
                 stored_pattern_size: Optional[int] = None, pattern_projection_size: Optional[int] = None,
                 batch_first: bool = True, association_activation: Optional[str] = None, dropout: float = 0.0,
                 input_bias: bool = True, concat_bias_pattern: bool = False, add_zero_association: bool = False,
                 disable_out_projection: bool = False, quantity: int = 1, trainable: bool = True) -> None:
        kw = _hopfield_kwargs(dict(locals()))
        super().__init__()
        self.hopfield = Hopfield(**kw)
        self._quantity = quantity
        width = self.hopfield.hidden_size if state_pattern_as_static else input_size
        shape = (1, quantity, width) if batch_first else (quantity, 1, width)
        # N(0, 0.02) as in the package
        self.pooling_weights = nn.Parameter(torch.randn(shape) * 0.02, requires_grad=trainable)

    def _prepare(self, input: Union[Tensor, Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor, Tensor]:
        stored, proj = (input, input) if isinstance(input, Tensor) else input
        batch = stored.shape[0 if self.hopfield.batch_first else 1]
        return stored, self._expand(self.pooling_weights, batch), proj

    def forward(self, input: Union[Tensor, Tuple[Tensor, Tensor]], stored_pattern_padding_mask: Optional[Tensor] = None,
                association_mask: Optional[Tensor] = None) -> Tensor:
        out = self.hopfield(self._prepare(input), stored_pattern_padding_mask, association_mask)
        if not self.hopfield.batch_first:
            out = rearrange(out, "q b e -> b q e")
        return rearrange(out, "b q e -> b (q e)")

    def get_association_matrix(self, input: Any, stored_pattern_padding_mask: Optional[Tensor] = None,
                               association_mask: Optional[Tensor] = None) -> Tensor:
        return self.hopfield.get_association_matrix(self._prepare(input), stored_pattern_padding_mask, association_mask)

    def get_projected_pattern_matrix(self, input: Any, stored_pattern_padding_mask: Optional[Tensor] = None,
                                     association_mask: Optional[Tensor] = None) -> Tensor:
        return self.hopfield.get_projected_pattern_matrix(self._prepare(input), stored_pattern_padding_mask, association_mask)


class HopfieldLayer(_Wrapped):
    """Hopfield lookup: `quantity` learned stored patterns (and optionally separate learned targets).

    input (b, l, e) [or (l, b, e)] state patterns -> (b, l, output_size) [or (l, b, output_size)].
    """

    def __init__(self, input_size: int, hidden_size: Optional[int] = None, output_size: Optional[int] = None,
                 pattern_size: Optional[int] = None, num_heads: int = 1, scaling: Optional[Scalar] = None,
                 update_steps_max: Optional[Union[int, Tensor]] = 0, update_steps_eps: Scalar = 1e-4,
                 lookup_weights_as_separated: bool = False, lookup_targets_as_trainable: bool = True,
                 normalize_stored_pattern: bool = True, normalize_stored_pattern_affine: bool = True,
                 normalize_state_pattern: bool = True, normalize_state_pattern_affine: bool = True,
                 normalize_pattern_projection: bool = True, normalize_pattern_projection_affine: bool = True,
                 normalize_hopfield_space: bool = False, normalize_hopfield_space_affine: bool = False,
                 stored_pattern_as_static: bool = False, state_pattern_as_static: bool = False,
                 pattern_projection_as_static: bool = False, pattern_projection_as_connected: bool = False,
                 stored_pattern_size: Optional[int] = None, pattern_projection_size: Optional[int] = None,
                 batch_first: bool = True, association_activation: Optional[str] = None, dropout: float = 0.0,
                 input_bias: bool = True, concat_bias_pattern: bool = False, add_zero_association: bool = False,
                 disable_out_projection: bool = False, quantity: int = 1, trainable: bool = True) -> None:
        kw = _hopfield_kwargs(dict(locals()))
        super().__init__()
        self.hopfield = Hopfield(**kw)
        self._quantity = quantity
        width = self.hopfield.hidden_size if stored_pattern_as_static else self.hopfield.stored_pattern_dim
        shape = lambda w: (1, quantity, w) if batch_first else (quantity, 1, w)  # noqa: E731
        self.lookup_weights = nn.Parameter(torch.randn(shape(width)) * 0.02, requires_grad=trainable)
        if lookup_weights_as_separated:
            tw = width if pattern_projection_size is None else pattern_projection_size
            self.target_weights = nn.Parameter(torch.randn(shape(tw)) * 0.02, requires_grad=lookup_targets_as_trainable)
        else:
            self.register_parameter("target_weights", None)

    def _prepare(self, input: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        batch = input.shape[0 if self.hopfield.batch_first else 1]
        stored = self._expand(self.lookup_weights, batch)
        proj = stored if self.target_weights is None else self._expand(self.target_weights, batch)
        return stored, input, proj

    def forward(self, input: Tensor, stored_pattern_padding_mask: Optional[Tensor] = None,
                association_mask: Optional[Tensor] = None) -> Tensor:
        return self.hopfield(self._prepare(input), stored_pattern_padding_mask, association_mask)

    def get_association_matrix(self, input: Tensor, stored_pattern_padding_mask: Optional[Tensor] = None,
                               association_mask: Optional[Tensor] = None) -> Tensor:
        return self.hopfield.get_association_matrix(self._prepare(input), stored_pattern_padding_mask, association_mask)

    def get_projected_pattern_matrix(self, input: Tensor, stored_pattern_padding_mask: Optional[Tensor] = None,
                                     association_mask: Optional[Tensor] = None) -> Tensor:
        return self.hopfield.get_projected_pattern_matrix(self._prepare(input), stored_pattern_padding_mask, association_mask)
