"""ConvNeXt V2 building blocks with FCMAE-style masking.

With a mask (``(B, 1, H, W)`` bool, True = masked) every block computes exactly what a sparse
convolution over the visible sites would: masked sites are zeroed before every spatial operation
and after every operation that would refill them (LayerNorm, biases, GRN's beta), and GRN takes its
statistics over the visible sites only. Without a mask they are the ordinary dense blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def zero_masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the masked sites of ``x`` ``(B, C, H, W)``; ``mask`` broadcasts to it (True = masked).

    A product with the visible flag, as :meth:`.faces.FaceLayout.to_grid` zeroes hidden sensors: it
    does not guard against NaN or inf at masked sites (NaN * 0 is NaN), and needs none, because the
    encoder's features are finite by construction (the normaliser turns invalid sensors into a finite
    sentinel, and hidden ones enter as 0). It keeps x's memory format (masked_fill returns
    channels-first) and is about 2.7x faster on CPU than ``torch.where`` with the broadcast mask."""
    return x if mask is None else x * (~mask).to(x.dtype)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of a channels-first tensor ``(B, C, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def site_sum_of_squares(x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """The sum of ``x**2`` over the sites of each event and channel: ``(B, ..., C) -> (B, 1.., C)``.

    ``visible``: ``(B, ..., 1)`` float flags, or None for all sites. At least float32, also for half
    precision ``x`` (the sum of squares overflows fp16)."""
    B, C = x.shape[0], x.shape[-1]
    sq = x.to(torch.promote_types(x.dtype, torch.float32)).square()
    if visible is None:
        return sq.sum(dim=tuple(range(1, x.dim() - 1)), keepdim=True)
    # the sum over visible sites as a batched product with the visible flags (B, 1, S) @ (B, S, C):
    # one pass over the large tensor instead of three (mask, square, sum), about 2x faster on a
    # CPU; in float32 under autocast too (autocast would run bmm in half precision)
    with torch.autocast(x.device.type, enabled=False):
        S = math.prod(x.shape[1:-1])  # sites per event (explicit: B may be 0)
        stats = (B,) + (1,) * (x.dim() - 2) + (C,)  # (B, 1.., C)
        return torch.bmm(visible.to(sq.dtype).reshape(B, 1, S), sq.reshape(B, S, C)).view(stats)


def grn(
    x: torch.Tensor, visible: torch.Tensor | None, gamma: torch.Tensor, beta: torch.Tensor, eps: float
) -> torch.Tensor:
    """Global response normalisation of channels-last ``x`` ``(B, ..., C)`` (see :class:`GRN`), as plain
    operators: what :class:`GRN` computes without autograd, and the reference its backward is tested
    against."""
    ss = site_sum_of_squares(x, visible)  # (B, 1.., C), at least float32
    # the square root's gradient at an all-zero (fully hidden) sample is infinite, and 0 * inf
    # poisons every earlier layer with NaN: the clamp's zero gradient below 1e-24 stops it there
    # (the clamp's 1e-24 is 0 in fp16: another reason for the float32 statistics).
    # linalg.vector_norm is safe too, but 5x slower on CPU over these dims.
    gx = ss.clamp(min=1e-24).sqrt()  # (B, 1.., C)
    nx = (gx / (gx.mean(dim=-1, keepdim=True) + eps)).to(x.dtype)
    # gamma * (x * nx) + beta + x, with the scale folded on the small (B, 1.., C) tensor: one pass
    # over the large one instead of four (these passes are memory-bound on a CPU)
    return torch.addcmul(beta, x, 1 + gamma * nx)


class _GRN(torch.autograd.Function):
    """:func:`grn` with a backward written out: autograd's own makes about fifteen passes over the
    large ``(B, ..., C)`` tensors (the products and sums of ``addcmul``'s backward, the square's, the
    flags, and adding up the two gradients of ``x``), this one five: the sums of ``g`` and ``g * x`` over
    the sites, then ``dx = g * scale + 2 x dss visible`` in place. The statistics' algebra runs on the
    small ``(B, 1.., C)`` tensors, in their precision (at least float32)."""

    @staticmethod
    def forward(ctx, x, visible, gamma, beta, eps):
        ss = site_sum_of_squares(x, visible)
        gx = ss.clamp(min=1e-24).sqrt()
        m = gx.mean(dim=-1, keepdim=True) + eps  # (B, 1.., 1)
        nx = (gx / m).to(x.dtype)
        scale = 1 + gamma * nx
        ctx.save_for_backward(x, visible, gamma, ss, gx, m, nx, scale)
        return torch.addcmul(beta, x, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable  # no second derivatives: an error, not a wrong value
    def backward(ctx, g):
        x, visible, gamma, ss, gx, m, nx, scale = ctx.saved_tensors
        C = x.shape[-1]
        sites = tuple(range(1, x.dim() - 1))
        dbeta = g.reshape(-1, C).sum(0)
        dscale = (g * x).sum(dim=sites, keepdim=True)  # (B, 1.., C)
        dgamma = (dscale * nx).reshape(-1, C).sum(0)
        dnx = (dscale * gamma).to(gx.dtype)
        # nx = gx / (mean_c gx + eps): each gx enters its own ratio and every ratio's denominator
        dgx = dnx / m - (dnx * gx).sum(dim=-1, keepdim=True) / (m * m * C)
        dss = torch.where(ss >= 1e-24, dgx / (2 * gx), torch.zeros_like(dgx))  # clamp's and sqrt's gradients
        dx = None
        if ctx.needs_input_grad[0]:  # not for a frozen layer's input
            dx = x * (2 * dss)  # the statistics' gradient, at the statistics' precision
            if visible is not None:
                dx.mul_(visible)
            dx = dx.addcmul_(g, scale).to(x.dtype)
        return dx, None, dgamma.to(gamma.dtype), dbeta.to(gamma.dtype), None


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt V2) on channels-last features ``(B, ..., C)``.

    ``visible``: ``(B, ..., 1)`` float, 1 at visible sites, one flag per site of ``x`` (not a smaller
    broadcast shape); the L2 norm is then taken over visible sites only, as in the sparse model.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        needs_grad = x.requires_grad or self.gamma.requires_grad or self.beta.requires_grad
        if torch.is_grad_enabled() and needs_grad and not torch.jit.is_tracing():
            return _GRN.apply(x, visible, self.gamma, self.beta, self.eps)
        return grn(x, visible, self.gamma, self.beta, self.eps)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    @property
    def active(self) -> bool:
        return self.p > 0.0 and self.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        if x.dtype in (torch.float32, torch.float64):
            return x * self.sample_scale(x)  # the scale on the (B, 1..) flags: one pass over x, not two
        return x * self._keep(x) / (1 - self.p)  # in half precision 1 / (1 - p) itself would round: a biased scale

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)

    def sample_scale(self, x: torch.Tensor) -> torch.Tensor:
        """The factor ``(B, 1..)`` :meth:`forward` multiplies a float32/64 ``x`` by (drawn anew): 0 for a
        dropped sample, ``1 / (1 - p)`` for a kept one."""
        return self._keep(x).div_(1 - self.p)


def add_residual(x: torch.Tensor, y: torch.Tensor, drop_path: DropPath, visible: torch.Tensor | None) -> torch.Tensor:
    """A block's output ``(x + drop_path(y)) * visible`` for an ``x`` that is already zero at hidden sites.

    ``visible``: float flags that broadcast to ``y`` (``(B, 1, H, W)`` or ``(B, N, 1)``) or None. As one
    ``addcmul(x, y, scale * visible)``, the per-sample scale and the flags multiplied on their small
    shapes first: one pass over the large tensors instead of three (scale, add, mask), and one in the
    backward instead of two. In half precision the scale stays a per-element division (:class:`DropPath`)."""
    if y.dtype not in (torch.float32, torch.float64):
        out = x + drop_path(y)
        return out if visible is None else out * visible
    weight = drop_path.sample_scale(y) if drop_path.active else None
    if visible is not None:
        weight = visible if weight is None else weight * visible
    return x + y if weight is None else torch.addcmul(x, y, weight)


# pack where at most this share of an event's sites is visible (measured, forward and backward at 60 %
# hidden: a `base` us/ds/outer stage-0 block or hex block 1.4x-1.7x faster packed, a `tiny` one 1.2x;
# where nearly all sites are visible, packing only adds its gathers)
PACK_MAX_VISIBLE = 0.75


def visible_first(visible: torch.Tensor) -> torch.Tensor | None:
    """Each event's visible sites first: flags ``(B, ..., 1)`` -> site indices ``(B, K)`` (sites
    flattened), K the largest number of visible sites of any event, each event's visible sites in order
    and then hidden ones to fill K. None where packing does not pay (more than :data:`PACK_MAX_VISIBLE`
    of the sites visible) and where it is not used:

    - outside training (autograd off): inference keeps the dense operators, so the eager model, its
      trace (:class:`.deploy.RawInpainter`) and its exports give the same bits (packing changes the
      rounding of GRN's sums in the last bits);
    - not on a CPU (K is read from the data: on a GPU that would wait for it);
    - while tracing, scripting or compiling (they need shapes that do not depend on the data)."""
    if not torch.is_grad_enabled() or visible.device.type != "cpu":
        return None
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return None
    B = visible.shape[0]
    if B == 0:
        return None
    flags = visible.reshape(B, -1)  # (B, S)
    k = int((flags != 0).sum(1).max())  # counted as integers: bf16 flags would round a sum above 256
    if k > PACK_MAX_VISIBLE * flags.shape[1]:
        return None
    return torch.sort(flags, dim=1, descending=True, stable=True).indices[:, :k]


class ChannelMLP(nn.Module):
    """The pointwise half of a ConvNeXt V2 block: LayerNorm -> Linear(4C) -> GELU -> GRN -> Linear(C).

    Channels-last ``(B, ..., C)``; ``visible`` ``(B, ..., 1)`` restricts GRN's statistics. With it the
    output at hidden sites is not defined (the blocks zero it). Everything but GRN's statistics is per
    site and those see visible sites only, so in training on a CPU, where most sites are hidden (the
    stage-0 maps of the small faces and the hex faces at 60 % hidden), the layers run on each event's
    visible sites packed together (:func:`visible_first`) instead of on every site: the same values at
    the visible sites up to rounding, a fraction of the work.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        order = None if visible is None else visible_first(visible)
        if order is None:
            return self.layers(x, visible)
        B, C = x.shape[0], x.shape[-1]
        sites = x.reshape(B, -1, C)  # (B, S, C)
        at = order[..., None]  # (B, K, 1)
        packed = self.layers(sites.gather(1, at.expand(-1, -1, C)), visible.reshape(B, -1, 1).gather(1, at))
        out = packed.new_zeros(sites.shape).scatter(1, at.expand(-1, -1, C), packed)  # sites not packed: 0
        return out.view(x.shape)

    def layers(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """The layers on every site of ``x`` ``(B, ..., C)``."""
        return self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(x))), visible))


def depthwise_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` (depthwise, odd k x k, padding k // 2) on ``(B, C, H, W)``, its kernel cropped to the map.

    On a map smaller than the kernel (the coarse stages of the small faces: 6 x 2, 6 x 3, 3 x 6,
    12 x 3) the taps more than H - 1 rows or W - 1 columns from the centre only ever meet the zero
    padding: without them the output is the same, and so are the gradients (those taps get zero
    either way), at a fraction of the work (about 2 % of a ``base`` MAE step on the CPU)."""
    k = conv.kernel_size[0]
    H, W = x.shape[-2:]
    kh, kw = min(k, 2 * H - 1), min(k, 2 * W - 1)
    if (kh, kw) == (k, k) or k % 2 == 0:
        return conv(x)
    top, left = (k - kh) // 2, (k - kw) // 2
    weight = conv.weight[:, :, top : top + kh, left : left + kw]
    return F.conv2d(x, weight, conv.bias, padding=(kh // 2, kw // 2), groups=conv.groups)


class ConvNeXtV2Block(nn.Module):
    """Depthwise 7x7 -> :class:`ChannelMLP`, residual (with DropPath).

    x: ``(B, C, H, W)``; mask: ``(B, 1, H, W)`` bool or None. Masked sites of the output are zero.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, kernel_size: int = 7):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.mlp = ChannelMLP(dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        visible = None if mask is None else (~mask).to(x.dtype)  # (B, 1, H, W)
        x = x if visible is None else x * visible  # zero_masked
        y = depthwise_conv(self.dwconv, x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.mlp(y, None if visible is None else visible.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return add_residual(x, y, self.drop_path, visible)


def pad_to_multiple(x: torch.Tensor, mask: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pad ``(B, C, H, W)`` at the bottom/right so H and W divide by ``k``; padding is masked."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % k, (-W) % k
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
        if mask is not None:
            mask = F.pad(mask, (0, pw, 0, ph), value=True)
    return x, mask


def downsample_mask(mask: torch.Tensor, k: int) -> torch.Tensor:
    """A coarse site is visible if any of its ``k x k`` fine sites is: ``(B,1,H,W) -> (B,1,H/k,W/k)``."""
    return ~F.max_pool2d((~mask).to(torch.float32), k).bool()


class Downsample(nn.Module):
    """LayerNorm + non-overlapping ``k x k`` strided conv, carrying the mask down consistently."""

    def __init__(self, dim_in: int, dim_out: int, k: int = 2, norm_first: bool = True):
        super().__init__()
        self.norm = LayerNorm2d(dim_in, eps=1e-6) if norm_first else nn.Identity()
        self.conv = nn.Conv2d(dim_in, dim_out, k, stride=k)
        self.k = k

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, mask = pad_to_multiple(x, mask, self.k)
        x = self.conv(zero_masked(self.norm(x), mask))
        if mask is None:
            return x, None
        mask = downsample_mask(mask, self.k)
        return zero_masked(x, mask), mask
