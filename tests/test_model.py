"""The builder: presets, parameter counts, taps, unapplied control, property tests on random configs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resmasknet
from resmasknet import ConfigError, MaskConfig, NetConfig, count_parameters, create_model, list_models
from resmasknet.config import ACTIVATIONS, APPLICATIONS


def test_paper_parameter_counts():
    # the authors' resmasking_dropout1 has 137,796,423 unique parameters (aliases once)
    assert count_parameters(create_model("resmasknet_paper")) == 137_796_423
    # with every mask off it is exactly ResNet-34 with a 7-class head
    assert count_parameters(create_model("resmasknet_paper", **{"masks.enabled": False})) == 21_288_263
    # the unapplied control keeps every mask parameter
    assert count_parameters(create_model("resmasknet_paper_unapplied")) == 137_796_423


def test_unapplied_masks_give_the_same_logits_as_no_masks():
    torch.manual_seed(0)
    cfg = resmasknet.get_config("resmasknet_tiny")
    plain = resmasknet.ResMaskNet(cfg.replace(**{"masks.enabled": False})).eval()
    control = resmasknet.ResMaskNet(cfg.replace(**{"masks.application": "unapplied"})).eval()
    # copy the shared backbone weights; the control's mask weights stay random
    missing, unexpected = control.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("mask") for k in missing)
    x = torch.rand(3, 1, 48, 48)
    with torch.no_grad():
        a = plain(x)
        b, taps = control.forward_taps(x)
    # the mask branch ran (its tap exists) ...
    assert taps["mask1"].shape == taps["layer1"].shape
    # ... and changed nothing
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", list_models())
def test_every_preset_builds_runs_and_learns(name):
    if "paper" in name:
        pytest.skip("224-px presets are covered by the reference and count tests")
    model = create_model(name).train()
    x = torch.rand(2, model.config.in_chans, model.config.input_size, model.config.input_size)
    logits = model(x)
    # the head gives one logit per class
    assert logits.shape == (2, model.config.num_classes)
    logits.sum().backward()
    # every parameter that influences the output gets a gradient
    assert model.fc[1].weight.grad is not None


def test_taps_have_stable_names_and_modules():
    model = create_model("resmasknet_tiny", **{"mask3.enabled": False}).eval()
    logits, taps = model.forward_taps(torch.rand(2, 1, 48, 48))
    # every stage has layerN and refineN; maskN only where the mask is on
    assert set(taps) == {"layer1", "layer2", "layer3", "layer4", "mask1", "mask2", "mask4",
                         "refine1", "refine2", "refine3", "refine4"}
    # the modules behind the taps are reachable by the same names, for hooks and Captum
    mods = model.tap_modules()
    assert set(mods) == set(taps)
    seen = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o)) for n, m in mods.items()]
    with torch.no_grad():
        model(torch.rand(2, 1, 48, 48))
    for h in handles:
        h.remove()
    # a hook on each module sees a tensor of the tap's shape
    assert {n: t.shape for n, t in seen.items()} == {n: t.shape for n, t in taps.items()}
    # without a mask, the refined features are the stage's features
    assert torch.equal(taps["refine3"], taps["layer3"])
    # with the residual application, refine = layer * (1 + mask)
    torch.testing.assert_close(taps["refine1"], taps["layer1"] * (1 + taps["mask1"]))


def test_relu_modules_are_not_reused_or_inplace():
    model = create_model("resmasknet_tiny")
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    # Captum's DeepLift needs one ReLU module per use, none in place
    assert len({id(m) for m in relus}) == len(relus) and not any(m.inplace for m in relus)
    calls: dict[int, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1))
             for m in relus]
    model(torch.rand(1, 1, 48, 48))
    for h in hooks:
        h.remove()
    # each ReLU module runs once per forward pass
    assert set(calls.values()) == {1}


def test_prepare_input_resizes_and_copies_channels():
    model = create_model("resmasknet_paper_unapplied", **{"masks.enabled": False})
    faces = torch.randint(0, 256, (2, 48, 48), dtype=torch.uint8)
    x = model.prepare_input(faces)
    # 48-px grey uint8 becomes 224-px, 3 identical channels, in [0, 1], channels_last
    assert x.shape == (2, 3, 224, 224) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 2]) and x.is_contiguous(memory_format=torch.channels_last)


def test_softmax_mask_sums_to_one_over_channels():
    model = create_model("resmasknet_tiny").eval()
    with torch.no_grad():
        _, taps = model.forward_taps(torch.rand(2, 1, 48, 48))
    for i in (1, 2, 4):
        # the paper's mask is a softmax over channels: each pixel's mask sums to 1
        torch.testing.assert_close(taps[f"mask{i}"].sum(1), torch.ones_like(taps[f"mask{i}"][:, 0]))


# ---- property tests on random valid configs -----------------------------------------------------

@st.composite
def configs(draw):
    backbone = draw(st.sampled_from(["resnet18", "resnet34", "resnet50"]))
    in_chans = draw(st.sampled_from([1, 3]))
    stem = draw(st.sampled_from(["native", "imagenet"]))
    input_size = draw(st.sampled_from([16, 24, 32, 40]) if stem == "native" else st.sampled_from([64, 96, 112]))
    base = NetConfig(backbone=backbone, base_width=4, stem=stem, input_size=input_size, in_chans=in_chans,
                     num_classes=draw(st.integers(2, 8)), drop_rate=draw(st.floats(0, 0.9)),
                     masks=tuple(MaskConfig(enabled=False) for _ in range(4)))
    masks = []
    for i in range(4):
        masks.append(MaskConfig(
            enabled=draw(st.booleans()),
            depth=draw(st.integers(1, base.max_mask_depth(i))),
            width=draw(st.sampled_from([1.0, 1.5, 2.0])),
            activation=draw(st.sampled_from(ACTIVATIONS)),
            application=draw(st.sampled_from(APPLICATIONS))))
    return dataclasses.replace(base, masks=tuple(masks))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_random_valid_configs_build_run_and_round_trip(cfg):
    # a config survives JSON unchanged
    assert NetConfig.from_json(cfg.to_json()) == cfg
    model = resmasknet.ResMaskNet(cfg).train()
    x = torch.rand(2, cfg.in_chans, cfg.input_size, cfg.input_size)
    logits, taps = model.forward_taps(x)
    # logits have one entry per class; every tap keeps its stage's shape
    assert logits.shape == (2, cfg.num_classes)
    for i, (m, c, s) in enumerate(zip(cfg.masks, cfg.stage_channels, cfg.stage_sizes), start=1):
        assert taps[f"refine{i}"].shape == (2, c, s, s)
        assert (f"mask{i}" in taps) == m.enabled
        if m.enabled and m.activation == "softmax":
            # softmax masks sum to 1 over channels
            torch.testing.assert_close(taps[f"mask{i}"].sum(1), torch.ones(2, s, s), atol=1e-5, rtol=0)
    logits.square().sum().backward()
    # gradients reach the stem
    assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()


@pytest.mark.parametrize("changes, field", [
    ({"backbone": "resnet101"}, "backbone"),
    ({"stem": "deep"}, "stem"),
    ({"in_chans": 2}, "in_chans"),
    ({"drop_rate": 1.5}, "drop_rate"),
    ({"mask2.activation": "relu"}, "mask2.activation"),
    ({"mask3.application": "add"}, "mask3.application"),
    ({"mask1.depth": 0}, "mask1.depth"),
    ({"mask4.depth": 3}, "mask4.depth"),  # stage 4 is 7 px: no pool fits
    ({"masks.width": 0.5}, "mask1.width"),
    ({"mask5.depth": 1}, "mask5"),
    ({"colour": "red"}, "colour"),
    ({"mask1.size": 3}, "mask1.size"),
])
def test_invalid_configs_are_refused_naming_the_field(changes, field):
    # the error names the offending field
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        resmasknet.get_config("resmasknet_paper", **changes)


def test_invalid_choice_lists_allowed_values():
    # a bad activation names the allowed ones
    with pytest.raises(ConfigError, match="'softmax'.*'sigmoid'"):
        NetConfig().replace(**{"mask1.activation": "gelu"})


def test_from_dict_refuses_unknown_keys():
    d = NetConfig().to_dict()
    d["masks"][1]["deepth"] = 2
    # a misspelt mask field is refused by name
    with pytest.raises(ConfigError, match="deepth"):
        NetConfig.from_dict(d)


def test_unknown_preset_suggests_nearest():
    # a typo suggests the nearest preset
    with pytest.raises(KeyError, match="resmasknet_cpu"):
        create_model("resmasknet_cpv")


def test_override_precedence_most_specific_wins():
    cfg = NetConfig().replace(**{"mask2.enabled": True, "masks.enabled": False})
    # masks.* applies to all stages, then mask2.* overrides stage 2
    assert [m.enabled for m in cfg.masks] == [False, True, False, False]


def test_flop_count_matches_the_paper_network():
    # about 21.9 GMACs at 224 (DESIGN.md)
    assert round(resmasknet.count_macs(create_model("resmasknet_paper")) / 1e9, 1) == 21.9


def test_macs_are_counted_where_the_model_lives():
    # a trained model may sit on a GPU; the meta device (no data, any placement but the CPU) stands in for it
    # here: the count must be the CPU one, not an error from a CPU input meeting weights elsewhere
    model = create_model("resmasknet_tiny", seed=0)
    on_cpu = resmasknet.count_macs(model)
    assert on_cpu > 0 and resmasknet.count_macs(model.to("meta")) == on_cpu
