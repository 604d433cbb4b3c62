import math

import pytest
import torch

from xecbench import geometry as geo
from xecbench.nn import POSENCS, XECMAE, MAEConfig, SensorMask, XECEncoder, encoder_config, random_hidden
from xecbench.nn.posenc import alibi_bias, rope_rotate, sinusoidal_table


def _batch(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4760, 2, generator=g)
    valid = torch.rand(B, 4760, generator=g) > 0.05
    time_valid = valid & (torch.rand(B, 4760, generator=g) > 0.9)
    return x, valid, time_valid


@pytest.mark.parametrize("posenc", POSENCS)
def test_encoder_shapes_for_every_positional_encoding(posenc):
    cfg = encoder_config("tiny", posenc=posenc)
    enc = XECEncoder(cfg)
    x, valid, tv = _batch()
    out = enc(x, SensorMask(valid, tv, torch.zeros_like(valid)))
    assert out["tokens"].shape == (2, 6, cfg.token_dim)
    assert out["features"]["inner"].shape == (2, cfg.dims[-1], 12, 6)  # 93x44 /4 stem /2 stage
    assert out["features"]["us"].shape == (2, cfg.dims[-1], 12, 3)
    assert out["features"]["outer"].shape == (2, cfg.dims[-1], 5, 12)
    assert out["features"]["top"].shape == (2, 73, cfg.hex_dim)
    maps = enc.fusion.attention_maps()
    assert len(maps) == cfg.fusion_layers and maps[0].shape == (2, cfg.fusion_heads, 6, 6)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, cfg.fusion_heads, 6))


def test_positional_encodings_change_the_output_and_none_is_permutation_equivariant():
    torch.manual_seed(0)
    enc = XECEncoder(encoder_config("tiny", posenc="none")).eval()
    D = enc.cfg.token_dim
    perm = torch.tensor([3, 1, 0, 5, 2, 4])
    t = torch.randn(1, 6, D)
    with torch.no_grad():
        # without a positional encoding the fusion cannot tell the faces apart
        assert torch.allclose(enc.fusion(t[:, perm]), enc.fusion(t)[:, perm], atol=1e-5)
        for kind in ("learnable", "sinusoidal", "geometric", "rope", "alibi"):
            torch.manual_seed(0)
            e2 = XECEncoder(encoder_config("tiny", posenc=kind)).eval()
            assert not torch.allclose(e2.fusion(t[:, perm]), e2.fusion(t)[:, perm], atol=1e-4), kind


def test_learnable_posenc_init():
    enc = XECEncoder(encoder_config("tiny", posenc="learnable", token_dim=256))
    table = enc.fusion.posenc.table
    assert table.shape == (1, 6, 256) and table.requires_grad
    assert 0.017 < table.std().item() < 0.023


def test_sinusoidal_table_formula():
    t = sinusoidal_table(6, 8)
    assert t[3, 2].item() == pytest.approx(math.sin(3 / 10000 ** (2 / 8)))
    assert t[3, 3].item() == pytest.approx(math.cos(3 / 10000 ** (2 / 8)))


def test_rope_scores_depend_only_on_relative_position():
    q = torch.randn(1, 1, 1, 16).expand(1, 1, 6, 16)
    k = torch.randn(1, 1, 1, 16).expand(1, 1, 6, 16)
    s = rope_rotate(q) @ rope_rotate(k).transpose(-1, -2)  # (1, 1, 6, 6)
    for shift in range(1, 5):
        diag = torch.diagonal(s[0, 0], offset=shift)
        assert torch.allclose(diag, diag[0].expand_as(diag), atol=1e-5)
    assert torch.allclose(rope_rotate(q).norm(dim=-1), q.norm(dim=-1))


def test_alibi_bias_formula():
    b = alibi_bias(4)
    c = torch.tensor(geo.face_centres(), dtype=torch.float32) / 100
    i, j = 0, 4
    assert b[1, i, j].item() == pytest.approx(-(2.0**-4) * (c[i] - c[j]).norm().item(), rel=1e-5)
    assert (torch.diagonal(b, dim1=1, dim2=2) == 0).all()


def test_mae_loss_only_counts_masked_sensors():
    torch.manual_seed(0)
    model = XECMAE(MAEConfig(encoder=encoder_config("tiny")))
    x, valid, tv = _batch()
    x = x.requires_grad_(True)
    out = model(x, model.draw_masks(valid, tv, generator=torch.Generator().manual_seed(1)))
    assert out.pred.shape == (2, 4760, 2) and set(out.loss_per_face) == set(geo.FACES)
    assert not (out.masks.hidden & ~valid).any()
    # recompute the loss by hand from the prediction
    m, mt = out.masks.hidden, out.masks.hidden & tv
    p = out.pred.detach()
    err = (p - x.detach()) ** 2
    ref = sum(err[b, m[b], 0].mean() + err[b, mt[b], 1].mean() for b in range(2)) / 2  # mean over events
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    (grad_x,) = torch.autograd.grad(out.loss, x, retain_graph=True)
    # through the target path alone, unscored sensors (visible, or masked without a valid time) get none
    target_only = torch.autograd.grad(model.loss(p, x, out.masks)[0], x)[0]
    assert (target_only[~m] == 0).all()
    assert (target_only[..., 1][m & ~tv] == 0).all()
    assert grad_x.abs().sum() > 0


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = XECMAE(MAEConfig(encoder=encoder_config("tiny", hex_op="attention", posenc="geometric")))
    x, valid, tv = _batch()
    valid = torch.ones_like(valid)
    # random 60 % plus whole coarse cells on every grid face, so each decoder's mask token is used
    mask = torch.rand(2, 4760, generator=torch.Generator().manual_seed(0)) < 0.6
    for face, (rows, cols) in {"inner": (8, 8), "us": (2, 2), "ds": (2, 2), "outer": (2, 2)}.items():
        mask[:, torch.as_tensor(geo.grid_ids(face)[:rows, :cols].ravel())] = True
    # the refiner's output layers start at zero (the MAE starts as the neighbour average), which would
    # stop the gradient behind them on the first step; as after any optimiser step, make them nonzero
    for head in model.refiner.heads.values():
        torch.nn.init.normal_(head.out.weight, std=0.01)
    model(x, SensorMask(valid, tv, mask)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == [], missing


def test_masked_sensor_values_do_not_reach_the_prediction():
    torch.manual_seed(0)
    model = XECMAE(MAEConfig(encoder=encoder_config("tiny"))).eval()
    x, valid, tv = _batch()
    mask = torch.rand(2, 4760, generator=torch.Generator().manual_seed(3)) < 0.6
    with torch.no_grad():
        a = model(x, SensorMask(valid, tv, mask)).pred
        b = model(torch.where(mask[..., None], torch.randn_like(x) * 100, x), SensorMask(valid, tv, mask)).pred
    assert torch.allclose(a, b, atol=1e-5)


def test_presets_and_config_errors():
    from xecbench.nn import preset_parameter_counts

    counts = preset_parameter_counts()
    tiny = XECEncoder(encoder_config("tiny"))
    # an independent count: every parameter tensor's element count
    assert counts["tiny"]["encoder"] == sum(p.numel() for p in tiny.parameters()) < 2_000_000
    assert counts["base"]["mae"] > counts["base"]["encoder"] > 10 * counts["tiny"]["encoder"]
    base = encoder_config("base")
    assert base.token_dim == 1024
    with pytest.raises(ValueError, match="unknown encoder preset 'huge'"):
        encoder_config("huge")
    with pytest.raises(ValueError, match=r"posenc must be one of \('learnable'"):
        encoder_config("tiny", posenc="relative")
    with pytest.raises(ValueError, match="MAEConfig.loss must be one of"):
        MAEConfig(loss="l2")
    with pytest.raises(ValueError, match=r"x must be \(B, 4760, 2\)"):
        ones = torch.ones(1, 4759, dtype=torch.bool)
        XECEncoder()(torch.zeros(1, 4759, 2), SensorMask(ones, ones, ~ones))


@pytest.mark.slow
def test_torch_compile_of_the_encoder_on_cpu():
    enc = XECEncoder(encoder_config("tiny")).eval()
    x, valid, tv = _batch()
    compiled = torch.compile(enc)
    masks = SensorMask(valid, tv, torch.zeros_like(valid))
    with torch.no_grad():
        assert torch.allclose(compiled(x, masks)["tokens"], enc(x, masks)["tokens"], atol=1e-4)


@pytest.mark.slow
def test_torch_compile_of_the_refiner_with_its_classical_estimates():
    """The refiner (what the MAE and the inpainter end in) compiles: its classical estimates read numpy
    geometry tables, which run eagerly inside the compiled graph (training.compile failed there)."""
    from xecbench.nn import XECInpainter

    torch.manual_seed(0)
    refiner = XECInpainter(XECEncoder()).refiner
    for head in refiner.heads.values():
        torch.nn.init.normal_(head.out.weight, std=0.1)
    x, valid, tv = _batch()
    masks = SensorMask(valid, tv, random_hidden(valid, 0.3))
    tokens = torch.randn(x.shape[0], 6, XECEncoder().cfg.token_dim)
    with torch.no_grad():
        eager = refiner(x, masks, tokens)
        compiled = torch.compile(refiner)(x, masks, tokens)
    assert torch.allclose(compiled, eager, atol=1e-4)


@pytest.mark.parametrize("package", ["xecbench.nn", "xecbench.data", "xecbench.train", "xecbench.eval", "xecbench.viz"])
def test_star_import_exports_what_all_lists(package):
    namespace: dict = {}
    exec(f"from {package} import *", namespace)  # raises if __all__ names something missing
    module = __import__(package, fromlist=["__all__"])
    assert set(module.__all__) <= set(namespace)


def test_nn_modules_import_each_other_without_a_cycle():
    """Every import between the modules of xecbench/nn, also inside functions, forms an acyclic graph."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "xecbench" / "nn"
    names = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    graph = {}
    for name in names:
        tree = ast.parse((folder / f"{name}.py").read_text())
        graph[name] = {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        } & names
    done, visiting = set(), []

    def visit(n):
        assert n not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(n) :] + [n])}"
        if n in done:
            return
        visiting.append(n)
        for m in graph[n]:
            visit(m)
        visiting.pop()
        done.add(n)

    for n in sorted(names):
        visit(n)
