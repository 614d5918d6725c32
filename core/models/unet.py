"""A small UNet for 16x16 images, used as the raw network F of an EDM-preconditioned denoiser.

D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)   (Karras et al. 2022, Table 1; `EDMPrecond`).

Architecture (a reduced DDPM++ / ADM layout, written from the papers' descriptions):
- noise embedding: Fourier features of c_noise = ln(sigma) / 4 (EDM's `FourierFeatures`),
  then a 2-layer SiLU MLP to `emb` channels;
- encoder: per level, `blocks` residual blocks (GroupNorm, SiLU, 3x3 conv, adaptive
  scale/shift from the embedding, GroupNorm, SiLU, 3x3 conv), then a 2x average-pool
  downsample (not after the last level);
- middle: residual block, optional single-head self-attention, residual block;
- decoder: mirror of the encoder, each block takes the matching skip by concatenation,
  nearest-neighbour 2x upsample between levels;
- output: GroupNorm, SiLU, 3x3 conv, zero-initialised so F starts at 0 (D = c_skip x).
- optional class conditioning (`num_classes` > 0): a learned embedding of the label (index
  `num_classes` is the null label of classifier-free guidance) added to the noise embedding
  (Ho & Salimans 2022; the conditioning of ADM / DiT).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as Fn


def _groups(ch: int) -> int:
    return min(8, ch // 4) if ch >= 8 else 1


class NoiseEmbedding(nn.Module):
    """c_noise [B] -> [B, emb]: random Fourier features (fixed, seeded) + MLP."""

    def __init__(self, emb: int, fourier: int = 32, scale: float = 4.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(fourier // 2, generator=g) * scale)
        self.mlp = nn.Sequential(nn.Linear(fourier, emb), nn.SiLU(), nn.Linear(emb, emb))

    def forward(self, c_noise):
        a = 2 * math.pi * c_noise.reshape(-1, 1) * self.freqs
        return self.mlp(torch.cat([a.cos(), a.sin()], dim=1))


class ResBlock(nn.Module):
    """GN-SiLU-conv, embedding scale/shift, GN-SiLU-dropout-conv, plus a (1x1) skip."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(Fn.silu(self.norm1(x)))
        scale, shift = self.affine(e)[:, :, None, None].chunk(2, dim=1)
        h = Fn.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(self.drop(h))
        return (self.skip(x) + h) / math.sqrt(2)


class SelfAttention(nn.Module):
    """Single-head self-attention over the spatial positions, residual."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)    # [b, hw, hw]
        out = (v @ a.transpose(1, 2)).reshape(b, c, h, w)
        return (x + self.proj(out)) / math.sqrt(2)


class UNet(nn.Module):
    """F(c_in x, c_noise): [B, C, H, W] x [B] -> [B, C, H, W] (H, W divisible by 2^(levels-1))."""

    def __init__(self, in_ch: int = 1, channels=(32, 64, 128), blocks: int = 1, emb: int = 128,
                 attention: bool = True, dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.config = {"in_ch": in_ch, "channels": list(channels), "blocks": blocks, "emb": emb,
                       "attention": attention, "dropout": dropout}
        self.num_classes = int(num_classes)
        if self.num_classes:
            self.config["num_classes"] = self.num_classes
            self.class_embed = nn.Embedding(self.num_classes + 1, emb)     # last row: the null label
        self.embed = NoiseEmbedding(emb)
        self.inp = nn.Conv2d(in_ch, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips, c = [channels[0]], channels[0]
        for lvl, ch in enumerate(channels):
            for _ in range(blocks):
                self.down.append(ResBlock(c, ch, emb, dropout))
                c = ch
                skips.append(c)
            if lvl < len(channels) - 1:
                self.down.append(nn.AvgPool2d(2))
                skips.append(c)
        self.mid1 = ResBlock(c, c, emb, dropout)
        self.attn = SelfAttention(c) if attention else nn.Identity()
        self.mid2 = ResBlock(c, c, emb, dropout)
        self.up = nn.ModuleList()
        for lvl, ch in reversed(list(enumerate(channels))):
            for _ in range(blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), ch, emb, dropout))
                c = ch
            if lvl > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out = nn.Conv2d(c, in_ch, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, c_noise, class_labels=None):
        """class_labels: [B] int64 in 0..num_classes (num_classes = null), only with num_classes > 0."""
        e = self.embed(c_noise)
        if self.num_classes:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            e = e + self.class_embed(class_labels)
        e = Fn.silu(e)
        h = self.inp(x)
        hs = [h]
        for m in self.down:
            h = m(h, e) if isinstance(m, ResBlock) else m(h)
            hs.append(h)
        h = self.mid2(self.attn(self.mid1(h, e)), e)
        for m in self.up:
            h = m(torch.cat([h, hs.pop()], dim=1), e) if isinstance(m, ResBlock) else m(h)
        return self.out(Fn.silu(self.out_norm(h)))
