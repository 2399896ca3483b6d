"""The DNC unroll as one autograd function: every time step's forward and backward written out.

The per-mechanism functions (content.py, usage.py, allocation.py, linkage.py, access.py) state the
equations; autograd through them records ~100 small operations per time step, and at the sizes the
DNC runs (batch 16, 64 x 32 memory) their bookkeeping, not their arithmetic, dominates on a CPU: the
backward pass alone took three times the forward. Here the whole unroll (LSTM or feed-forward
controller, interface, one write head's memory access) is a single `torch.autograd.Function`:
the forward runs the same equations without recording a graph and keeps what the backward needs;
the backward walks the steps in reverse with the derivatives written by hand, and the weight
gradients of the controller and the interface are one matrix product each over all steps.
tests/memory/test_dnc_fused.py checks outputs, final state and every gradient against the
autograd path in float64.

Backward of the pieces (g_x is dL/dx; primes are this step's values, unprimed the previous state):

    r' = w^r' M'                   g_w^r' += g_r' M'^T,  g_M' += w^r'^T g_r'
    w^r' = Σ_m π_m mode_m           g_π = <mode_m, g_w^r'>,  g_mode_m = π_m g_w^r'
    f = w^r L'^T, b = w^r L'        g_w^r += g_f L' + g_b L'^T,  g_L' += g_f^T w^r + w^r^T g_b
    c = softmax(β D(k, M))          g_z = c (g_c - <g_c, c>),  g_β = <g_z, D>,  g_D = β g_z
    u / |u| (eps inside)            g_u = (g_û - û <g_û, û>) / |u|
    L' = (1 - w_i - w_j) L + w_i p_j (off the diagonal),  p' = (1 - Σw) p + w
    M' = M + w (v - M e)^T          g_M = g_M' (1 - w e^T),  g_w = Σ_d g_M' (v - M e),  g_v = w^T g_M',  g_e = -w^T (g_M' M)
    a[φ_j] = (1 - s_j) Π_{i<j} s_i  g_s_j = -g_a_j P_j + (1 / s_j) Σ_{k>j} g_a_k a_k       (s = sorted usage >= eps)
    u' = clamp((u + w - u w) ψ),  ψ = Π_r (1 - f_r w^r_r)   products over heads without division

Axis legend: t time, b batch, n memory slots, d word width, r read heads, h controller width,
g controller gate width (4h for the LSTM, h for feed-forward), s interface width.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from agentlab.memory.dnc.allocation import EPS as ALLOC_EPS
from agentlab.memory.dnc.content import EPS as UNIT_EPS


class Sizes(NamedTuple):
    """What the unroll needs to know about the model that is not a tensor."""

    hidden: int
    reads: int
    word: int
    slots: int
    lstm: bool
    split: tuple[int, int, int, int]  # interface widths: linear, strengths, gates, modes


class _Saved(NamedTuple):
    """One step's values the backward needs (the LSTM-only ones are None for a feed-forward controller)."""

    cin: Any
    c: Any
    ifo: Any
    cand: Any
    tc: Any
    h_new: Any
    sig_s: Any
    beta: Any
    gates: Any
    pi: Any
    terms: Any
    psi: Any
    q: Any
    u_pre: Any
    u: Any
    ww: Any
    wr: Any
    wkn: Any
    wkrs: Any
    simw: Any
    cw: Any
    s: Any
    order: Any
    P: Any
    a_sorted: Any
    alloc: Any
    mix: Any
    ww_new: Any
    M: Any
    Mn: Any
    Mrs: Any
    delta: Any
    e: Any
    keep_l: Any
    L: Any
    p: Any
    L_new: Any
    Mn2: Any
    Mrs2: Any
    rkn: Any
    rkrs: Any
    simr: Any
    rc: Any
    modes: Any
    wr_new: Any
    M_new: Any


def _unit(x: Tensor) -> tuple[Tensor, Tensor]:
    """(x / |x|, 1 / |x|) over the last axis, eps inside the root (content.unit)."""
    rs = torch.rsqrt((x * x).sum(-1, keepdim=True) + UNIT_EPS)
    return x * rs, rs


def _unit_backward(g: Tensor, xn: Tensor, rs: Tensor) -> Tensor:
    return rs * (g - xn * (g * xn).sum(-1, keepdim=True))


def _softmax_backward(g: Tensor, y: Tensor) -> Tensor:
    return y * (g - (g * y).sum(-1, keepdim=True))


def _exclusive_cumprod(x: Tensor) -> Tensor:
    """[1, x0, x0 x1, ...] along the last axis (allocation.exclusive_cumprod without a pad)."""
    out = torch.empty_like(x)
    out[..., 0] = 1.0
    torch.cumprod(x[..., :-1], dim=-1, out=out[..., 1:])
    return out


def _sigmoid_grad(g: Tensor, y: Tensor) -> Tensor:
    """g * y (1 - y) for y = sigmoid(x)."""
    return g * torch.addcmul(y, y, y, value=-1.0)


def _others_product(x: Tensor, dim: int) -> Tensor:
    """Π_{j != i} x_j along `dim` (the derivative of the product), without dividing by x_i."""
    left = _exclusive_cumprod(x.transpose(dim, -1)).transpose(dim, -1)
    right = _exclusive_cumprod(x.flip(dim).transpose(dim, -1)).transpose(dim, -1).flip(dim)
    return left * right


class FusedUnroll(torch.autograd.Function):
    """(xp, weights, initial state) -> (h_t, r_t for every step, final state). See the module docstring.

    Inputs: sizes, record (keep batch element 0's allocation / write / read weights), xp (t, b, g) from the
    controller's input projection, the controller's recurrent weight (g, r d [+ h]), the interface weight
    (s, h) and bias (s,), the (n, n) off-diagonal mask, then the state: h (b, h), c (b, h), read words
    (b, r, d), memory (b, n, d), read weights (b, r, n), write weights (b, n), link (b, n, n),
    precedence (b, n), usage (b, n).
    Outputs: hs (t, b, h), reads (t, b, r, d), the final c, memory, read weights, write weights, link,
    precedence, usage, and the trace (t, n), (t, n), (t, r, n) (empty unless `record`).
    """

    @staticmethod
    def forward(ctx: Any, sz: Sizes, record: bool, xp: Tensor, w_rec: Tensor, w_if: Tensor, b_if: Tensor,
                off: Tensor, h: Tensor, c: Tensor, r: Tensor, M: Tensor, wr: Tensor, ww: Tensor, L: Tensor,
                p: Tensor, u: Tensor) -> tuple[Tensor, ...]:
        H, R, D, N = sz.hidden, sz.reads, sz.word, sz.slots
        keep = any(ctx.needs_input_grad)  # the forward runs without a graph; keep the steps only for a backward
        T, B = xp.shape[0], xp.shape[1]
        steps: list[tuple[Tensor, ...]] = []
        hs, reads, trace = [], [], ([], [], [])
        Mn, Mrs = _unit(M)  # unit rows of the memory the first write reads
        one = xp.new_ones(())  # 1 - a b as addcmul(one, a, b, value=-1): one operation, no wrapped scalar
        eps = xp.new_full((), ALLOC_EPS)
        for t in range(T):
            # controller: z = W_x x_t + b + W_r [r_{t-1}; h_{t-1}]
            cin = torch.cat([r.reshape(B, R * D), h], 1) if sz.lstm else r.reshape(B, R * D)
            z = torch.addmm(xp[t], cin, w_rec.t())
            if sz.lstm:
                ifo = torch.sigmoid(z[:, : 3 * H])
                cand = torch.tanh(z[:, 3 * H :])
                c_new = torch.addcmul(ifo[:, H : 2 * H] * c, ifo[:, :H], cand)
                tc = torch.tanh(c_new)
                h_new = ifo[:, 2 * H :] * tc
            else:
                h_new = torch.tanh(z)
                c_new, ifo, cand, tc = c, None, None, None  # the feed-forward controller's state passes through
            # interface: linear [read keys, write key, write vector], oneplus strengths, sigmoid gates, softmax modes
            lin, sraw, graw, mraw = torch.split(torch.addmm(b_if, h_new, w_if.t()), sz.split, dim=1)
            sig_s = torch.sigmoid(sraw)  # d oneplus / dx
            beta = 1.0 + F.softplus(sraw)  # (b, r + 1)
            gates = torch.sigmoid(graw)  # (b, d + r + 2): erase, free gates, allocation gate, write gate
            pi = torch.softmax(mraw.view(B, R, 3), -1)  # (b, r, 3): backward, forward, content
            rk = lin[:, : R * D].view(B, R, D)
            wk, wv = lin[:, R * D : R * D + D], lin[:, R * D + D :]
            e, fg = gates[:, :D], gates[:, D : D + R]
            ga, gw = gates[:, D + R : D + R + 1], gates[:, D + R + 1 :]
            # usage
            terms = torch.addcmul(one, fg[:, :, None], wr, value=-1.0)  # (b, r, n)
            psi = terms.prod(1)
            q = torch.addcmul(ww, u, 1.0 - ww)  # u + w - u w
            u_pre = q * psi
            u_new = u_pre.clamp(0.0, 1.0)
            # write content on the previous memory
            wkn, wkrs = _unit(wk)
            simw = torch.bmm(Mn, wkn[:, :, None])[:, :, 0]  # (b, n)
            cw = torch.softmax(beta[:, R:] * simw, -1)
            # allocation
            s, order = torch.sort(torch.add(eps, u_new, alpha=1.0 - ALLOC_EPS), dim=-1, stable=True)
            P = _exclusive_cumprod(s)
            a_sorted = torch.addcmul(P, s, P, value=-1.0)  # (1 - s) P
            alloc = torch.zeros_like(a_sorted).scatter_(-1, order, a_sorted)
            mix = torch.lerp(cw, alloc, ga)
            ww_new = gw * mix  # (b, n)
            # erase and add
            delta = wv[:, None, :] - M * e[:, None, :]  # (b, n, d)
            M_new = torch.addcmul(M, ww_new[:, :, None], delta)
            # linkage
            keep_l = (1.0 - ww_new[:, :, None]) - ww_new[:, None, :]  # (b, n, n)
            L_new = torch.addcmul(keep_l * L, ww_new[:, :, None], p[:, None, :]) * off
            p_new = torch.addcmul(ww_new, 1.0 - ww_new.sum(-1, keepdim=True), p)
            # read content on the new memory, directional weights from the previous read weights
            Mn2, Mrs2 = _unit(M_new)
            rkn, rkrs = _unit(rk)
            simr = torch.bmm(rkn, Mn2.transpose(1, 2))  # (b, r, n)
            rc = torch.softmax(beta[:, :R, None] * simr, -1)
            fwd = torch.bmm(wr, L_new.transpose(1, 2))
            bwd = torch.bmm(wr, L_new)
            modes = torch.stack([bwd, fwd, rc], 2)  # (b, r, 3, n)
            wr_new = torch.matmul(pi[:, :, None], modes)[:, :, 0]  # (b, r, n)
            r_new = torch.bmm(wr_new, M_new)  # (b, r, d)
            if keep:
                steps.append(_Saved(
                    cin, c, ifo, cand, tc, h_new, sig_s, beta, gates, pi, terms, psi, q, u_pre, u, ww, wr,
                    wkn, wkrs, simw, cw, s, order, P, a_sorted, alloc, mix, ww_new, M, Mn, Mrs, delta, e,
                    keep_l, L, p, L_new, Mn2, Mrs2, rkn, rkrs, simr, rc, modes, wr_new, M_new))
            if record:
                trace[0].append(alloc[0].detach())
                trace[1].append(ww_new[0].detach())
                trace[2].append(wr_new[0].detach())
            hs.append(h_new)
            reads.append(r_new)
            h = h_new if sz.lstm else h
            c, r, M, wr, ww, L, p, u = c_new, r_new, M_new, wr_new, ww_new, L_new, p_new, u_new
            Mn, Mrs = Mn2, Mrs2
        ctx.sz, ctx.steps, ctx.weights = sz, steps, (w_rec, w_if, off)
        out_trace = tuple(torch.stack(x) if x else xp.new_zeros(0) for x in trace)
        ctx.mark_non_differentiable(*out_trace)
        ctx.set_materialize_grads(False)
        return (torch.stack(hs), torch.stack(reads), c, M, wr, ww, L, p, u, *out_trace)

    @staticmethod
    def backward(ctx: Any, g_hs: Tensor | None, g_reads: Tensor | None, g_c: Tensor | None, g_M: Tensor | None,
                 g_wr: Tensor | None, g_ww: Tensor | None, g_L: Tensor | None, g_p: Tensor | None,
                 g_u: Tensor | None, *_trace: Any) -> tuple[Tensor | None, ...]:
        sz, steps = ctx.sz, ctx.steps
        w_rec, w_if, off = ctx.weights
        H, R, D = sz.hidden, sz.reads, sz.word
        last = steps[-1]
        B, N = last.ww.shape
        zero = lambda *shape: last.h_new.new_zeros(*shape)  # noqa: E731
        # gradients on the state carried backwards (the last step's come from the outputs)
        gh = zero(B, H)
        gc = g_c if g_c is not None else zero(B, H)
        gr = zero(B, R, D)
        gM = g_M if g_M is not None else zero(B, N, D)
        gwr = g_wr if g_wr is not None else zero(B, R, N)
        gww = g_ww if g_ww is not None else zero(B, N)
        gL = g_L if g_L is not None else zero(B, N, N)
        gp = g_p if g_p is not None else zero(B, N)
        gu = g_u if g_u is not None else zero(B, N)
        g_xi, g_z = [], []
        one = last.h_new.new_ones(())
        for t in range(len(steps) - 1, -1, -1):
            (cin, c, ifo, cand, tc, h_new, sig_s, beta, gates, pi, terms, psi, q, u_pre, u, ww, wr, wkn, wkrs,
             simw, cw, s, order, P, a_sorted, alloc, mix, ww_new, M, Mn, Mrs, delta, e, keep_l, L, p, L_new,
             Mn2, Mrs2, rkn, rkrs, simr, rc, modes, wr_new, M_new) = steps[t]
            if g_reads is not None:
                gr = gr + g_reads[t]
            # r' = w^r' M'
            gwr = torch.baddbmm(gwr, gr, M_new.transpose(1, 2))
            gM = torch.baddbmm(gM, wr_new.transpose(1, 2), gr)
            # read modes
            gpi = torch.matmul(modes, gwr[:, :, :, None])[..., 0]  # (b, r, 3)
            gmodes = pi[:, :, :, None] * gwr[:, :, None, :]  # (b, r, 3, n)
            gbwd, gfwd, grc = gmodes.unbind(2)
            # directional weights: f = w^r L'^T, b = w^r L'
            gwr_prev = torch.bmm(gfwd, L_new) + torch.bmm(gbwd, L_new.transpose(1, 2))
            gL = torch.baddbmm(gL, torch.cat([gfwd, wr], 1).transpose(1, 2), torch.cat([wr, gbwd], 1))
            # read content on M'
            gzr = _softmax_backward(grc, rc)
            g_beta_r = (gzr * simr).sum(-1)  # (b, r)
            gsim = gzr * beta[:, :R, None]
            g_rk = _unit_backward(torch.bmm(gsim, Mn2), rkn, rkrs)
            gM = gM + _unit_backward(torch.bmm(gsim.transpose(1, 2), rkn), Mn2, Mrs2)
            # linkage and precedence
            gLo = gL * off
            gL = gLo * keep_l
            gkeep = gLo * L
            g_wnew = gww - gkeep.sum(-1) - gkeep.sum(-2) + torch.bmm(gLo, p[:, :, None])[:, :, 0]
            g_wnew = g_wnew + gp - (gp * p).sum(-1, keepdim=True)
            gp = torch.bmm(ww_new[:, None, :], gLo)[:, 0] + gp * (1.0 - ww_new.sum(-1, keepdim=True))
            # erase and add
            g_wnew = g_wnew + (gM * delta).sum(-1)
            g_wv = torch.bmm(ww_new[:, None, :], gM)[:, 0]  # (b, d)
            g_e = -torch.bmm(ww_new[:, None, :], gM * M)[:, 0]
            gM = gM - gM * (ww_new[:, :, None] * e[:, None, :])
            # write weighting w = g_w lerp(c^w, a, g_a)
            gw, ga = gates[:, D + R + 1 :], gates[:, D + R : D + R + 1]
            g_gw = (g_wnew * mix).sum(-1, keepdim=True)
            gmix = gw * g_wnew
            g_ga = (gmix * (alloc - cw)).sum(-1, keepdim=True)
            g_alloc = gmix * ga
            gcw = gmix - g_alloc
            # allocation: a[φ_j] = (1 - s_j) P_j
            gas = g_alloc.gather(-1, order)
            x = gas * a_sorted
            later = x.flip(-1).cumsum(-1).flip(-1) - x  # Σ_{k>j}
            gs = later / s - gas * P
            gu = torch.add(gu, torch.zeros_like(gs).scatter_(-1, order, gs), alpha=1.0 - ALLOC_EPS)
            # write content on M
            gzw = _softmax_backward(gcw, cw)
            g_beta_w = (gzw * simw).sum(-1, keepdim=True)
            gsw = gzw * beta[:, R:]
            g_wk = _unit_backward(torch.bmm(gsw[:, None, :], Mn)[:, 0], wkn, wkrs)
            gM = gM + _unit_backward(gsw[:, :, None] * wkn[:, None, :], Mn, Mrs)
            # usage u' = clamp(q ψ), q = u + w - u w, ψ = Π_r (1 - f_r w^r_r)
            gpre = gu * ((u_pre >= 0) & (u_pre <= 1)).to(gu.dtype)
            gq = gpre * psi
            gterms = (gpre * q)[:, None, :] * _others_product(terms, 1)  # (b, r, n)
            gu = gq * (1.0 - ww)
            gww = gq * (1.0 - u)
            fg = gates[:, D : D + R]
            g_fg = -(gterms * wr).sum(-1)
            gwr = gwr_prev - gterms * fg[:, :, None]
            # interface
            g_graw = _sigmoid_grad(torch.cat([g_e, g_fg, g_ga, g_gw], 1), gates)
            g_sraw = torch.cat([g_beta_r, g_beta_w], 1) * sig_s
            g_mraw = _softmax_backward(gpi, pi).reshape(B, 3 * R)
            gxi = torch.cat([g_rk.reshape(B, R * D), g_wk, g_wv, g_sraw, g_graw, g_mraw], 1)
            g_xi.append(gxi)
            # controller
            gh_new = torch.addmm(gh, gxi, w_if) if sz.lstm else gxi @ w_if
            if g_hs is not None:
                gh_new = gh_new + g_hs[t]
            if sz.lstm:
                gct = torch.addcmul(gc, gh_new * ifo[:, 2 * H :], torch.addcmul(one, tc, tc, value=-1.0))
                gifo = _sigmoid_grad(torch.cat([gct * cand, gct * c, gh_new * tc], 1), ifo)
                gz = torch.cat([gifo, gct * ifo[:, :H] * torch.addcmul(one, cand, cand, value=-1.0)], 1)
                gc = gct * ifo[:, H : 2 * H]
            else:
                gz = gh_new * torch.addcmul(one, h_new, h_new, value=-1.0)
            g_z.append(gz)
            gcin = gz @ w_rec
            gr = gcin[:, : R * D].view(B, R, D)
            if sz.lstm:
                gh = gcin[:, R * D :]
        g_z.reverse()
        g_xi.reverse()
        gz_all = torch.stack(g_z)  # (t, b, g)
        gxi_all = torch.stack(g_xi)  # (t, b, s)
        cins = torch.stack([st.cin for st in steps]).flatten(0, 1)  # (t b, r d [+ h])
        h_all = torch.stack([st.h_new for st in steps]).flatten(0, 1)  # (t b, h)
        g_wrec = gz_all.flatten(0, 1).t() @ cins
        g_wif = gxi_all.flatten(0, 1).t() @ h_all
        g_bif = gxi_all.sum((0, 1))
        g_h0 = gh if sz.lstm else None  # a feed-forward controller's state reaches no output
        return (None, None, gz_all, g_wrec, g_wif, g_bif, None, g_h0, gc, gr, gM, gwr, gww, gL, gp, gu)

