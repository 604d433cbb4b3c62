"""Masking in one home: per-event random hiding, cell granularity, the masked loss, and models that
stay finite when a sample, a face or a whole event has nothing visible."""

import math

import numpy as np
import pytest
import torch

from xecbench import geometry as geo
from xecbench.nn import (
    XECMAE,
    ConvNeXtV2Block,
    FaceLayout,
    HexNeXtBlock,
    MAEConfig,
    SensorMask,
    encoder_config,
    masked_loss,
    random_hidden,
)


def test_sensor_mask_derives_visible_and_scored():
    valid = torch.tensor([[True, True, False, False]])
    tv = torch.tensor([[True, False, False, False]])
    hidden = torch.tensor([[True, False, True, False]])
    m = SensorMask(valid, tv, hidden)
    assert m.visible.tolist() == [[False, True, False, False]]
    assert m.scored.tolist() == [[True, False, False, False]]  # a hidden dead sensor has no truth
    assert m.time_scored.tolist() == [[True, False, False, False]]
    assert m[0:1].hidden.tolist() == hidden.tolist()
    with pytest.raises(ValueError, match="share one"):
        SensorMask(valid, tv[:, :3], hidden)
    with pytest.raises(TypeError, match="bool"):
        SensorMask(valid, tv, hidden.float())


def test_each_event_is_hidden_at_its_own_ratio():
    valid = torch.ones(4, 4760, dtype=torch.bool)
    valid[1, :4204] = False  # 556 valid sensors
    valid[2] = False  # a dead event
    valid[3, ::2] = False
    hidden = random_hidden(valid, 0.6, torch.Generator().manual_seed(0))
    expected = [math.floor(0.6 * int(n)) for n in valid.sum(1)]
    assert hidden.sum(1).tolist() == expected  # 2856, 333, 0, 1428: one dead event cuts nothing
    assert not (hidden & ~valid).any()
    # uniform over the valid sensors of an event
    assert abs(hidden[3, 1::2].float().mean().item() - 0.6) < 2e-3


def test_an_all_dead_event_changes_nothing_for_the_others():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4760, 2, generator=g)
    valid = torch.rand(2, 4760, generator=g) > 0.05
    tv = valid & (torch.rand(2, 4760, generator=g) > 0.8)
    valid[1], tv[1] = False, False
    torch.manual_seed(0)
    model = XECMAE(MAEConfig(encoder=encoder_config("tiny")))
    hidden = random_hidden(valid, 0.6, torch.Generator().manual_seed(1))
    both = model(x, SensorMask(valid, tv, hidden))
    both.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(gr).all() for gr in grads) and len(grads) > 0
    alone = model(x[:1], SensorMask(valid[:1], tv[:1], hidden[:1]))
    assert both.loss.item() == pytest.approx(alone.loss.item() / 2, rel=1e-5)  # a mean over 2 events, one 0
    dead = model(x[1:], SensorMask(valid[1:], tv[1:], hidden[1:]))
    assert dead.loss.item() == 0.0  # nothing scored: no contribution, not NaN


def test_grn_gradients_stay_finite_for_a_fully_hidden_sample_and_hex_face():
    torch.manual_seed(0)
    blk = ConvNeXtV2Block(8)
    with torch.no_grad():
        blk.mlp.grn.gamma.normal_()
    x = torch.randn(2, 8, 6, 5, requires_grad=True)
    mask = torch.zeros(2, 1, 6, 5, dtype=torch.bool)
    mask[0] = True  # sample 0 has no visible site
    blk(x, mask).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in blk.parameters())
    assert torch.isfinite(x.grad).all()

    hexblk = HexNeXtBlock(8, "conv")
    with torch.no_grad():
        hexblk.mlp.grn.gamma.normal_()
    nodes = torch.randn(2, 73, 8, requires_grad=True)
    hidden = torch.zeros(2, 73, dtype=torch.bool)
    hidden[1] = True
    hexblk(nodes, hidden).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in hexblk.parameters())
    assert torch.isfinite(nodes.grad).all()


def test_mae_at_high_ratio_has_finite_gradients():
    torch.manual_seed(0)
    model = XECMAE(MAEConfig(encoder=encoder_config("tiny"), mask_ratio=0.95))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4760, 2, generator=g)
    valid = torch.ones(8, 4760, dtype=torch.bool)
    valid[:, torch.as_tensor(np.array(geo.face_ids("top")))] = torch.rand(8, 73, generator=g) > 0.9  # nearly dead
    model(x, model.draw_masks(valid, valid, generator=g)).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_cells_follow_the_encoder_grid():
    cfg = encoder_config("tiny")  # inner: stride 4 stem x 2 = 8; other grid faces 2
    cells = cfg.last_stage_cells().numpy()
    assert cells.shape == (4760,) and set(np.unique(cells)) == set(range(cells.max() + 1))
    inner = np.arange(4092)
    row, col = np.divmod(inner, 44)  # id = 44 * phi_row + z_col
    key = (row // 8) * 100 + col // 8
    same_cell = cells[inner][:, None] == cells[inner][None]
    assert np.array_equal(same_cell, key[:, None] == key[None])
    assert len(np.unique(cells[inner])) == math.ceil(93 / 8) * math.ceil(44 / 8)
    for face in geo.HEX_FACES:  # a hex node is its own cell
        assert len(np.unique(cells[geo.face_ids(face)])) == 73
    faces = {f: set(cells[geo.face_ids(f)]) for f in geo.FACES}
    assert all(faces[a].isdisjoint(faces[b]) for a in geo.FACES for b in geo.FACES if a != b)


def test_cell_masking_hides_whole_last_stage_cells():
    model = XECMAE(MAEConfig(encoder=encoder_config("tiny"), mask_unit="cell"))
    cells = model.cells
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(3, 4760, generator=g) > 0.02
    masks = model.draw_masks(valid, valid, 0.6, g)
    n_cells = int(cells.max()) + 1
    for b in range(3):
        hidden_cells = set(cells[masks.hidden[b]].tolist())
        valid_cells = set(cells[valid[b]].tolist())
        # every valid sensor of a hidden cell is hidden, and no sensor of another cell
        in_hidden = torch.tensor([int(c) in hidden_cells for c in cells.tolist()])
        assert torch.equal(masks.hidden[b], in_hidden & valid[b])
        assert len(hidden_cells) == math.floor(0.6 * len(valid_cells)) and len(valid_cells) <= n_cells
    # the point of it: the encoder's last inner stage sees whole hidden cells; per-sensor masking
    # at the same ratio leaves almost none of them fully hidden
    x = torch.randn(3, 4760, 2, generator=g)
    with torch.no_grad():
        by_cell = model.encoder(x, masks)["masks"]["inner"].float().mean().item()
        sensor = model.encoder(x, SensorMask(valid, valid, random_hidden(valid, 0.6, g)))["masks"]["inner"]
    assert by_cell > 0.5 and sensor.float().mean().item() < 0.02


def test_masked_loss_against_a_loop():
    g = torch.Generator().manual_seed(4)
    pred, target = torch.randn(2, 4760, 2, generator=g), torch.randn(2, 4760, 2, generator=g)
    valid = torch.rand(2, 4760, generator=g) > 0.1
    tv = valid & (torch.rand(2, 4760, generator=g) > 0.7)
    hidden = torch.rand(2, 4760, generator=g) > 0.5
    masks = SensorMask(valid, tv, hidden)
    cw = torch.tensor([1.0, 0.25])
    total, per_face = masked_loss(pred, target, masks, FaceLayout(), "l1", cw)
    event_losses = []
    for b in range(2):
        sums, counts = [0.0, 0.0], [0, 0]
        for i in range(4760):
            if valid[b, i] and hidden[b, i]:
                sums[0] += abs(float(pred[b, i, 0] - target[b, i, 0]))
                counts[0] += 1
                if tv[b, i]:
                    sums[1] += abs(float(pred[b, i, 1] - target[b, i, 1]))
                    counts[1] += 1
        event_losses.append(sums[0] / counts[0] + 0.25 * sums[1] / counts[1])
    assert total.item() == pytest.approx(sum(event_losses) / 2, rel=1e-5)
    assert set(per_face) == set(geo.FACES)
    nothing = SensorMask(valid, tv, torch.zeros_like(hidden))
    p = pred.clone().requires_grad_(True)
    zero, _ = masked_loss(p, target, nothing, FaceLayout())
    zero.backward()
    assert zero.item() == 0.0 and (p.grad == 0).all()


def test_fully_hidden_cells_against_a_loop():
    from xecbench.viz import fully_hidden_cells

    cells = encoder_config("tiny").last_stage_cells()
    g = torch.Generator().manual_seed(5)
    valid = torch.rand(2, 4760, generator=g) > 0.3
    hidden = random_hidden(valid, 0.7, g, cells)
    hidden[1] |= random_hidden(valid[1:], 0.5, g)[0]  # some partly hidden cells too
    got = fully_hidden_cells(hidden, valid, cells)
    for b in range(2):
        ref = {}
        for i, c in enumerate(cells.tolist()):
            if valid[b, i]:
                ref[c] = ref.get(c, True) and bool(hidden[b, i])
        expect = torch.tensor([ref.get(c, False) for c in cells.tolist()])
        assert torch.equal(got[b], expect)


def test_masked_loss_splits_exactly_into_micro_batches():
    """What gradient accumulation needs: the loss of 4 events equals 3/4 of the first 3 events' loss
    plus 1/4 of the last one's, also when the events have very different numbers of scored sensors."""
    torch.manual_seed(0)
    model = XECMAE(MAEConfig(encoder=encoder_config("tiny")))
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 4760, 2, generator=g)
    valid = torch.rand(4, 4760, generator=g) > torch.tensor([[0.05], [0.5], [0.9], [0.2]])
    tv = valid & (torch.rand(4, 4760, generator=g) > torch.tensor([[0.9], [0.5], [0.97], [0.8]]))
    masks = SensorMask(valid, tv, random_hidden(valid, 0.6, g))

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    big = grads(model(x, masks).loss)
    model.zero_grad()
    (0.75 * model(x[:3], masks[:3]).loss).backward()
    (0.25 * model(x[3:], masks[3:]).loss).backward()
    acc = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(acc, big, atol=1e-6, rtol=1e-4)


def test_hiding_face_by_face_counts_each_face_on_its_own():
    from xecbench.nn import random_hidden_by_face

    g = torch.Generator().manual_seed(3)
    valid = torch.rand(3, 4760, generator=g) > 0.1
    ratios = {f: (0.05 if f == "inner" else 0.2) for f in geo.FACES}
    hidden = random_hidden_by_face(valid, ratios, g)
    assert not (hidden & ~valid).any()
    for face in geo.FACES:
        ids = torch.as_tensor(np.array(geo.face_ids(face)))
        n_valid = valid[:, ids].sum(1)
        expected = [math.floor(ratios[face] * int(n)) for n in n_valid]
        assert hidden[:, ids].sum(1).tolist() == expected, face
