"""The timm model factory: shapes, penultimate features, heads, refused names."""

import pytest
import torch

from freeenergy.models import create_model, penultimate_features


@pytest.mark.parametrize(
    "name, size, feature_dim", [("resnet_narrow", 16, 128), ("resnet18_cifar", 32, 512), ("vgg16_bn", 84, 4096)]
)
def test_models_give_logits_and_penultimate_features(name, size, feature_dim):
    model = create_model(name, num_classes=7).eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits, features = model(images), penultimate_features(model, images)
    assert logits.shape == (2, 7) and features.shape == (2, feature_dim)
    head = model.get_classifier()
    torch.testing.assert_close(head(features), logits)


def test_small_input_stem_keeps_full_resolution_in_the_first_stage():
    model = create_model("resnet18_cifar", num_classes=3)
    stem = torch.nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
    assert stem(torch.randn(1, 3, 32, 32)).shape[-2:] == (32, 32)


def test_narrow_resnet_width_sets_the_feature_size():
    assert create_model("resnet_narrow", num_classes=2, width=4).num_features == 32


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="model='alexnet' is unknown"):
        create_model("alexnet", num_classes=2)
