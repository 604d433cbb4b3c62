import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from xecbench import geometry as geo
from xecbench.data import EventDataset
from xecbench.nn import XECMAE
from xecbench.viz import mask_explorer, render


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    return XECMAE(), EventDataset.from_simulation(6, seed=5)


def test_render_hides_the_expected_number_of_sensors(setup):
    model, ds = setup
    valid = ds[0]["valid"].numpy()
    for face, ratio in (("inner", 0.6), ("top", 0.3)):
        fig, info = render(model, ds, 0, face, ratio)
        n_valid_total = int(valid.sum())
        # the mask draws floor(ratio * n_valid) sensors over the whole detector; this face gets its share
        assert 0 < info["n_hidden"] <= valid[geo.face_ids(face)].sum()
        assert info["n_sensors"] == geo.face_ids(face).size
        assert len(fig.axes) == 7  # five panels, two colour bars
        plt.close(fig)
    fig, info = render(model, ds, 0, "inner", 0.6)
    masked_all = math.floor(0.6 * n_valid_total)
    assert abs(info["n_hidden"] - masked_all * 4092 / 4760) < 0.05 * masked_all
    plt.close(fig)
    with pytest.raises(ValueError, match="face must be one of"):
        render(model, ds, 0, "side", 0.5)


def test_widget_redraws_on_slider_and_selectors(setup):
    model, ds = setup
    box = mask_explorer(model, ds, ratio=0.6)
    first = dict(box.last)
    assert len(box.output.outputs) == 1 and "image/png" in box.output.outputs[0]["data"]
    box.controls["ratio"].value = 0.2
    assert box.last["ratio"] == 0.2 and box.last["n_hidden"] < first["n_hidden"] / 2
    assert box.last["recon_sum"] != first["recon_sum"]  # a new reconstruction was drawn
    assert len(box.output.outputs) == 1  # replaced, not stacked
    assert "mask ratio 0.20" in box.children[1].value
    box.controls["face"].value = "top"
    assert box.last["face"] == "top" and box.last["n_sensors"] == 73
    box.controls["event"].value = 3
    assert box.last["event"] == 3 and len(box.output.outputs) == 1


def test_reconstruct_shows_the_neighbour_average_beside_the_model(setup):
    from xecbench.baselines import neighbour_average
    from xecbench.eval import reconstruct

    model, ds = setup
    rec = reconstruct(model, ds, 1, 0.3, seed=4)
    hidden, dead = rec["hidden"], rec["dead"]
    assert hidden.any() and not (hidden & dead).any()
    visible = ~hidden & ~dead
    truth = np.nan_to_num(rec["truth"])
    ref, _ = neighbour_average(torch.as_tensor(np.where(visible, truth, 0.0))[None], torch.as_tensor(visible)[None])
    assert np.allclose(rec["neighbour_average"][hidden], ref[0].numpy()[hidden])
    shown = ~hidden & ~dead
    assert np.array_equal(rec["neighbour_average"][shown], rec["truth"][shown])  # the input elsewhere
    fig, info = render(model, ds, 1, "inner", 0.3, seed=4)
    plt.close(fig)
    assert info["rmse_neighbour_average"] > 0 and np.isfinite(info["rmse_model"])
