import pytest
import torch

from medlearn.engine import count_parameters
from medlearn.errors import ConfigError, DataError
from medlearn.itl.config import ARCHS
from medlearn.itl.model import (
    ITL_ARCHS,
    MultiSiteExpert,
    ResNetEncoder,
    adapt_stem,
    build_encoder,
    load_pretrained,
)

# torchvision's resnet18 has 11,689,512 parameters, of which fc has 512 * 1000 + 1000.
TORCHVISION_R18_WITHOUT_FC = 11_689_512 - 513_000
TORCHVISION_R34_WITHOUT_FC = 21_797_672 - 513_000
TORCHVISION_R50_WITHOUT_FC = 25_557_032 - 2_049_000


def test_encoder_matches_torchvision_sizes_and_names():
    enc = build_encoder("resnet18", in_chans=3, width=64)
    assert count_parameters(enc) == TORCHVISION_R18_WITHOUT_FC
    assert count_parameters(build_encoder("resnet34", 3, 64)) == TORCHVISION_R34_WITHOUT_FC
    assert count_parameters(build_encoder("resnet50", 3, 64)) == TORCHVISION_R50_WITHOUT_FC
    keys = set(enc.state_dict())
    for k in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.bn2.num_batches_tracked",
    ):
        assert k in keys, k
    assert "layer1.0.downsample.0.weight" not in keys  # torchvision has no shortcut conv there


def test_encoders_are_registered_under_the_config_names():
    assert ITL_ARCHS.names() == list(ARCHS)
    assert all(isinstance(build_encoder(a, 1, 4), ResNetEncoder) for a in ARCHS)
    with pytest.raises(
        ConfigError, match="unknown ITL encoder 'resnet101'; registered: resnet18, resnet34, resnet50"
    ):
        MultiSiteExpert("resnet101", 1, 4, [8, 8, 4, 4, 4])


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_model_output_shape_odd_sizes(arch):
    m = MultiSiteExpert(arch, in_chans=3, width=4, decoder_channels=[8, 8, 4, 4, 4])
    out = m(torch.randn(2, 3, 37, 45))
    assert out.shape == (2, 2, 37, 45)
    feats = m.encode(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]


def _torchvision_like(tmp_path, width=8):
    src = build_encoder("resnet18", in_chans=3, width=width)
    torch.manual_seed(0)
    sd = {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in src.state_dict().items()}
    sd["fc.weight"] = torch.randn(10, 8 * width)
    sd["fc.bias"] = torch.randn(10)
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    return sd, path


def test_pretrained_mapping_drops_fc_and_adapts_stem(tmp_path):
    sd, path = _torchvision_like(tmp_path)
    enc1 = build_encoder("resnet18", in_chans=1, width=8)
    dropped = load_pretrained(enc1, path)
    assert sorted(dropped) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(enc1.conv1.weight, sd["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(enc1.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
    torch.testing.assert_close(enc1.bn1.running_mean, sd["bn1.running_mean"])
    enc3 = build_encoder("resnet18", in_chans=3, width=8)
    load_pretrained(enc3, path)
    torch.testing.assert_close(enc3.conv1.weight, sd["conv1.weight"])
    # 5 channels: RGB tiled (R G B R G), scaled by 3/5
    w = sd["conv1.weight"]
    expected = torch.cat([w, w[:, :2]], 1) * 0.6
    torch.testing.assert_close(adapt_stem(w, 5), expected)
    # a grey image replicated to RGB gives the same stem response as the summed kernel on one channel
    x = torch.randn(1, 1, 16, 16)
    a = torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), w)
    b = torch.nn.functional.conv2d(x, adapt_stem(w, 1))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_pretrained_bad_inputs(tmp_path):
    _, path = _torchvision_like(tmp_path, width=8)
    with pytest.raises(DataError, match="does not fit the encoder"):
        load_pretrained(build_encoder("resnet18", 1, width=16), path)
    with pytest.raises(DataError, match="lacks encoder weights"):
        load_pretrained(build_encoder("resnet34", 1, width=8), path)
    with pytest.raises(DataError, match="does not exist"):
        load_pretrained(build_encoder("resnet18", 1, width=8), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(DataError, match="not a readable torch checkpoint"):
        load_pretrained(build_encoder("resnet18", 1, width=8), tmp_path / "junk.pth")


def test_two_heads_constant_parameter_count_and_source_sync():
    m = MultiSiteExpert("resnet18", 1, 4, [8, 8, 4, 4, 4])
    n = count_parameters(m)
    assert count_parameters(m.source_decoder) == count_parameters(m.target_decoder)
    assert not any(p.requires_grad for p in m.source_decoder.parameters())
    with torch.no_grad():
        m.target_decoder.head.bias.add_(1.0)
    m.sync_source_from_target(trainable=True)
    torch.testing.assert_close(m.source_decoder.head.bias, m.target_decoder.head.bias)
    assert all(p.requires_grad for p in m.source_decoder.parameters())
    assert count_parameters(m) == n


def test_pretrained_from_safetensors_with_prefix(tmp_path):
    from safetensors.torch import save_file

    from medlearn.itl.config import ModelConfig
    from medlearn.itl.model import build_model

    sd, _ = _torchvision_like(tmp_path, width=8)
    save_file({f"module.{k}": v.contiguous() for k, v in sd.items()}, str(tmp_path / "r18.safetensors"))
    cfg = ModelConfig(
        width=8, decoder_channels=[16, 8, 8, 8, 8], pretrained=str(tmp_path / "r18.safetensors")
    )
    model = build_model(cfg, in_chans=3)
    torch.testing.assert_close(model.encoder.layer4[1].bn2.weight, sd["layer4.1.bn2.weight"])
