"""Guidance for user networks (wrap_module with a conditioning keyword) and class-conditional diffusers
UNet2DModels (num_class_embeds): the guided D is D_u + w (D_c - D_u) of direct network calls."""
import json

import pytest
import torch

from core.errors import ScheduleLabError
from core.models.guidance import ConditionalWrapped, GuidedDenoiser
from core.models.wrap import wrap_module


class LabelNet(torch.nn.Module):
    """eps-prediction toy network with a label embedding: F(x, t, y) = tanh(x W + e_y) * t / 1000."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = torch.nn.Parameter(torch.randn(3, 3, generator=g))
        self.emb = torch.nn.Parameter(torch.randn(5, 3, generator=g))        # 4 classes + null (4)

    def forward(self, x, t, y):
        return torch.tanh(x @ self.W + self.emb[y]) * (1 + t.float().reshape(-1, 1) / 1000)


class FixedLabel(torch.nn.Module):
    def __init__(self, net, label):
        super().__init__()
        self.net, self.label = net, label

    def forward(self, x, t):
        return self.net(x, t, torch.full((x.shape[0],), self.label))


def test_wrap_module_conditioning_and_guidance_formula():
    net = LabelNet()
    m = wrap_module(net, "eps", "discrete", "index", event_shape=(3,), cond_kwarg="y", null_cond=4, num_classes=4)
    assert isinstance(m, ConditionalWrapped)
    plain = wrap_module(FixedLabel(net, 2), "eps", "discrete", "index",
                        event_shape=(3,))
    null = wrap_module(FixedLabel(net, 4), "eps", "discrete", "index",
                       event_shape=(3,))
    x, s = torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), torch.full((6,), 1.7)
    with torch.no_grad():
        assert torch.allclose(GuidedDenoiser(m, 2, 1.0)(x, s), plain(x, s), atol=1e-6)
        assert torch.allclose(m(x, s), null(x, s), atol=1e-6)
        for w in (0.0, 3.0, 7.5):
            want = null(x, s) + w * (plain(x, s) - null(x, s))
            assert torch.allclose(GuidedDenoiser(m, 2, w)(x, s), want, atol=1e-5)
    with pytest.raises(ScheduleLabError, match="null_cond"):
        wrap_module(net, "eps", "discrete", "index", event_shape=(3,), cond_kwarg="y")
    with pytest.raises(ScheduleLabError, match="out of range"):
        GuidedDenoiser(m, 4, 2.0)


def test_class_conditional_diffusers_unet(tmp_path):
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler, UNet2DModel

    from core.models.diffusers_loader import load_diffusers
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=4).eval()
    with torch.no_grad():                              # make the class embedding matter
        unet.class_embedding.weight.mul_(50)
    unet.save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "scheduler")
    m = load_diffusers(tmp_path)
    assert isinstance(m, ConditionalWrapped) and m.num_classes == 3 and m.null_cond == 3
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    s = torch.full((4,), 2.0)
    t = m.inner.net_time(s)

    def direct(label):
        eps = unet(x / (1 + s.reshape(-1, 1, 1, 1) ** 2).sqrt(), t, class_labels=torch.full((4,), label)).sample
        return x - s.reshape(-1, 1, 1, 1) * eps
    with torch.no_grad():
        d1, dn = direct(1), direct(3)
        assert (d1 - dn).abs().max() > 1e-3
        g = GuidedDenoiser(m, 1, 4.0)
        assert torch.allclose(g(x, s), dn + 4.0 * (d1 - dn), atol=1e-4)
        assert g.calls_per_eval == 2
    cfg = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert cfg["num_class_embeds"] == 4
