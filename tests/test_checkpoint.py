"""Our checkpoint format and the ImageNet initialisation from a local file."""

from __future__ import annotations

import pytest
import torch

from resmasknet import (
    CheckpointMismatch,
    create_model,
    load_checkpoint,
    load_imagenet_backbone,
    save_checkpoint,
)

FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_round_trip_rebuilds_from_config_alone(tmp_path):
    model = create_model("resmasknet_tiny", **{"mask2.activation": "sigmoid", "mask3.enabled": False}).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, classes=FER_CLASSES, metadata={"epoch": 3})
    # it loads with weights_only=True (plain types and tensors only)
    payload = torch.load(path, weights_only=True)
    assert payload["classes"] == list(FER_CLASSES) and payload["metadata"]["epoch"] == 3
    again, ckpt = load_checkpoint(path)
    # the rebuilt network has the stored config and computes the same logits
    assert again.config == model.config
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    # preprocessing is recorded for users of the file
    assert ckpt["preprocessing"]["input_size"] == 48


def test_an_authors_checkpoint_is_pointed_to_load_original(tmp_path):
    path = tmp_path / "theirs.pth"
    torch.save({"net": {"conv1.weight": torch.zeros(1)}}, path)
    # the error says which loader fits
    with pytest.raises(CheckpointMismatch, match="load_original"):
        load_checkpoint(path)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pt"
    save_checkpoint(path, create_model("resmasknet_tiny"), classes=FER_CLASSES)
    path.write_bytes(path.read_bytes()[:1000])
    # a damaged file names itself and says it is damaged
    with pytest.raises(CheckpointMismatch, match=r"cut\.pt: damaged or truncated PyTorch file"):
        load_checkpoint(path)


def test_empty_and_foreign_files_say_why_they_are_not_checkpoints(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    text = tmp_path / "x.pt"
    text.write_bytes(b"hello world, not weights")
    # an empty file is named as empty, with its size
    with pytest.raises(CheckpointMismatch, match=r"empty\.pt: empty file \(0 bytes\), not a checkpoint"):
        load_checkpoint(empty)
    # a file that is not a PyTorch file at all says so and shows how it starts
    with pytest.raises(CheckpointMismatch, match=r"x\.pt: not a PyTorch file \(it starts with b'hello"):
        load_checkpoint(text)


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    # a save that fails leaves neither the checkpoint nor a temporary file
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "x.pt", create_model("resmasknet_tiny"), classes=FER_CLASSES)
    assert list(tmp_path.iterdir()) == []


def test_imagenet_weights_missing_is_clear_and_offline(tmp_path):
    # no file: a clear error that says how to get one, and no download attempt
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        create_model("resnet34_paper", pretrained=str(tmp_path / "resnet34.pth"))


def test_imagenet_weights_load_into_the_backbone(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = create_model("resnet34_paper", backbone="resnet18", pretrained=str(path))
    # backbone tensors are copied; the 1000-class head is not
    assert torch.equal(model.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    assert model.fc[1].weight.shape == (7, 512)
    grey = create_model("resnet34_paper", backbone="resnet18", in_chans=1)
    report = load_imagenet_backbone(grey, path)
    # a grey stem takes the sum of the RGB filters
    torch.testing.assert_close(grey.conv1.weight, tv.conv1.weight.sum(1, keepdim=True))
    assert "fc.weight" in report["skipped"]
    # a backbone of another shape is refused with the mis-shaped keys named
    with pytest.raises(CheckpointMismatch, match="layer"):
        create_model("resnet34_paper", pretrained=str(path))
