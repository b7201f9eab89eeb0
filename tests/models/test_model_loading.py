"""Networks from checkpoint and weights files (models/loading.py: the file half of registry.load_model)."""

from __future__ import annotations

import pytest
import torch

from cmd_ray.config import load_config
from cmd_ray.models.dimpnet import build_model
from cmd_ray.models.loading import ModelLoadError, checkpoint_file, load_checkpoint_model, network_with_weights
from cmd_ray.models.training_state import save_training_state


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(None, ["model.preset=tiny"])
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def test_a_checkpoint_carries_its_network_and_a_state_dict_uses_the_given_config(tiny, tmp_path):
    cfg, net = tiny
    save_training_state(tmp_path, {"model": net.state_dict(), "config": cfg.model_dump(mode="json")})
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    other = load_config(None, ["model.preset=dimp18"])  # not the stored network: the checkpoint's config wins
    loaded, loaded_cfg = load_checkpoint_model(tmp_path, other)
    assert loaded_cfg.model.preset == "tiny" and not loaded.training
    plain, plain_cfg = load_checkpoint_model(tmp_path / "weights.pt", cfg)
    assert plain_cfg is cfg
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in loaded.state_dict().items())


def test_checkpoint_file_finds_the_training_state_of_a_folder(tmp_path):
    assert checkpoint_file(str(tmp_path)) == str(tmp_path / "training_state.pt")
    assert checkpoint_file(str(tmp_path / "weights.pt")) == str(tmp_path / "weights.pt")


def test_unreadable_or_unfitting_weights_name_the_source(tiny, tmp_path):
    cfg, net = tiny
    with pytest.raises(ModelLoadError, match="no such file"):
        load_checkpoint_model(tmp_path / "nothing.pt", cfg)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"cannot load model .*junk\.pt"):
        load_checkpoint_model(tmp_path / "junk.pt", cfg)
    partial = {k: v for k, v in net.state_dict().items() if not k.startswith("bb_regressor.iou_predictor")}
    with pytest.raises(ModelLoadError, match=r"(?s)weights of partial do not fit the dimp/tiny network:\n.*missing"):
        network_with_weights(cfg, partial, "partial")


def test_networks_built_for_tracking_are_independent_copies_with_their_weights(tiny):
    # network_with_weights copies one template per network spec and process: each call must still get its own
    # network, holding exactly the weights it was given, and changing one must not reach the next
    cfg, net = tiny
    first = network_with_weights(cfg, net.state_dict())
    with torch.no_grad():
        for p in first.parameters():
            p.add_(1.0)
    second = network_with_weights(cfg, net.state_dict())
    assert second is not first
    assert all(torch.equal(second.state_dict()[k], v) for k, v in net.state_dict().items())
    conv = second.feature_extractor.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)  # the layout the convolutions run fastest in
