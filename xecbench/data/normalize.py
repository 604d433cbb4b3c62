"""Raw (npho, time) -> network inputs, and back.

npho: ``f(npho / npho_scale) / npho_scale2`` with ``f`` chosen by ``npho_scheme``:
``log1p`` (default), ``sqrt``, ``anscombe`` (2 sqrt(u + 3/8)) or ``linear`` (identity).
time: ``time / time_scale - time_shift``. Both have exact inverses.

Invalid sensors (npho > 9e9, NaN or inf; a time > 9e9, NaN or inf) get ``sentinel`` in normalised
space and boolean masks travel with the data: ``valid`` (the npho is usable) and ``time_valid``
(the time is usable too; a dim sensor has a valid npho but no valid time). Downstream code must
never let the sentinel reach a convolution unmasked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

INVALID_THRESHOLD = 9e9
NPHO_SCHEMES = ("log1p", "sqrt", "anscombe", "linear")

Array = torch.Tensor | np.ndarray


def raw_invalid(a: Array) -> torch.Tensor:
    """Raw invalid markers -> boolean mask (True = invalid): > 9e9, NaN or +-inf."""
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
        u = raw / self.npho_scale
        f = {
            "log1p": torch.log1p,
            "sqrt": torch.sqrt,
            "anscombe": lambda v: 2.0 * torch.sqrt(v + 0.375),
            "linear": lambda v: v,
        }[self.npho_scheme]
        return f(u) / self.npho_scale2

    def npho_inverse(self, y: torch.Tensor) -> torch.Tensor:
        v = y * self.npho_scale2
        f_inv = {
            "log1p": torch.expm1,
            "sqrt": torch.square,
            "anscombe": lambda w: (w / 2.0) ** 2 - 0.375,
            "linear": lambda w: w,
        }[self.npho_scheme]
        return f_inv(v) * self.npho_scale

    def time(self, raw: torch.Tensor) -> torch.Tensor:
        return raw / self.time_scale - self.time_shift

    def time_inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y + self.time_shift) * self.time_scale

    def __call__(self, npho: Array, time: Array) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw ``(..., 4760)`` npho and time -> ``x (..., 4760, 2)`` float32, ``valid`` and
        ``time_valid`` ``(..., 4760)`` bool."""
        npho = torch.as_tensor(npho)
        time = torch.as_tensor(time)
        if npho.shape != time.shape:
            raise ValueError(f"npho and time must have the same shape, got {npho.shape} and {time.shape}")
        valid = ~raw_invalid(npho)
        time_valid = valid & ~raw_invalid(time)
        # clamp before transforming so invalid entries do not produce NaN warnings or overflow
        xn = self.npho(torch.where(valid, npho, 0).clamp(min=0).double())
        xt = self.time(torch.where(time_valid, time, 0).double())
        x = torch.stack([xn.masked_fill(~valid, self.sentinel), xt.masked_fill(~time_valid, self.sentinel)], dim=-1)
        return x.float(), valid, time_valid

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(..., 4760, 2)`` normalised -> raw npho and time ``(..., 4760)`` (sentinels are not
        special-cased: keep the masks)."""
        return self.npho_inverse(x[..., 0]), self.time_inverse(x[..., 1])
