import time

import pytest
import timm
import torch
from conftest import tiny_net
from safetensors.torch import save_file

from vitcls.errors import ConfigError
from vitcls.models import backbone as backbone_module
from vitcls.models.backbone import PretrainedWeightsUnavailable, create_backbone
from vitcls.models.classifier import ImageClassifier
from vitcls.preprocessing import resolve_data_config

NAME = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def source_model():
    """A timm model trained elsewhere on 7 classes: its weights file is what users bring."""
    torch.manual_seed(0)
    return timm.create_model(NAME, pretrained=False, num_classes=7)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load_backbone_and_leave_a_fresh_head(tmp_path, source_model, suffix):
    path = tmp_path / f"weights{suffix}"
    state = source_model.state_dict()
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)

    torch.manual_seed(123)
    module = ImageClassifier(
        backbone={"name": NAME, "weights": str(path), "img_size": 224},
        head={"name": "linear"},
        class_names=["a", "b", "c"],
    )
    loaded = module.backbone.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    assert not any(key.startswith("head.") for key in loaded)
    assert module.head.fc.weight.shape == (3, 192)
    assert not torch.allclose(module.head.fc.weight[:3], state["head.weight"][:3])


def test_local_weights_resize_position_embedding_for_another_image_size(tmp_path, source_model):
    path = tmp_path / "weights.safetensors"
    save_file(source_model.state_dict(), path)
    model = create_backbone(NAME, weights=str(path), img_size=64)
    assert model.pos_embed.shape == (1, 1 + 4 * 4, 192)
    assert torch.equal(model.blocks[3].mlp.fc1.weight, source_model.blocks[3].mlp.fc1.weight)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="model.weights file not found"):
        create_backbone(NAME, weights=str(tmp_path / "missing.safetensors"))


def test_pretrained_offline_fails_fast_with_a_way_out(monkeypatch):
    monkeypatch.setattr(backbone_module, "_pretrained_in_cache", lambda name: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.time()
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        create_backbone("vit_tiny_patch16_224.augreg_in21k", pretrained=True)
    assert time.time() - started < 10
    assert "model.pretrained=false" in str(error.value)
    assert "model.weights=" in str(error.value)


def test_unknown_model_name_is_rejected():
    with pytest.raises(ValueError, match="not a timm model"):
        create_backbone("vit_imaginary_patch3")


def test_mean_tap_pools_after_the_final_norm_where_pretrained_weights_expect_it():
    # create_backbone has no pooling setting any more: the model keeps timm's own pooling and final norm,
    # and the feature tap (tap.features=mean) averages the patch tokens that come out of that norm.
    torch.manual_seed(0)
    net = tiny_net("linear", tap={"features": "mean"}).eval()
    model = net.backbone
    assert isinstance(model.norm, torch.nn.LayerNorm)
    assert isinstance(model.fc_norm, torch.nn.Identity)
    assert model.global_pool == "token"
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.norm(model.blocks(model._pos_embed(model.patch_embed(images))))
        [features] = net.features(images)  # one tap
        torch.testing.assert_close(features, tokens[:, model.num_prefix_tokens :].mean(dim=1))


def test_backbone_returns_pooled_features_and_data_config_follows_img_size():
    model = create_backbone(NAME, img_size=48).eval()
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, model.num_features)
    config = resolve_data_config(model)
    assert config["input_size"] == (3, 48, 48)  # timm's own resolver would say 224
    assert config["mean"] == (0.5, 0.5, 0.5)
