"""Masked (FCMAE) blocks against sparse references that only ever read visible sites."""

import pytest
import torch
import torch.nn.functional as F

from xecbench import geometry as geo
from xecbench.nn import (
    ConvNeXtV2Block,
    Downsample,
    HexAttention,
    HexConv,
    HexNeXtBlock,
    SensorMask,
    XECEncoder,
    encoder_config,
)
from xecbench.nn.blocks import GRN, depthwise_conv, grn

torch.manual_seed(0)


def _randomise(block: torch.nn.Module) -> None:
    """GRN starts at gamma = beta = 0 (identity); give every parameter a value so all paths count."""
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)


def sparse_block_reference(block: ConvNeXtV2Block, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Slow reference: for each visible site gather the visible sites of its 7x7 window explicitly,
    then apply the pointwise layers site by site; GRN statistics over the visible sites only."""
    B, C, H, W = x.shape
    k = block.dwconv.kernel_size[0]
    r = k // 2
    w = block.dwconv.weight[:, 0]  # (C, k, k)
    out = torch.zeros_like(x)
    for b in range(B):
        vis = [(i, j) for i in range(H) for j in range(W) if not mask[b, 0, i, j]]
        hidden = []
        for i, j in vis:
            acc = block.dwconv.bias.clone()
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    ii, jj = i + di, j + dj
                    if 0 <= ii < H and 0 <= jj < W and not mask[b, 0, ii, jj]:
                        acc = acc + w[:, di + r, dj + r] * x[b, :, ii, jj]
            mlp = block.mlp
            hidden.append(mlp.act(mlp.pwconv1(mlp.norm(acc))))
        if not vis:
            continue
        h = torch.stack(hidden)  # (n_visible, 4C)
        gx = h.pow(2).sum(0).sqrt()
        nx = gx / (gx.mean() + block.mlp.grn.eps)
        h = block.mlp.grn.gamma * (h * nx) + block.mlp.grn.beta + h
        y = block.mlp.pwconv2(h)
        for n, (i, j) in enumerate(vis):
            out[b, :, i, j] = x[b, :, i, j] + y[n]
    return out


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("hw", [(9, 11), (6, 2), (3, 6)])  # the small maps run a cropped kernel
def test_convnext_block_equals_sparse_reference(ratio, hw):
    block = ConvNeXtV2Block(8)
    _randomise(block)
    x = torch.randn(2, 8, *hw)
    mask = torch.rand(2, 1, *hw) < ratio
    x_hidden_junk = torch.where(mask, torch.randn_like(x) * 100, x)  # hidden values must not matter
    with torch.no_grad():
        got = block(x_hidden_junk, mask)
        ref = sparse_block_reference(block, x, mask)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert (got.masked_select(mask.expand_as(got)) == 0).all()
    if ratio == 0.0:
        with torch.no_grad():
            assert torch.allclose(got, block(x), atol=1e-6)  # all visible == the dense block


def test_grn_uses_visible_sites_only():
    grn = GRN(4)
    _randomise(grn)
    x = torch.randn(3, 5, 6, 4)
    visible = (torch.rand(3, 5, 6, 1) > 0.4).float()
    got = grn(x, visible)
    for b in range(3):
        v = x[b][visible[b, ..., 0] > 0]  # (n, C)
        gx = v.pow(2).sum(0).sqrt()
        nx = gx / (gx.mean() + grn.eps)
        assert torch.allclose(got[b], grn.gamma * x[b] * nx + grn.beta + x[b], atol=1e-6)


def test_grn_gradients_equal_finite_differences():
    """GRN's visible-site statistics (a batched product with the flags) differentiate correctly, on a
    grid face and on hex nodes, against central differences in float64."""
    for shape, vis_shape in (((2, 3, 4, 5), (2, 3, 4, 1)), ((2, 7, 5), (2, 7, 1))):
        grn = GRN(5).double()
        _randomise(grn)
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        visible = (torch.rand(*vis_shape) > 0.4).double()
        visible[0] = 1.0  # one sample fully visible, one partly
        assert torch.autograd.gradcheck(lambda t, g=grn, v=visible: g(t, v), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("flags", [False, True])
def test_grn_backward_equals_autograd_of_the_plain_formula(dtype, flags):
    """GRN's written-out backward against autograd through :func:`grn`'s plain operators: the
    gradients of x, gamma and beta, with and without visible flags, with a fully hidden sample and a
    channel below the clamp (the clamp's zero gradient), in float32 and in half precision (float32
    statistics there). The flags get no gradient."""
    torch.manual_seed(1)
    module = GRN(6)
    _randomise(module)
    x = torch.randn(3, 4, 5, 6)
    x[0, ..., 1] = 1e-14  # a channel whose sum of squares is below the clamp: no gradient through it
    x = x.to(dtype)
    visible = (torch.rand(3, 4, 5, 1) > 0.5).float().requires_grad_() if flags else None
    if flags:
        with torch.no_grad():
            visible[2] = 0.0  # nothing visible: statistics 0, GRN the identity plus beta
    mine = x.clone().requires_grad_()
    y = module(mine, visible)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    got = (mine.grad, module.gamma.grad.clone(), module.beta.grad.clone())
    with pytest.raises(RuntimeError):  # no second derivatives (once_differentiable): an error, not a wrong value
        gx = torch.autograd.grad((module(mine, visible) * g).sum(), mine, create_graph=True)[0]
        gx.sum().backward()
    module.zero_grad()
    ref_x = x.clone().requires_grad_()
    y_ref = grn(ref_x, None if visible is None else visible.detach(), module.gamma, module.beta, module.eps)
    assert torch.equal(y, y_ref)  # the same operators forward
    (y_ref * g).sum().backward()
    want = (ref_x.grad, module.gamma.grad, module.beta.grad)
    assert got[0].dtype == dtype and torch.isfinite(got[0]).all()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(got, want):
        assert torch.allclose(a.float(), b.float(), rtol=tol, atol=tol * b.float().abs().max().item())
    if flags:
        assert visible.grad is None


@pytest.mark.parametrize("hw", [(1, 1), (6, 2), (3, 6), (2, 9), (12, 3), (8, 8)])
def test_depthwise_conv_with_a_cropped_kernel_equals_the_full_one(hw):
    """On maps smaller than the 7x7 kernel the cropped convolution gives the full one's output and
    gradients (input, weight, bias): the dropped taps only ever meet zero padding."""
    conv = torch.nn.Conv2d(5, 5, 7, padding=3, groups=5).double()
    x = torch.randn(2, 5, *hw, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 5, *hw, dtype=torch.float64)
    (depthwise_conv(conv, x) * g).sum().backward()
    got = [x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()]
    x.grad, conv.weight.grad, conv.bias.grad = None, None, None
    ref = conv(x)
    (ref * g).sum().backward()
    assert torch.allclose(depthwise_conv(conv, x), ref, atol=1e-12)
    for a, b in zip(got, [x.grad, conv.weight.grad, conv.bias.grad]):
        assert torch.allclose(a, b, atol=1e-12)


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    """In training each sample's branch is either dropped (0) or scaled by 1 / (1 - p), so the expected
    output is the input; in eval it is the identity."""
    from xecbench.nn import DropPath

    torch.manual_seed(0)
    dp = DropPath(0.25).train()
    x = torch.rand(4000, 3, 2) + 0.5
    y = dp(x)
    kept = (y != 0).flatten(1).all(1)
    assert ((y != 0).flatten(1).any(1) == kept).all()  # all of a sample or none of it
    assert torch.allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    assert abs(kept.float().mean().item() - 0.75) < 0.03  # 3 sigma of 4000 draws is 0.021
    assert torch.equal(dp.eval()(x), x)
    # in bf16 each kept value is x / 0.75 rounded once (a scale of 1 / 0.75 rounded to bf16 first
    # would bias every kept sample by +0.2 %)
    xb = x.bfloat16()
    yb = dp.train()(xb)
    kept = (yb != 0).flatten(1).all(1)
    assert kept.any() and torch.equal(yb[kept], xb[kept] / 0.75)


def test_grn_parameters_learn_behind_a_frozen_input():
    """With an input that needs no gradient (a frozen layer below) GRN's backward skips the input's
    gradient and still gives gamma and beta theirs, as autograd of the plain formula does."""
    module = GRN(5)
    _randomise(module)
    x, visible = torch.randn(2, 7, 5), (torch.rand(2, 7, 1) > 0.3).float()
    (module(x, visible) ** 2).sum().backward()
    got = (module.gamma.grad.clone(), module.beta.grad.clone())
    module.zero_grad()
    (grn(x, visible, module.gamma, module.beta, module.eps) ** 2).sum().backward()
    assert torch.allclose(got[0], module.gamma.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(got[1], module.beta.grad, rtol=1e-5, atol=1e-6)


def test_add_residual_equals_mask_after_drop_path():
    """The one-pass residual equals ``(x + drop_path(y)) * visible`` with the same random draws, in
    float32 (one addcmul) and bf16 (the plain composition), for grid flags ``(B, 1, H, W)`` and node
    flags ``(B, N, 1)``; it keeps channels-last."""
    from xecbench.nn import DropPath
    from xecbench.nn.blocks import add_residual

    for shape, flag_shape in (((6, 4, 5, 3), (6, 1, 5, 3)), ((6, 7, 4), (6, 7, 1))):
        visible = (torch.rand(flag_shape) > 0.5).float()
        for dtype in (torch.float32, torch.bfloat16):
            x = (torch.randn(shape) * visible).to(dtype)  # zero at hidden sites, as the blocks hand it over
            y = torch.randn(shape).to(dtype)
            if len(shape) == 4:
                x, y = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
            for dp in (DropPath(0.0), DropPath(0.5).train(), DropPath(0.5).eval()):
                torch.manual_seed(3)
                got = add_residual(x, y, dp, visible.to(dtype))
                torch.manual_seed(3)
                want = (x + dp(y)) * visible.to(dtype)
                assert torch.allclose(got.float(), want.float(), rtol=1e-6 if dtype == torch.float32 else 1e-2)
                assert torch.equal(got == 0, want == 0)  # the same samples dropped, the same sites zero
                if len(shape) == 4:
                    assert got.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(add_residual(x, y, DropPath(0.0), None), x + y)


def test_visible_first_packs_each_events_visible_sites_in_order():
    from xecbench.nn.blocks import visible_first

    flags = (torch.rand(5, 6, 7, 1) > 0.6).float()  # about 40 % visible, different counts per event
    flags[3] = 0.0  # an event with nothing visible
    order = visible_first(flags)
    per_event = flags.reshape(5, -1)
    k = int(per_event.sum(1).max())
    assert order.shape == (5, k)
    for b in range(5):
        visible_sites = per_event[b].nonzero().flatten()
        n = len(visible_sites)
        assert torch.equal(order[b, :n], visible_sites)  # the visible ones first, in site order
        assert (per_event[b, order[b, n:]] == 0).all()  # then hidden ones to fill
        assert len(set(order[b].tolist())) == k  # no site twice
    assert visible_first(torch.ones(2, 10, 1)) is None  # all visible: packing would not pay
    assert visible_first(torch.zeros(0, 10, 1)) is None  # no events: nothing to pack
    with torch.no_grad():  # inference keeps the dense operators (the trace's and the exports' bits)
        assert visible_first(flags) is None
    # bf16 flags (under autocast) with more visible sites than bf16 counts exactly (256): none is lost
    many = torch.zeros(2, 1100, 1, dtype=torch.bfloat16)
    many[0, torch.randperm(1100)[:401]] = 1.0
    many[1, :300] = 1.0
    order = visible_first(many)
    assert order.shape == (2, 401)
    assert torch.equal(order[0], many[0, :, 0].nonzero().flatten())
    assert visible_first((torch.rand(2, 100, 1) > 0.1).float()) is None  # 90 % visible: neither


@pytest.mark.parametrize("hex_nodes", [False, True])
def test_packed_blocks_equal_dense_blocks_in_values_and_gradients(monkeypatch, hex_nodes):
    """At 60 % hidden the blocks run their pointwise layers on the packed visible sites: the outputs
    and every gradient (input, kernel, linear layers, GRN) equal the dense computation's (float64)."""
    from xecbench.nn import blocks

    torch.manual_seed(5)
    block = (HexNeXtBlock(8, "conv") if hex_nodes else ConvNeXtV2Block(8)).double()
    _randomise(block)
    shape = (4, geo.HEX_N, 8) if hex_nodes else (4, 8, 9, 7)
    x = torch.randn(shape, dtype=torch.float64)
    mask = torch.rand(shape[0], geo.HEX_N) < 0.6 if hex_nodes else torch.rand(4, 1, 9, 7) < 0.6
    g = torch.randn(shape, dtype=torch.float64)
    flags = (~mask).double().reshape(4, -1, 1)
    results = []
    for limit in (blocks.PACK_MAX_VISIBLE, -1.0):  # packed, then dense
        monkeypatch.setattr(blocks, "PACK_MAX_VISIBLE", limit)
        assert (blocks.visible_first(flags) is not None) == (limit > 0)
        block.zero_grad()
        xi = x.clone().requires_grad_()
        out = block(xi, mask)
        (out * g).sum().backward()
        results.append([out, xi.grad] + [p.grad.clone() for p in block.parameters()])
    for packed, dense in zip(*results):
        assert torch.allclose(packed, dense, rtol=1e-10, atol=1e-12)


def test_downsample_carries_the_mask():
    down = Downsample(4, 6)
    x = torch.randn(1, 4, 5, 4)
    mask = torch.ones(1, 1, 5, 4, dtype=torch.bool)
    mask[0, 0, 0, 0] = False  # one visible fine site -> coarse (0, 0) visible
    mask[0, 0, 4, 3] = False  # in the padded last row -> coarse (2, 1) visible
    y, m = down(x, mask)
    assert m.shape == (1, 1, 3, 2) and y.shape == (1, 6, 3, 2)
    assert m[0, 0].tolist() == [[False, True], [True, True], [True, False]]
    assert (y.masked_select(m.expand_as(y)) == 0).all()


def test_whole_encoder_never_sees_hidden_values():
    enc = XECEncoder(encoder_config("tiny", hex_op="attention"))
    for blk in enc.modules():
        if isinstance(blk, GRN):
            _randomise(blk)
    enc.eval()
    B = 2
    x = torch.randn(B, 4760, 2)
    visible = torch.rand(B, 4760) > 0.6
    time_valid = torch.rand(B, 4760) > 0.5
    junk = torch.where(visible[..., None], x, torch.randn_like(x) * 1e3)
    tv_junk = torch.where(visible, time_valid, torch.rand(B, 4760) > 0.5)
    none = torch.zeros_like(visible)
    with torch.no_grad():
        a = enc(x, SensorMask(visible, time_valid, none))
        b = enc(junk, SensorMask(visible, tv_junk, none))
    assert torch.allclose(a["tokens"], b["tokens"], atol=1e-5)
    for face in geo.FACES:
        assert torch.allclose(a["features"][face], b["features"][face], atol=1e-5)


def test_hex_conv_and_its_gradients_equal_edge_loop():
    """The gather form against a loop over the graph's edges, forward and backward (the gather's
    backward is an index_add over the neighbour table)."""
    conv = HexConv(5)
    _randomise(conv)
    x = torch.randn(2, 73, 5, requires_grad=True)
    g = geo.hex_graph()
    ref = conv.bias.expand(2, 73, 5).clone()
    for s, t, d in zip(g.src, g.dst, g.direction):
        ref[:, t] = ref[:, t] + conv.weight[d] * x[:, s]
    got = conv(x)
    assert torch.allclose(got, ref, atol=1e-6)
    w = torch.randn(2, 73, 5)
    grads = torch.autograd.grad((got * w).sum(), (x, conv.weight))
    ref_grads = torch.autograd.grad((ref * w).sum(), (x, conv.weight))
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_hex_attention_masks_keys_and_equals_loop():
    att = HexAttention(8, heads=2)
    _randomise(att)
    x = torch.randn(1, 73, 8)
    mask = torch.rand(1, 73) < 0.5
    xz = x * (~mask)[..., None]
    with torch.no_grad():
        got = att(xz, mask)
        q, k, v = att.qkv(xz).chunk(3, dim=-1)
        g = geo.hex_graph()
        for node in range(73):
            keys = [(int(s), int(d)) for s, t, d in zip(g.src, g.dst, g.direction) if t == node and not mask[0, s]]
            heads = []
            for h in range(2):
                sl = slice(4 * h, 4 * h + 4)
                if not keys:
                    heads.append(torch.zeros(4))
                    continue
                kk = torch.stack([k[0, s, sl] + att.dir_emb[d, sl] for s, d in keys])
                vv = torch.stack([v[0, s, sl] for s, _ in keys])
                w = torch.softmax(kk @ q[0, node, sl] / 2.0, dim=0)
                heads.append(w @ vv)
            assert torch.allclose(got[0, node], att.proj(torch.cat(heads)), atol=1e-5), node


@pytest.mark.parametrize("op", ["conv", "attention"])
def test_hexnext_block_hidden_nodes_stay_zero_and_do_not_leak(op):
    blk = HexNeXtBlock(8, op, heads=2)
    _randomise(blk)
    x = torch.randn(2, 73, 8)
    mask = torch.rand(2, 73) < 0.4
    with torch.no_grad():
        a = blk(x, mask)
        b = blk(torch.where(mask[..., None], torch.randn_like(x) * 50, x), mask)
    assert torch.allclose(a, b, atol=1e-5)
    assert (a[mask] == 0).all()


def test_dense_and_masked_paths_agree_for_padding_shapes():
    # a 24x6 face padded to 24x6 and a 9x24 face padded to 10x24 through Downsample
    d = Downsample(3, 4)
    x = torch.randn(1, 3, 9, 24)
    y, m = d(x, torch.zeros(1, 1, 9, 24, dtype=torch.bool))
    x_pad = F.pad(x, (0, 0, 0, 1))
    ref = d.conv(d.norm(x_pad))
    ref[..., -1, :] = d.conv(torch.where(torch.arange(10)[:, None] < 9, d.norm(x_pad), 0.0))[..., -1, :]
    assert torch.allclose(y, ref, atol=1e-6) and not m.any()


def test_whole_face_encoder_equals_sparse_reference():
    """A grid-face encoder (stem, blocks, downsampling, pooled token) against a reference that applies
    the per-site operations explicitly and the blocks through the sparse-gather reference."""
    from xecbench.nn.blocks import downsample_mask, pad_to_multiple
    from xecbench.nn.encoder import GridFaceEncoder

    torch.manual_seed(3)
    cfg = encoder_config("tiny", dims=(8, 16), depths=(1, 1))
    enc = GridFaceEncoder(cfg, stem=2)
    _randomise(enc)  # non-zero LayerNorm biases and GRN weights: anything that refills hidden sites shows
    enc.eval()
    img = torch.randn(2, 3, 9, 10)
    mask = torch.rand(2, 1, 9, 10) < 0.5
    junk = torch.where(mask, torch.randn_like(img) * 50, img)
    with torch.no_grad():
        feats, m, token = enc(junk, mask)

        def per_site_norm(norm, x, msk):  # LayerNorm over channels at visible sites only
            y = torch.zeros_like(x)
            for b, i, j in (~msk[:, 0]).nonzero().tolist():
                y[b, :, i, j] = F.layer_norm(x[b, :, i, j], (x.shape[1],), norm.weight, norm.bias, norm.eps)
            return y

        def strided(conv, x, msk, k):  # non-overlapping k x k conv reading visible sites only
            x = x.masked_fill(msk, 0.0)
            coarse = downsample_mask(msk, k)
            y = torch.zeros(x.shape[0], conv.out_channels, x.shape[2] // k, x.shape[3] // k)
            for b, i, j in (~coarse[:, 0]).nonzero().tolist():
                patch = x[b, :, i * k : (i + 1) * k, j * k : (j + 1) * k]
                y[b, :, i, j] = (conv.weight * patch[None]).sum((1, 2, 3)) + conv.bias
            return y, coarse

        x, msk = pad_to_multiple(img, mask, 2)
        x, msk = strided(enc.stem, x, msk, 2)
        x = per_site_norm(enc.stem_norm, x, msk)
        for down, blocks in zip(enc.downs, enc.stages):
            if not isinstance(down, torch.nn.Identity):
                x, msk = pad_to_multiple(x, msk, 2)
                x, msk = strided(down.conv, per_site_norm(down.norm, x, msk), msk, 2)
            for blk in blocks:
                x = sparse_block_reference(blk, x, msk)
        vis = (~msk).float()
        pooled = (x * vis).sum((2, 3)) / vis.sum((2, 3)).clamp(min=1)
        ref_token = enc.head(enc.head_norm(pooled))
    assert torch.equal(m, msk)
    assert torch.allclose(feats, x, atol=1e-5)
    assert torch.allclose(token, ref_token, atol=1e-5)
