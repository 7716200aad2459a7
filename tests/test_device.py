"""The device code, run on every device (the `device` fixture: cpu, and cuda where present; `ablate doctor
--device cuda` runs these with ABLATE_TEST_DEVICE=cuda). Each test checks the device's result against the
plain CPU computation (fp32, contiguous memory, no_grad: the authors' way), so on the CPU it compares the
optimised path (channels_last, inference_mode) with the plain one, and on CUDA the GPU with the CPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from resmasknet import create_model, load_checkpoint
from resmasknet.augment import augment_batch
from resmasknet.data import load_data
from resmasknet.evaluate import evaluate
from resmasknet.train import TrainConfig, train

# fp32 on CUDA: cuDNN may use TF32 for convolutions (10-bit mantissa), so logits agree to about 1e-3 relative
TOL = {"cpu": 1e-4, "cuda": 2e-2}


def _tol(device: str) -> float:
    return TOL["cuda" if device.startswith("cuda") else "cpu"]


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return torch.randint(0, 256, (24, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _plain_logits(model, faces: torch.Tensor) -> torch.Tensor:
    ref = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        return ref(ref.prepare_input(faces).contiguous()).float()


@pytest.mark.parametrize("name", ["resmasknet_tiny", "resmasknet_cpu", "resnet_cpu"])
def test_forward_on_device_matches_plain_cpu(device, faces, name):
    model = create_model(name, seed=0).eval()
    ref = _plain_logits(model, faces)
    net = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = net(net.prepare_input(faces.to(device))).float().cpu()
    scale = ref.abs().max().item()
    assert torch.allclose(out, ref, atol=_tol(device) * scale, rtol=0), (out - ref).abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.95


def test_bf16_autocast_agrees_with_fp32(device, faces):
    from resmasknet.runtime import precision_for

    if device.startswith("cuda") and precision_for(device) != "bf16":
        pytest.skip(f"{device} has no native bf16 (before Ampere): the toolkit runs fp32 there")
    model = create_model("resmasknet_tiny", seed=0).eval()
    ref = torch.softmax(_plain_logits(model, faces), 1)
    net = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        out = torch.softmax(net(net.prepare_input(faces.to(device))).float(), 1).cpu()
    # bf16 keeps 8 bits of mantissa: probabilities within a few hundredths, the same top class nearly always
    assert (out - ref).abs().max() < 0.05
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


def test_unapplied_masks_equal_no_masks_on_device(device, faces):
    off = create_model("resmasknet_tiny", seed=3, **{"masks.enabled": False}).to(device).eval()
    unapplied = create_model("resmasknet_tiny", seed=3, **{"masks.application": "unapplied"}).to(device).eval()
    x = off.prepare_input(faces.to(device))
    with torch.inference_mode():
        a, b = off(x).cpu(), unapplied(x).cpu()
    assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_augmentation_on_device_matches_cpu(device, faces):
    model = create_model("resmasknet_tiny", seed=0)
    cpu = augment_batch(model, faces, torch.Generator().manual_seed(5))
    on_dev = augment_batch(model.to(device), faces.to(device), torch.Generator().manual_seed(5)).cpu()
    assert on_dev.is_contiguous(memory_format=torch.channels_last)
    # bilinear sampling of the same draws: equal up to float rounding at the sample positions
    assert torch.allclose(on_dev, cpu, atol=1e-4, rtol=0)
    assert not torch.allclose(cpu, model.cpu().prepare_input(faces))  # the draws did move the pixels


def test_evaluate_on_device_matches_cpu_with_tta(device):
    split = load_data("generated:n=240,seed=0").select("test")
    model = create_model("resmasknet_tiny", seed=1)
    for tta in (None, "flip", "authors"):
        ref = evaluate(copy.deepcopy(model), split, device="cpu", tta=tta, batch_size=32)
        got = evaluate(copy.deepcopy(model), split, device=device, tta=tta, batch_size=32)
        # CUDA evaluates under bf16 autocast (Ampere on; fp32 before): the probabilities agree loosely, the
        # predictions nearly always
        tol = 1e-4 if device == "cpu" else 0.05
        assert np.abs(got.probabilities - ref.probabilities).max() < tol, tta
        assert (got.predictions == ref.predictions).mean() >= 0.9, tta


def test_training_on_device_learns_and_reloads_on_cpu(device, tmp_path):
    data = load_data("generated:n=300,seed=0,expression=1,occlusion=0,rotation=0,noise=0.02")
    model = create_model("resmasknet_tiny", seed=0, base_width=4)
    cfg = TrainConfig(epochs=3, batch_size=32, optimizer="adamw", lr=0.003, scheduler="onecycle",
                      early_stop_patience=None, seed=0)
    result = train(model, data, cfg, out_dir=tmp_path, progress=False, device=device)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < 0.97 * losses[0]  # it learns (how well: tests/test_train.py)
    # the checkpoint is device-free: it loads on the CPU and predicts what the device predicted
    reloaded, _ = load_checkpoint(tmp_path / "best.pt", map_location="cpu")
    test = data.select("test")
    on_cpu = evaluate(reloaded, test, device="cpu")
    on_dev = evaluate(load_checkpoint(tmp_path / "best.pt", map_location=device)[0], test, device=device)
    # the same probabilities (CUDA evaluates under bf16 autocast: loosely, as in the evaluation test above), so
    # a face may change its prediction only where its two likeliest classes are within twice that of each
    # other (three epochs leave most faces there: a share of agreeing predictions would test bf16's rounding)
    tol = 1e-4 if device == "cpu" else 0.05
    assert np.abs(on_dev.probabilities - on_cpu.probabilities).max() < tol
    top2 = np.sort(on_cpu.probabilities, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tol
    assert (on_cpu.predictions[clear] == on_dev.predictions[clear]).all()


def test_bench_on_device(device):
    from resmasknet.bench import bench_model
    from resmasknet.bench_modes import bench_modes

    row = bench_model("resmasknet_tiny", batch_size=8, device=device, steps=2, warmup=1, seconds=5, rounds=1,
                      plain=False)
    from resmasknet.runtime import precision_for

    assert row["device"].startswith(torch.device(device).type)
    # bf16 autocast where the device's one precision decision says so: on a GPU with native bf16 (Ampere on),
    # never on a CPU without the opt-in
    assert row["bf16"] == (precision_for(device) == "bf16") and row["precision"] == precision_for(device)
    assert row["train_img_s"] > 0 and row["eval_img_s"] > 0
    rows = bench_modes(["resmasknet_tiny"], device=device, batch_size=8, modes=("fp32", "channels_last"),
                       steps=2, warmup=1, seconds=5)
    assert [r["mode"] for r in rows] == ["fp32", "channels_last"]
    assert rows[0]["train_x"] == 1.0 and rows[1]["train_x"] > 0


def test_mask_taps_on_device_match_plain_cpu(device, faces):
    from ablate.analysis.common import channels_last

    model = create_model("resmasknet_tiny", seed=2).eval()
    ref_net = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        _, ref = ref_net.forward_taps(ref_net.prepare_input(faces).contiguous())
    with channels_last(copy.deepcopy(model).to(device)) as net, torch.inference_mode():
        _, got = net.forward_taps(net.prepare_input(faces.to(device)))
    assert sorted(got) == sorted(ref) and {f"mask{i}" for i in range(1, 5)} <= set(got)
    for name, r in ref.items():  # masks are sigmoid outputs in [0, 1]; features scale with the input
        g = got[name].float().cpu()
        assert torch.allclose(g, r, atol=_tol(device) * max(1.0, r.abs().max().item()), rtol=0), name


def test_macs_counted_on_device_as_on_cpu(device):
    from resmasknet import count_macs

    model = create_model("resmasknet_tiny", seed=0)
    # a study's trial counts the MACs of its trained model where training left it
    assert count_macs(copy.deepcopy(model).to(device)) == count_macs(model)
