"""The paper preset is numerically the authors' network: every key and shape, logits within 1e-4."""

from __future__ import annotations

import pytest
import torch

from resmasknet import CheckpointMismatch, create_model, export_original, load_original
from resmasknet.reference import load_reference, reference_state_dict


@pytest.fixture(scope="module")
def reference(reference_path):
    spec = load_reference(reference_path)
    return spec, reference_state_dict(spec)


def test_reference_logits_and_taps(reference):
    spec, sd = reference
    model = load_original({"net": sd})
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits, taps = model.forward_taps(x)
    # logits agree with the authors' implementation to 1e-4
    torch.testing.assert_close(logits, torch.tensor(spec["logits"]), atol=1e-4, rtol=0)
    for name, ref in spec["taps"].items():
        t = taps[name]
        # each stage's features and each mask match in shape, mean, std and per-image mass
        assert list(t.shape) == ref["shape"]
        assert t.mean().item() == pytest.approx(ref["mean"], rel=1e-4, abs=1e-6)
        assert t.std().item() == pytest.approx(ref["std"], rel=1e-4, abs=1e-6)
        assert t.abs().sum((1, 2, 3)).tolist() == pytest.approx(ref["abs_sum_per_image"], rel=1e-4)
    # the unique parameter count is the reference's
    assert sum(p.numel() for p in model.parameters()) == spec["parameters_unique"]


def test_export_reproduces_the_original_state_dict(reference):
    spec, sd = reference
    exported = export_original(load_original(sd))
    # same keys in the same order, each with the same values (aliases included)
    assert list(exported) == [item["key"] for item in spec["state_dict"]]
    for key, value in sd.items():
        assert torch.equal(exported[key], value), key


def test_load_from_file_with_their_layout(reference, tmp_path):
    _, sd = reference
    path = tmp_path / "their.pth"
    torch.save({"net": sd}, path)
    model = load_original(path)
    # a file in their format loads with weights_only and keeps their values
    assert torch.equal(model.fc[1].weight, sd["fc.1.weight"])


def test_mismatch_lists_missing_unexpected_and_misshaped(reference):
    _, sd = reference
    bad = dict(sd)
    del bad["layer1.0.conv1.weight"]
    bad["extra.weight"] = torch.zeros(1)
    bad["fc.1.weight"] = torch.zeros(8, 512)
    with pytest.raises(CheckpointMismatch) as err:
        load_original(bad)
    msg = str(err.value)
    # every kind of mismatch is named, with the key
    assert "1 missing" in msg and "layer1.0.conv1.weight" in msg
    assert "1 unexpected" in msg and "extra.weight" in msg
    assert "1 mis-shaped" in msg and "fc.1.weight: checkpoint (8, 512) vs model (7, 512)" in msg


def test_alias_that_differs_is_refused(reference):
    _, sd = reference
    bad = dict(sd)
    bad["mask1.downsample1.0.weight"] = sd["mask1.downsample1.0.weight"] + 1
    # a checkpoint whose twin keys disagree was not written by the authors' code
    with pytest.raises(CheckpointMismatch, match="mask1.downsample1.0.weight"):
        load_original(bad)


def test_missing_file_is_a_clear_error(tmp_path):
    # a path that does not exist names the path
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_original(tmp_path / "nope.pth")


def test_cpu_preset_exports_and_reloads():
    model = create_model("resmasknet_tiny")
    sd = export_original(model)
    # alias keys are written for every projection shortcut in the masks
    assert "mask1.downsample1.0.weight" in sd and "mask1.conv1.downsample.0.weight" in sd
    again = load_original(sd, config=model.config)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
