"""Raw (npho, time) -> network inputs, and back.

npho, by ``npho_scheme`` (``s1 = npho_scale``, ``s2 = npho_scale2``):

* ``log1p`` (default): ``log1p(npho / s1) / s2``;
* ``sqrt``: ``sqrt(npho / s1) / s2``;
* ``anscombe``: ``2 sqrt(npho + 3/8) / (sqrt(s1) s2)``, the Anscombe transform of the photon count
  itself. It is variance-stabilising: for a Poisson count of any mean above a few photons the
  transformed value has variance ``1 / (s1 s2^2)`` (within about 2 %); the scales only set the size
  of the output, never where the ``3/8`` offset sits;
* ``linear``: ``npho / s1 / s2``.

Negative counts are kept (real files carry them after baseline subtraction). Below the domain of
a scheme (``log1p``, ``sqrt``: npho < 0; ``anscombe``: npho < -3/8) the transform continues as its
odd mirror image, ``f(-a) = -f(a)`` about the domain edge, so it stays continuous, monotonic and
exactly invertible everywhere.

time: ``time / time_scale - time_shift``. Both have exact inverses.

Invalid sensors (npho > 9e9, NaN or inf; a time > 9e9, NaN or inf) get ``sentinel`` in normalised
space and boolean masks travel with the data: ``valid`` (the npho is usable) and ``time_valid``
(the time is usable too; a dim sensor has a valid npho but no valid time). Downstream code must
never let the sentinel reach a convolution unmasked.

Calling a :class:`Normalizer` works on tensors on any device, differentiable and traceable (what the
models and their exports use). :meth:`Normalizer.normalize` and :meth:`Normalizer.normalize_into` give
the same bits for loading data on the CPU, several times faster on thousands of events: they call it
on blocks of rows whose float64 temporaries stay in the cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

INVALID_THRESHOLD = 9e9
NPHO_SCHEMES = ("log1p", "sqrt", "anscombe", "linear")
ANSCOMBE_OFFSET = 3.0 / 8.0  # photons

Array = torch.Tensor | np.ndarray

# Rows per block of :meth:`Normalizer.normalize_into`: about 1 MiB of float64 temporaries, which stay
# in the core's cache. Whole-chunk temporaries (76 MB of float64 per 1000 events) are fresh memory
# on every call, and faulting that in cost three times the arithmetic (benchmarks/bench_data.py).
BLOCK_ROWS = 32


def _odd(f, v: torch.Tensor) -> torch.Tensor:
    """``f`` on ``v >= 0`` continued as an odd function: ``sign(v) f(|v|)`` (for f(0) = 0)."""
    return torch.sign(v) * f(v.abs())


def raw_invalid(a: Array) -> torch.Tensor:
    """Raw invalid markers -> boolean mask (True = invalid): > 9e9, NaN or +-inf."""
    if isinstance(a, np.ndarray):  # numpy's own operators: several times faster than torch's on arrays
        return torch.from_numpy(np.asarray(~np.isfinite(a) | (a > INVALID_THRESHOLD)))
    a = torch.as_tensor(a)
    return ~torch.isfinite(a) | (a > INVALID_THRESHOLD)


@dataclass(frozen=True)
class Normalizer:
    """Normalisation of npho and time with exact inverses (see module docstring)."""

    npho_scheme: str = "log1p"
    npho_scale: float = 100.0
    npho_scale2: float = 2.5
    time_scale: float = 10.0  # ns
    time_shift: float = 0.5
    sentinel: float = -1.0

    def __post_init__(self) -> None:
        if self.npho_scheme not in NPHO_SCHEMES:
            raise ValueError(f"npho_scheme must be one of {NPHO_SCHEMES}, got {self.npho_scheme!r}")
        for key in ("npho_scale", "npho_scale2", "time_scale"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")

    def npho(self, raw: torch.Tensor) -> torch.Tensor:
        s1, s2 = self.npho_scale, self.npho_scale2
        if self.npho_scheme == "log1p":
            return _odd(torch.log1p, raw / s1) / s2
        if self.npho_scheme == "sqrt":
            return _odd(torch.sqrt, raw / s1) / s2
        if self.npho_scheme == "anscombe":
            return 2.0 * _odd(torch.sqrt, raw + ANSCOMBE_OFFSET) / (math.sqrt(s1) * s2)
        return raw / s1 / s2

    def npho_inverse(self, y: torch.Tensor) -> torch.Tensor:
        s1, s2 = self.npho_scale, self.npho_scale2
        if self.npho_scheme == "log1p":
            return _odd(torch.expm1, y * s2) * s1
        if self.npho_scheme == "sqrt":
            return _odd(torch.square, y * s2) * s1
        if self.npho_scheme == "anscombe":
            return _odd(torch.square, y * math.sqrt(s1) * s2 / 2.0) - ANSCOMBE_OFFSET
        return y * s2 * s1

    def time(self, raw: torch.Tensor) -> torch.Tensor:
        return raw / self.time_scale - self.time_shift

    def time_inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y + self.time_shift) * self.time_scale

    def __call__(self, npho: Array, time: Array) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw ``(..., 4760)`` npho and time -> ``x (..., 4760, 2)`` float32, ``valid`` and
        ``time_valid`` ``(..., 4760)`` bool.

        The reference: any device, differentiable and traceable (the exported models run it). Data
        loading uses :meth:`normalize`, which gives the same bits faster on the CPU."""
        npho = torch.as_tensor(npho)
        time = torch.as_tensor(time)
        if npho.shape != time.shape:
            raise ValueError(f"npho and time must have the same shape, got {npho.shape} and {time.shape}")
        xn, xt, valid, time_valid = self._channels(npho, time)
        return torch.stack([xn, xt], dim=-1).float(), valid, time_valid

    def _channels(self, npho: torch.Tensor, time: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Normalised npho and time (float64, ``sentinel`` where invalid), ``valid`` and ``time_valid``."""
        valid = ~raw_invalid(npho)
        time_valid = valid & ~raw_invalid(time)
        # invalid entries become 0 before transforming, so they produce no NaN warnings or overflow
        xn = self.npho(torch.where(valid, npho, 0).double())
        xt = self.time(torch.where(time_valid, time, 0).double())
        return xn.masked_fill(~valid, self.sentinel), xt.masked_fill(~time_valid, self.sentinel), valid, time_valid

    def normalize(self, npho: Array, time: Array) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`__call__` for loading data on the CPU: the same ``x (..., C, 2)``, ``valid`` and
        ``time_valid`` ``(..., C)`` bit for bit, from raw ``(..., C)`` arrays (see :meth:`normalize_into`)."""
        npho, time = torch.as_tensor(npho), torch.as_tensor(time)
        if npho.shape != time.shape:
            raise ValueError(f"npho and time must have the same shape, got {tuple(npho.shape)} and {tuple(time.shape)}")
        if npho.dim() == 0 or npho.numel() == 0:
            return self(npho, time)  # nothing to speed up
        x = torch.empty((*npho.shape, 2), dtype=torch.float32)
        valid = torch.empty(npho.shape, dtype=torch.bool)
        time_valid = torch.empty(npho.shape, dtype=torch.bool)
        rows = (-1, npho.shape[-1])
        self.normalize_into(
            npho.reshape(rows), time.reshape(rows), x.view(*rows, 2), valid.view(rows), time_valid.view(rows)
        )
        return x, valid, time_valid

    def normalize_into(
        self, npho: Array, time: Array, x: torch.Tensor, valid: torch.Tensor, time_valid: torch.Tensor
    ) -> None:
        """Normalise raw ``npho`` and ``time`` ``(n, C)`` into CPU tensors ``x (n, C, 2)`` float32 and
        ``valid``, ``time_valid`` ``(n, C)`` bool (views, such as rows of a batch, are fine): :meth:`__call__`
        on blocks of :data:`BLOCK_ROWS` rows, so the same values, bit for bit."""
        npho, time = torch.as_tensor(npho), torch.as_tensor(time)
        if npho.dim() != 2 or npho.shape != time.shape:
            raise ValueError(f"npho and time must both be (n, C), got {tuple(npho.shape)} and {tuple(time.shape)}")
        n, c = npho.shape
        if tuple(x.shape) != (n, c, 2) or tuple(valid.shape) != (n, c) or tuple(time_valid.shape) != (n, c):
            raise ValueError(
                f"outputs must be x {(n, c, 2)}, valid and time_valid {(n, c)}; got {tuple(x.shape)},"
                f" {tuple(valid.shape)}, {tuple(time_valid.shape)}"
            )
        if x.dtype != torch.float32 or valid.dtype != torch.bool or time_valid.dtype != torch.bool:
            raise ValueError(f"outputs must be float32, bool, bool; got {x.dtype}, {valid.dtype}, {time_valid.dtype}")
        with torch.no_grad():
            for start in range(0, n, BLOCK_ROWS):
                block = slice(start, start + BLOCK_ROWS)
                xn, xt, valid[block], time_valid[block] = self._channels(npho[block], time[block])
                # each channel straight into its column, rounded to float32 on the way as by .float():
                # 3x faster than stacking (float64), converting and copying
                x[block, :, 0], x[block, :, 1] = xn, xt

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(..., 4760, 2)`` normalised -> raw npho and time ``(..., 4760)`` (sentinels are not
        special-cased: keep the masks)."""
        return self.npho_inverse(x[..., 0]), self.time_inverse(x[..., 1])
