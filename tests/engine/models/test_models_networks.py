from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from engine.distill.recorders import FeatureRecorder
from engine.errors import CocoPathError
from engine.models import count_flops, count_params, create_model, model_names


@pytest.mark.parametrize("name", ["mobile-unet", "mobile-unet-small", "unet-resnet34", "unet-resnet50"])
def test_models_give_logits_and_h4_feature_layers(name: str) -> None:
    model = create_model(name, classes=3).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), FeatureRecorder(model, model.feature_layers) as rec:
        out = model(x)
        feats = rec.outputs()
    assert out.shape == (1, 3, 64, 96)
    enc, dec = feats["enc_shallow"], feats["dec_shallow"]
    assert enc.shape[-2:] == dec.shape[-2:] == (16, 24)  # the H/4 grid
    assert enc.shape[1] == dec.shape[1]  # equal channels: CoCo's Aᵀ·B is defined
    assert feats["enc_deep"].shape[-2:] == (2, 3)
    assert model.config["name"] == name and model.config["classes"] == 3


def test_teacher_and_student_h4_channels_match_the_paper() -> None:
    assert create_model("unet-resnet50").feature_channels("enc_shallow") == 256
    assert create_model("mobile-unet").feature_channels("enc_shallow") == 24


def test_gradients_reach_every_parameter() -> None:
    model = create_model("mobile-unet-small")
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_unknown_model_name_lists_valid_ones() -> None:
    with pytest.raises(KeyError) as err:
        create_model("unet-vgg16")
    for name in model_names():
        assert name in str(err.value)


def test_mobile_unet_size_matches_the_paper_and_is_small_beside_the_teacher() -> None:
    student, teacher = create_model("mobile-unet"), create_model("unet-resnet50")
    assert 4.2e6 < count_params(student) < 5.0e6  # paper: ~4.6 M
    s_flops = count_flops(student, 256)
    assert 1.3e9 < s_flops < 1.7e9  # paper: ~1.5 GFLOPs at 256²
    assert s_flops <= 0.10 * count_flops(teacher, 256)
    assert count_params(create_model("mobile-unet-small")) < count_params(student) / 3


def test_flop_counter_on_known_layers() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                        nn.Flatten(), nn.Linear(8 * 10 * 10, 5))
    expected = 8 * 100 * 27 + 8 * 100 * 9 + 800 * 5
    assert count_flops(net, 10) == expected


def test_local_encoder_weights_load_and_pickles_are_refused(tmp_path: Path) -> None:
    src = create_model("unet-resnet34")
    path = tmp_path / "resnet34.safetensors"
    save_file({f"encoder.{k}": v.contiguous() for k, v in src.encoder.state_dict().items()}, str(path))
    dst = create_model("unet-resnet34", encoder_weights=str(path))
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(v, dst.encoder.state_dict()[k])
    assert "encoder_weights" not in dst.config
    bad = tmp_path / "resnet34.pth"
    torch.save(src.encoder.state_dict(), bad)
    with pytest.raises(CocoPathError):
        create_model("unet-resnet34", encoder_weights=str(bad))


def test_groupnorm_variant_has_no_batchnorm() -> None:
    model = create_model("mobile-unet-small", norm="gn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
