"""Building blocks of YOLO11 (ultralytics 8.3 / 8.4 architecture, re-implemented).

Shape symbols: B batch, C channels, H, W spatial size, R DFL bins (``reg_max``), K classes.

Every block reproduces the reference's layers, their order of registration and their parameter
shapes, so a reference ``state_dict`` maps onto ours position by position (see
``tests/yolo/test_yolo_model.py``). The code is our own.

* :class:`Conv` Conv2d (no bias) + BatchNorm (eps 1e-3, momentum 0.03, as ultralytics sets them) + SiLU.
* :class:`Bottleneck` two convs with a residual add when shapes allow.
* :class:`C3k2` CSP block: split in two halves, chain ``n`` inner blocks on the second half, concatenate
  every intermediate, fuse with a 1x1 conv; inner blocks are :class:`Bottleneck` (e = 0.5) or :class:`C3k`.
* :class:`C3k` a C3 block (two 1x1 branches, one through ``n`` 3x3 bottlenecks) used inside C3k2.
* :class:`SPPF` three chained 5x5 max-pools, concatenated (equivalent to SPP with 5, 9, 13).
* :class:`Attention`, :class:`PSABlock`, :class:`C2PSA` position-sensitive attention on half the channels.
* :class:`Detect` decoupled head: per level a box branch (3x3, 3x3, 1x1 -> 4R) and a class branch
  ([depthwise 3x3, 1x1] x 2, 1x1 -> K); :class:`DFLIntegral` turns 4 x R logits into 4 distances.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "make_divisible",
    "Conv",
    "DWConv",
    "Bottleneck",
    "C3k",
    "C3k2",
    "SPPF",
    "Attention",
    "PSABlock",
    "C2PSA",
    "DFLIntegral",
    "Detect",
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is >= ``x`` (channel rounding of the width multiplier)."""
    return int(math.ceil(x / divisor) * divisor)


class Conv(nn.Module):
    """Conv2d(k, stride, padding k // 2, groups, no bias) -> BatchNorm2d -> SiLU (or identity). [B, C_in, H, W] -> [B, C_out, H / s, W / s]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(Conv):
    """Depth-wise :class:`Conv`: groups = gcd(C_in, C_out)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 act: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, math.gcd(in_channels, out_channels), act)


class Bottleneck(nn.Module):
    """Conv(k0) -> Conv(k1) with hidden width ``e * C_out``; adds the input when ``shortcut`` and C_in == C_out."""

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True,
                 kernels: Sequence[int] = (3, 3), e: float = 0.5) -> None:
        super().__init__()
        hidden = int(out_channels * e)
        self.cv1 = Conv(in_channels, hidden, kernels[0])
        self.cv2 = Conv(hidden, out_channels, kernels[1])
        self.add = shortcut and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3k(nn.Module):
    """CSP block with 3 convs: ``cv3(cat(m(cv1(x)), cv2(x)))``, ``m`` = n bottlenecks with k x k kernels."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 2, shortcut: bool = True,
                 e: float = 0.5, kernel_size: int = 3) -> None:
        super().__init__()
        hidden = int(out_channels * e)
        self.cv1 = Conv(in_channels, hidden, 1)
        self.cv2 = Conv(in_channels, hidden, 1)
        self.cv3 = Conv(2 * hidden, out_channels, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, (kernel_size, kernel_size), e=1.0)
                                 for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class C3k2(nn.Module):
    """Cross-stage-partial block of YOLO11.

    cv1 (1x1) makes 2 halves of width ``c = int(C_out * e)``; the second half runs through ``n`` inner
    blocks in a chain, every output is kept; cv2 (1x1) fuses the ``(2 + n) * c`` channels.
    Inner blocks: ``C3k(c, c, 2)`` when ``c3k`` else ``Bottleneck(c, c, e=0.5)``.
    """

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, c3k: bool = False,
                 e: float = 0.5, shortcut: bool = True) -> None:
        super().__init__()
        self.c = int(out_channels * e)
        self.cv1 = Conv(in_channels, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, out_channels, 1)
        self.m = nn.ModuleList(
            C3k(self.c, self.c, 2, shortcut) if c3k else Bottleneck(self.c, self.c, shortcut)
            for _ in range(n)
        )

    def forward(self, x: Tensor) -> Tensor:
        parts = list(self.cv1(x).chunk(2, dim=1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: cv1 halves channels, 3 chained max-pools, concat 4 maps, cv2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.cv1 = Conv(in_channels, hidden, 1)  # YOLO11's SPPF keeps the activation here (YOLO26 drops it)
        self.cv2 = Conv(hidden * 4, out_channels, 1)
        self.m = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        maps = [self.cv1(x)]
        for _ in range(3):
            maps.append(self.m(maps[-1]))
        return self.cv2(torch.cat(maps, dim=1))


class Attention(nn.Module):
    """Multi-head self-attention over the H * W positions, with a depth-wise 3x3 positional term on v.

    ``num_heads`` heads of width ``head_dim = C // num_heads``; queries and keys use
    ``key_dim = head_dim * attn_ratio`` channels. One 1x1 conv produces q, k, v per head
    (``2 * key_dim + head_dim`` channels each); output = proj(attn(v) + pe(v)).
    """

    def __init__(self, dim: int, num_heads: int = 8, attn_ratio: float = 0.5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, groups=dim, act=False)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(x).view(B, self.num_heads, 2 * self.key_dim + self.head_dim, H * W)
        q, k, v = qkv.split((self.key_dim, self.key_dim, self.head_dim), dim=2)  # [B, heads, d, N]
        weights = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)  # [B, heads, N, N]
        attended = (v @ weights.transpose(-2, -1)).view(B, C, H, W)
        return self.proj(attended + self.pe(v.reshape(B, C, H, W)))


class PSABlock(nn.Module):
    """x + Attention(x), then x + FFN(x) (1x1 expand x2, 1x1 back, no final activation)."""

    def __init__(self, channels: int, attn_ratio: float = 0.5, num_heads: int = 4, shortcut: bool = True) -> None:
        super().__init__()
        self.attn = Attention(channels, num_heads=num_heads, attn_ratio=attn_ratio)
        self.ffn = nn.Sequential(Conv(channels, channels * 2, 1), Conv(channels * 2, channels, 1, act=False))
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    """CSP wrapper around ``n`` :class:`PSABlock`: attention runs on one half of the channels only."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, e: float = 0.5) -> None:
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(f"C2PSA needs in_channels == out_channels, got {in_channels} and {out_channels}")
        self.c = int(in_channels * e)
        self.cv1 = Conv(in_channels, 2 * self.c, 1)
        self.cv2 = Conv(2 * self.c, in_channels, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=max(self.c // 64, 1))
                                 for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), dim=1))


class DFLIntegral(nn.Module):
    """Expected value of the R-bin distribution of each box side (GFL's integral).

    [B, 4 * R, A] logits -> [B, 4, A] distances in bins. The bin values 0..R-1 live in a frozen 1x1
    conv weight (a parameter without gradient, as in the reference, so parameter counts agree).
    """

    def __init__(self, reg_max: int = 16) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(reg_max, dtype=torch.float).view(1, reg_max, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, _, A = x.shape
        prob = x.view(B, 4, self.reg_max, A).transpose(1, 2).softmax(dim=1)  # [B, R, 4, A]
        return self.conv(prob).view(B, 4, A)


class Detect(nn.Module):
    """Anchor-free decoupled head (YOLOv8 / YOLO11; YOLO11 uses depth-wise convs in the class branch).

    ``forward(feats)`` takes the per-level neck maps [B, C_l, H_l, W_l] and returns the raw per-level
    maps [B, 4 * R + K, H_l, W_l]: channels ``[0, 4R)`` are the box-side logits (l, t, r, b, R bins
    each), ``[4R, 4R + K)`` the class logits. Decoding lives in :func:`detassign.yolo.predict.decode`.
    """

    def __init__(self, num_classes: int, channels: Sequence[int], reg_max: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.num_levels = len(channels)
        box_width = max(16, channels[0] // 4, 4 * reg_max)
        cls_width = max(channels[0], min(num_classes, 100))
        self.cv2 = nn.ModuleList(  # box branches
            nn.Sequential(Conv(c, box_width, 3), Conv(box_width, box_width, 3), nn.Conv2d(box_width, 4 * reg_max, 1))
            for c in channels
        )
        self.cv3 = nn.ModuleList(  # class branches
            nn.Sequential(
                nn.Sequential(DWConv(c, c, 3), Conv(c, cls_width, 1)),
                nn.Sequential(DWConv(cls_width, cls_width, 3), Conv(cls_width, cls_width, 1)),
                nn.Conv2d(cls_width, num_classes, 1),
            )
            for c in channels
        )
        self.dfl = DFLIntegral(reg_max)

    def forward(self, feats: List[Tensor]) -> List[Tensor]:
        return [torch.cat((box(x), cls(x)), dim=1) for x, box, cls in zip(feats, self.cv2, self.cv3)]

    @torch.no_grad()
    def init_biases(self, strides: Sequence[float], image_size: int = 640) -> None:
        """Box logits bias 2.0 (ultralytics 8.4); class bias log(5 / K / (640 / s)^2): a prior of about
        5 objects per 640 px image spread over K classes and the level's cells."""
        for box, cls, s in zip(self.cv2, self.cv3, strides):
            box[-1].bias.fill_(2.0)
            cls[-1].bias.fill_(math.log(5 / self.num_classes / (image_size / float(s)) ** 2))
