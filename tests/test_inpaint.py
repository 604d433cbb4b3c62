import pytest
import torch

from xecbench import geometry as geo
from xecbench.nn import XECMAE, MAEConfig, SensorMask, XECInpainter, encoder_config, gather_masked, random_hidden
from xecbench.nn.refine import classical_estimates


def gather_loop(values, mask, K):
    """Per-event reference: masked ids in order, padded with zeros."""
    B, N, C = values.shape
    out = torch.zeros(B, K, C)
    idx = torch.zeros(B, K, dtype=torch.long)
    ok = torch.zeros(B, K, dtype=torch.bool)
    for b in range(B):
        ids = [i for i in range(N) if mask[b, i]][:K]
        for s, i in enumerate(ids):
            out[b, s], idx[b, s], ok[b, s] = values[b, i], i, True
    return idx, out, ok


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.6, 1.0])
def test_gather_equals_loop(ratio):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 200, 2, generator=g)
    mask = torch.rand(3, 200, generator=g) < ratio
    K = 150
    idx, got, ok, overflow = gather_masked(values, mask, K)
    ridx, ref, rok = gather_loop(values, mask, K)
    assert torch.equal(ok, rok) and torch.equal(got, ref)
    assert torch.equal(idx[ok], ridx[rok])
    assert torch.equal(overflow, mask.sum(1) > K)


def test_gather_capacity_larger_than_sensors():
    values = torch.randn(2, 10, 2)
    mask = torch.ones(2, 10, dtype=torch.bool)
    idx, got, ok, overflow = gather_masked(values, mask, 16)
    assert got.shape == (2, 16, 2) and ok.sum().item() == 20 and not overflow.any()
    assert torch.equal(got[:, :10], values) and (got[:, 10:] == 0).all()


def _batch(B=2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 4760, 2, generator=g)
    valid = torch.rand(B, 4760, generator=g) > 0.02
    tv = valid & (torch.rand(B, 4760, generator=g) > 0.9)
    return x, valid, tv


def test_frozen_encoder_gets_no_gradient_and_heads_all_do():
    torch.manual_seed(0)
    model = XECInpainter(XECMAE(MAEConfig(encoder=encoder_config("tiny"))).encoder, freeze_encoder=True)
    x, valid, tv = _batch()
    masks = SensorMask(valid, tv, random_hidden(valid, 0.1))
    out = model.train()(x, masks, capacity=600)
    out.loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    # the heads' output layers start at zero (the model starts as the classical estimate), so at
    # first only they and the blend learn; after one step every head parameter does
    first = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert first == {n for n, _ in model.named_parameters() if n.endswith(("out.weight", "out.bias", "blend"))}
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    model.zero_grad()
    model(x, masks, capacity=600).loss.backward()
    missing = [n for n, p in model.refiner.heads.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    assert not model.encoder.training  # frozen encoder stays in eval mode


@pytest.mark.parametrize("kind", ["inpainter", "mae"])
def test_an_untrained_model_is_the_neighbour_average(kind):
    """Both end in the refiner, whose correction starts at zero: before training, every sensor with a
    visible neighbour is predicted by the neighbour average, each patch sensor of the outer face and
    each sensor of a coarse inner cell by its own (no blocks of the decoder's stride)."""
    from xecbench.baselines import neighbour_average
    from xecbench.data import EventDataset, Normalizer

    torch.manual_seed(0)
    mae = XECMAE()
    model = (XECInpainter(mae.encoder) if kind == "inpainter" else mae).eval()
    data = EventDataset.from_simulation(4, seed=2)
    b = data[0:4]
    masks = SensorMask(b["valid"], b["time_valid"], random_hidden(b["valid"], 0.6 if kind == "mae" else 0.1))
    with torch.no_grad():
        pred = model.predict(b["x"], masks)
    norm = Normalizer()
    raw = norm.npho_inverse(torch.where(masks.visible, b["x"][..., 0], 0.0).double())
    nb, has = neighbour_average(raw, masks.visible)
    got = norm.npho_inverse(pred[..., 0].double())
    sel = masks.scored & has
    assert sel.sum() > 100
    assert torch.allclose(got[sel], nb[sel], rtol=1e-4, atol=1e-2)
    # the time channel starts at the neighbour average of the time-valid visible neighbours
    t_nb, t_has = neighbour_average(b["x"][..., 1], masks.visible & masks.time_valid)
    tsel = masks.scored & t_has
    assert torch.allclose(pred[..., 1][tsel], t_nb[tsel], atol=1e-5)


def test_trainable_encoder_gets_gradient():
    torch.manual_seed(0)
    model = XECInpainter(XECMAE().encoder, freeze_encoder=False)
    x, valid, tv = _batch()
    masks = SensorMask(valid, tv, random_hidden(valid, 0.1))
    model(x, masks, capacity=600).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # output layers leave zero; then the encoder learns too
    model.zero_grad()
    model(x, masks, capacity=600).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_every_face_honours_its_mask():
    torch.manual_seed(0)
    model = XECInpainter(XECMAE().encoder).eval()
    x, valid, tv = _batch()
    masks = SensorMask(valid, tv, random_hidden(valid, 0.3))
    junk = torch.where(masks.visible[..., None], x, torch.randn_like(x) * 100)  # hidden and dead sensors
    with torch.no_grad():
        a = model(x, masks, capacity=2000)
        b = model(junk, masks, capacity=2000)
    for face in geo.FACES:
        ids = torch.tensor(geo.face_ids(face))
        assert torch.allclose(a.dense[:, ids], b.dense[:, ids], atol=1e-5), face
    assert torch.equal(a.gathered, b.gathered) or torch.allclose(a.gathered, b.gathered, atol=1e-5)
    # the gathered slots hold the dense predictions at the masked ids
    sel = a.slot_valid
    assert torch.equal(a.gathered[sel], a.dense[torch.arange(2)[:, None].expand_as(a.index)[sel], a.index[sel]])


def test_from_mae_state_dict():
    mae = XECMAE()
    inp = XECInpainter.from_mae(mae.state_dict())
    for (n1, p1), (n2, p2) in zip(mae.encoder.state_dict().items(), inp.encoder.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def _model_with_trained_looking_heads(kind: str):
    """An untrained inpainter or MAE in eval mode whose heads' output layers have random weights (a
    trained model's are not zero, an untrained one's are: its heads would correct nothing)."""
    torch.manual_seed(0)
    mae = XECMAE()
    model = XECInpainter(mae.encoder) if kind == "inpainter" else mae
    for head in model.refiner.heads.values():
        torch.nn.init.normal_(head.out.weight, std=0.3)
        torch.nn.init.normal_(head.out.bias, std=0.3)
    return model.eval()


@pytest.mark.parametrize("kind", ["inpainter", "mae"])
def test_heads_at_the_sensors_to_fill_equal_the_dense_heads(kind):
    """``predict(..., at=fill)`` runs the grid heads on 5x5 patches around the sensors to fill; the
    dense convolutions are the reference. The heads' output layers get random weights (a trained
    model's are not zero), and the sensors to fill include face edges and corners (zero padding)
    and the outer face's centre patch (cells shared by several sensors)."""
    model = _model_with_trained_looking_heads(kind)
    x, valid, tv = _batch()
    fill = random_hidden(valid, 0.02) | ~valid
    edges = [0, 43, 44 * 92, 4091, 2000, 4092, 4307, 4742, 4759, 4308, 4451, 4452, 4595, 4596, 4741]
    fill[0, edges] = True
    masks = SensorMask(valid, tv, fill)
    with torch.no_grad():
        dense = model.predict(x, masks)
        sparse = model.predict(x, masks, at=fill)
        uncorrected = model.refiner._start(classical_estimates(x, masks, model.refiner.normalizer))
    assert torch.allclose(sparse[fill], dense[fill], atol=1e-5)
    assert (uncorrected[fill] - dense[fill]).abs().amax() > 0.05  # the heads do correct those sensors


def test_heads_at_sensors_on_one_face_none_at_all_and_an_empty_batch():
    """The sparse path when some faces (or all) have nothing to fill, and for zero events."""
    torch.manual_seed(0)
    model = XECInpainter(XECMAE().encoder)
    for head in model.refiner.heads.values():
        torch.nn.init.normal_(head.out.weight, std=0.3)
    model.eval()
    x, valid, tv = _batch()
    inner_only = torch.zeros_like(valid)
    inner_only[:, [5, 300, 2000]] = True
    masks = SensorMask(valid, tv, inner_only)
    with torch.no_grad():
        dense = model.predict(x, masks)
        assert torch.allclose(model.predict(x, masks, at=inner_only)[inner_only], dense[inner_only], atol=1e-5)
        nothing = model.predict(x, SensorMask(valid, tv, torch.zeros_like(valid)), at=torch.zeros_like(valid))
        assert nothing.shape == x.shape and torch.isfinite(nothing).all()
        empty = model.predict(x[:0], SensorMask(valid[:0], tv[:0], valid[:0]), at=valid[:0])
        assert empty.shape == (0, geo.N_CHANNELS, 2)


@pytest.mark.parametrize("kind", ["inpainter", "mae"])
def test_heads_at_sensors_of_some_events_only(kind):
    """The heads that see a whole face (outer, top, bottom) run only on the events with a sensor to
    fill there: each event's predictions equal the dense heads' whatever the other events need."""
    model = _model_with_trained_looking_heads(kind)
    x, valid, tv = _batch(4)
    layout = model.refiner.layout
    fill = torch.zeros_like(valid)
    fill[:, 1000] = True  # inner, every event
    fill[1, layout.ids("top")[[0, 40]]] = True  # top: event 1 only
    fill[2, layout.ids("outer")[7]] = True  # outer: event 2 only
    fill[3, layout.ids("bottom")[72]] = True  # bottom: event 3 only
    masks = SensorMask(valid, tv, fill)
    with torch.no_grad():
        dense = model.predict(x, masks)
        sparse = model.predict(x, masks, at=fill)
    assert torch.allclose(sparse[fill], dense[fill], atol=1e-5)


def test_mae_predict_at_sensors_under_bf16_autocast():
    """The MAE's coarse-decoder features come out in bf16 under autocast; the sparse path takes them."""
    torch.manual_seed(0)
    mae = XECMAE().eval()
    x, valid, tv = _batch()
    fill = random_hidden(valid, 0.02) | ~valid
    masks = SensorMask(valid, tv, fill)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        sparse = mae.predict(x, masks, at=fill)
        dense = mae.predict(x, masks)
    assert torch.allclose(sparse[fill].float(), dense[fill].float(), atol=0.05)


def test_mae_predict_at_sensors_with_gradients_enabled():
    """predict(..., at=...) also runs where autograd records (the MAE's decoder features carry
    gradients), and equals the dense prediction there."""
    torch.manual_seed(0)
    mae = XECMAE().eval()
    x, valid, tv = _batch()
    fill = random_hidden(valid, 0.02) | ~valid
    masks = SensorMask(valid, tv, fill)
    sparse = mae.predict(x, masks, at=fill)
    sparse[fill].sum().backward()
    assert mae.refiner.heads["inner"].conv1.weight.grad is not None
    with torch.no_grad():
        dense = mae.predict(x, masks)
    assert torch.allclose(sparse[fill].detach(), dense[fill], atol=1e-5)
