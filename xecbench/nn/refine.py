"""Full-resolution refinement: light heads that correct the classical estimates of every sensor.

Both the inpainter and the MAE decoder end here. Every sensor first gets its classical estimates
from its visible neighbours (:func:`classical_estimates`: the neighbour average and the solid-angle
estimate of npho, the neighbour average of the time). A head per face then looks at the face at
sensor resolution -- the visible sensors, the hidden flag, the estimates and whatever features the
caller adds (the MAE's coarse decoder output) -- conditioned on the face's latent token, and predicts
a *correction* to a per-face blend of the estimates. The correction and the blend start at exactly
zero, so an untrained :class:`Refiner` is the neighbour average, and training moves it only where the
data say it is better.

Grid faces use two 3x3 convolutions on the face image, hex faces two direction-aware graph
convolutions on the nodes (:class:`.hex.HexConv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import geometry as geo
from ..baselines import neighbour_average, npho_estimates
from ..data.normalize import Normalizer
from .encoder import IN_CHANS, sensor_inputs
from .faces import FaceLayout
from .hex import HexConv
from .masking import SensorMask

N_ESTIMATES = 4  # neighbour-average npho, solid-angle npho, neighbour-average time, "an estimate exists"


# eager under torch.compile too: the estimates read cached numpy geometry tables, which Dynamo cannot
# trace, and have no parameters to learn
@torch.compiler.disable
@torch.no_grad()
def classical_estimates(
    x: torch.Tensor, masks: SensorMask, normalizer: Normalizer, sensors: torch.Tensor | None = None
) -> torch.Tensor:
    """The classical estimates of every sensor from its visible neighbours, ``(B, 4760, 4)`` in
    normalised units: the neighbour average and the solid-angle estimate of npho (both computed on
    raw photon counts, exactly as the baselines of :mod:`xecbench.baselines`), the neighbour average
    of the time over time-valid neighbours, and 1 where a visible neighbour exists (else all 0).

    ``sensors (S,)`` (optional): ``(B, S, 4)``, the same values at those channel ids only, computed
    from their neighbourhoods (the shower position, which needs the brightest sensors, from all)."""
    visible = masks.visible
    raw = normalizer.npho_inverse(torch.where(visible, x[..., 0], 0.0).float())
    nb, sa, has = npho_estimates(raw, visible, sensors=sensors)
    t_nb, t_has = neighbour_average(x[..., 1], visible & masks.time_valid, sensors=sensors)
    h = has.to(x.dtype)
    est = torch.stack([normalizer.npho(nb) * h, normalizer.npho(sa) * h, t_nb * t_has.to(x.dtype), h], dim=-1)
    return est.to(x.dtype)


class GridHead(nn.Module):
    """Face image ``(B, 3 + 4 + extra, H, W)`` (observations zero where hidden, estimates, extra
    features), hidden ``(B, 1, H, W)`` and token ``(B, D)`` -> correction ``(B, 2, H, W)``, zero at
    initialisation."""

    def __init__(self, token_dim: int, width: int, extra: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(IN_CHANS + 1 + N_ESTIMATES + extra, width, 3, padding=1)
        self.token_proj = nn.Linear(token_dim, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 2, 1)
        nn.init.zeros_(self.out.weight)  # start exactly at the classical estimate
        nn.init.zeros_(self.out.bias)

    def forward(self, img: torch.Tensor, hidden: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        # channels-last: oneDNN's 3x3 and 1x1 convolutions run about twice as fast on it on CPU
        x = torch.cat([img, hidden.to(img.dtype)], dim=1).contiguous(memory_format=torch.channels_last)
        x = F.gelu(self.conv1(x) + self.token_proj(token)[..., None, None])
        return self.out(F.gelu(self.conv2(x)))

    def forward_at(
        self, img: torch.Tensor, hidden: torch.Tensor, token: torch.Tensor, at: torch.Tensor
    ) -> torch.Tensor:
        """The same correction, computed only at the cells where ``at (B, H, W)`` is True: ``(Q, 2)``
        for the Q cells of ``at.nonzero()``, equal to :meth:`forward` there.

        Two 3x3 convolutions see a 5x5 patch, so each cell costs 9 + 1 positions instead of a whole
        face: inference that fills a few dead channels skips almost all of the work."""
        b, r, c = at.nonzero(as_tuple=True)  # (Q,) each; a data-dependent size: inference only
        x = F.pad(torch.cat([img, hidden.to(img.dtype)], dim=1), (2, 2, 2, 2))  # the dense convs' zero padding
        off = torch.arange(5, device=img.device)
        rows, cols = (r[:, None] + off)[:, :, None], (c[:, None] + off)[:, None, :]  # (Q, 5, 1), (Q, 1, 5)
        patch = x[b[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (Q, C, 5, 5)
        return self.patch_forward(patch, token[b], r, c, at.shape[1:])

    def patch_forward(
        self, patch: torch.Tensor, token: torch.Tensor, r: torch.Tensor, c: torch.Tensor, shape: tuple[int, int]
    ) -> torch.Tensor:
        """Patches ``(Q, C, 5, 5)`` of the input (zero outside the face) centred on cells ``(r, c)``
        of a face of ``shape``, with their events' tokens ``(Q, D)`` -> the correction there ``(Q, 2)``."""
        H, W = shape
        h = F.gelu(F.conv2d(patch, self.conv1.weight, self.conv1.bias) + self.token_proj(token)[..., None, None])
        # the second convolution's zero padding: hidden-layer sites outside the face count as 0
        off = torch.arange(3, device=patch.device)
        rr, cc = r[:, None] - 1 + off, c[:, None] - 1 + off  # (Q, 3) each
        inside = ((rr >= 0) & (rr < H))[:, :, None] & ((cc >= 0) & (cc < W))[:, None, :]  # (Q, 3, 3)
        h = h * inside[:, None].to(h.dtype)
        h = F.gelu(F.conv2d(h, self.conv2.weight, self.conv2.bias))  # (Q, width, 1, 1)
        return self.out(h).flatten(1)  # (Q, 2)


class HexHead(nn.Module):
    """Nodes ``(B, 73, 3 + 4 + extra)``, hidden ``(B, 73)`` and token ``(B, D)`` -> correction
    ``(B, 73, 2)``, zero at initialisation."""

    def __init__(self, token_dim: int, width: int, extra: int = 0):
        super().__init__()
        self.inp = nn.Linear(IN_CHANS + 1 + N_ESTIMATES + extra, width)
        self.token_proj = nn.Linear(token_dim, width)
        self.conv1 = HexConv(width)
        self.conv2 = HexConv(width)
        self.out = nn.Linear(width, 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, nodes: torch.Tensor, hidden: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        x = self.inp(torch.cat([nodes, hidden[..., None].to(nodes.dtype)], dim=-1)) + self.token_proj(token)[:, None]
        x = F.gelu(self.conv1(F.gelu(x)))
        return self.out(F.gelu(self.conv2(x)))


class Refiner(nn.Module):
    """A head per face + a per-face blend: ``(x, masks, tokens[, extra]) -> (B, 4760, 2)``.

    ``extra`` (optional) gives each face more input features at its own resolution: grid faces
    ``(B, extra, H, W)``, hex faces ``(B, 73, extra)``.
    """

    def __init__(self, layout: FaceLayout, token_dim: int, width: int, normalizer: Normalizer, extra: int = 0):
        super().__init__()
        self.layout = layout
        self.normalizer = normalizer  # the data's: the estimates are made on raw counts
        self.heads = nn.ModuleDict(
            {f: (HexHead if f in geo.HEX_FACES else GridHead)(token_dim, width, extra) for f in geo.FACES}
        )
        # per face, how far the starting point moves from the neighbour average towards the
        # solid-angle estimate (0 at first; the solid angle wins on some faces, loses on others)
        self.blend = nn.Parameter(torch.zeros(len(geo.FACES)))
        face_of = torch.zeros(geo.N_CHANNELS, dtype=torch.long)
        for k, face in enumerate(geo.FACES):
            face_of[layout.ids(face)] = k
        self.register_buffer("face_of_sensor", face_of, persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        masks: SensorMask,
        tokens: torch.Tensor,
        extra: dict[str, torch.Tensor] | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x ``(B, 4760, 2)`` normalised, tokens ``(B, 6, D)`` -> predictions ``(B, 4760, 2)``.

        ``at (B, 4760)`` bool (optional, inference): the predictions at these sensors only, the same
        as without ``at``; the other sensors are not predicted (see :meth:`forward_at`). Where more
        than a fifth of the sensors are ``at``, the dense heads run (the patches would cost more).
        """
        if at is not None and at.float().mean() <= 0.2:
            return self.forward_at(x, masks, tokens, at, extra)
        layout = self.layout
        visible = masks.visible
        inp = sensor_inputs(x, masks.time_valid & visible)  # (B, N, 3), zero where not visible
        est = classical_estimates(x, masks, self.normalizer)  # (B, N, 4), at every sensor
        everywhere = torch.ones_like(visible)
        per_face = {}
        for k, face in enumerate(geo.FACES):
            more = [] if extra is None else [extra[face]]
            head = self.heads[face]
            if face in geo.HEX_FACES:
                nodes, hidden = layout.to_nodes(inp, visible, face)
                nodes = torch.cat([nodes, layout.to_nodes(est, everywhere, face)[0], *more], dim=-1)
                per_face[face] = head(nodes, hidden, tokens[:, k])
                continue
            img, hidden = layout.to_grid(inp, visible, face)
            img = torch.cat([img, layout.to_grid(est, everywhere, face)[0], *more], dim=1)
            per_face[face] = layout.from_grid(head(img, hidden, tokens[:, k]), face)  # (B, n_face, 2)
        return self._start(est) + layout.scatter(per_face)

    def _start(self, est: torch.Tensor, sensors: torch.Tensor | None = None) -> torch.Tensor:
        """The classical start ``(B, 4760, 2)`` (``(B, S, 2)`` for the estimates at ``sensors (S,)``):
        npho blended per face between the neighbour average and the solid-angle estimate, the time's
        neighbour average."""
        face = self.face_of_sensor if sensors is None else self.face_of_sensor.index_select(0, sensors)
        npho = est[..., 0] + self.blend[face] * (est[..., 1] - est[..., 0])
        return torch.stack([npho, est[..., 2]], dim=-1)

    def forward_at(
        self,
        x: torch.Tensor,
        masks: SensorMask,
        tokens: torch.Tensor,
        at: torch.Tensor,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` computed only for the sensors of ``at (B, 4760)`` bool: ``(B, 4760, 2)``,
        the same predictions there, and 0 wherever no estimate was needed.

        Two 3x3 convolutions see a 5x5 window, so on inner, us and ds (one sensor per cell) each
        sensor to fill costs one 5x5 patch. The S sensors in those windows (for every event of the
        batch, where any event needs them) get their classical estimates and head inputs in a table
        ``(B, S + 1, C)``, and the patches are gathered from it. The outer and hex faces are small:
        their heads see the whole face, for the events with a sensor to fill there (a face with none
        costs nothing). Data-dependent sizes: inference only, not for training steps or traced graphs."""
        layout = self.layout
        B, N = at.shape
        visible = masks.visible
        windows = {}  # per one-sensor-per-cell face: event, sensor and its window's ids (Q, 5, 5)
        whole = {}  # per face whose head sees the whole face: the events with a sensor to fill there (E,)
        need = torch.zeros(N + 1, dtype=torch.bool, device=at.device)  # which sensors need estimates
        for face in geo.FACES:
            ids = layout.ids(face)
            if face in geo.HEX_FACES or not layout.one_to_one[face]:
                events = at.index_select(1, ids).any(1).nonzero().squeeze(1)
                if len(events):  # a face with nothing to fill costs nothing
                    whole[face] = events
                    need[ids] = True
                continue
            b, j = at.index_select(1, ids).nonzero(as_tuple=True)  # (Q,): event, sensor within the face
            cell = layout.cell_of(face)[j]
            window = layout.patch_sensors(face).flatten(0, 1).index_select(0, cell)  # (Q, 5, 5)
            need[window.flatten()] = True
            windows[face] = (b, ids[j], cell, window)
        sensors = need[:N].nonzero().squeeze(1)  # (S,) channel ids
        S = len(sensors)
        row = torch.full((N + 1,), S, dtype=torch.long, device=at.device)  # channel id -> table row (S: none)
        row[sensors] = torch.arange(S, device=at.device)
        est = classical_estimates(x, masks, self.normalizer, sensors)  # (B, S, 4)
        vis = visible.index_select(1, sensors)  # (B, S)
        inp = sensor_inputs(x.index_select(1, sensors), vis & masks.time_valid.index_select(1, sensors))  # (B, S, 3)
        inp = inp * vis[..., None].to(inp.dtype)  # observations: 0 where not visible
        correction = inp.new_zeros(B, S, 2)  # at the table's sensors

        if windows:
            # the grid heads' input channels at the S sensors: observations, estimates, extra features,
            # hidden flag; a zero row S for the window positions off the face
            parts = [inp, est]
            if extra is not None:
                more = inp.new_zeros(B, N, extra["inner"].shape[1])
                for face in windows:
                    more = more.index_copy(1, layout.ids(face), layout.from_grid(extra[face], face).to(more.dtype))
                parts.append(more.index_select(1, sensors))
            parts.append(1 - vis[..., None].to(inp.dtype))
            table = F.pad(torch.cat(parts, dim=-1), (0, 0, 0, 1))  # (B, S + 1, C)
            C = table.shape[-1]
            table = table.view(B * (S + 1), C)
            flat = correction.view(B * S, 2)
            for face, (b, sensor, cell, window) in windows.items():
                H, W = layout.grid_shape(face)
                rows = (b[:, None, None] * (S + 1) + row[window]).flatten()
                patch = table.index_select(0, rows).view(-1, 5, 5, C).permute(0, 3, 1, 2)  # (Q, C, 5, 5)
                token = tokens[:, geo.FACES.index(face)].index_select(0, b)
                values = self.heads[face].patch_forward(patch, token, cell // W, cell % W, (H, W))
                flat.index_copy_(0, b * S + row[sensor], values.to(flat.dtype))

        if whole:  # the heads run on those events only, on the whole face: its sensors are all in the table
            def full(t: torch.Tensor) -> torch.Tensor:  # (E, S, C) -> (E, N, C), zero off the table
                return t.new_zeros(t.shape[0], N, t.shape[-1]).index_copy_(1, sensors, t)

            for face, events in whole.items():
                head, token = self.heads[face], tokens.index_select(0, events)[:, geo.FACES.index(face)]
                ie, ee = full(inp.index_select(0, events)), full(est.index_select(0, events))
                ve = visible.index_select(0, events)
                more = [] if extra is None else [extra[face].index_select(0, events)]
                if face in geo.HEX_FACES:
                    nodes, hidden = layout.to_nodes(ie, ve, face)
                    nodes = torch.cat([nodes, layout.to_nodes(ee, torch.ones_like(ve), face)[0], *more], dim=-1)
                    values = head(nodes, hidden, token)
                else:  # the outer face: its patch cells hold several sensors
                    img, hidden = layout.to_grid(ie, ve, face)
                    img = torch.cat([img, layout.to_grid(ee, torch.ones_like(ve), face)[0], *more], dim=1)
                    cells = ~layout.grid_mask(at.index_select(0, events), face)[:, 0]  # (E, H, W): cells to fill
                    grid = img.new_zeros(len(events), 2, *cells.shape[1:])
                    grid.permute(0, 2, 3, 1)[cells] = head.forward_at(img, hidden, token, cells).to(grid.dtype)
                    values = layout.from_grid(grid, face)
                correction[events[:, None], row[layout.ids(face)]] = values.to(correction.dtype)
        pred = self._start(est, sensors) + correction  # (B, S, 2)
        return pred.new_zeros(B, N, 2).index_copy_(1, sensors, pred)
