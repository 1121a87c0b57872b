"""YOLO11 detection model: backbone, PAN neck and :class:`~detassign.yolo.blocks.Detect` head.

Architecture and scales follow ultralytics' ``yolo11.yaml`` (8.3 / 8.4); the layer list is written out
instead of parsed from YAML. Scales ``[depth, width, max_channels]``:

=====  ======  ======  ============  ==================
scale  depth   width   max_channels  parameters (K=80)
=====  ======  ======  ============  ==================
n      0.50    0.25    1024           2,624,080
s      0.50    0.50    1024           9,458,752
m      0.50    1.00    512           20,114,688
l      1.00    1.00    512           25,372,160
x      1.00    1.50    512           56,966,176
p      0.50    0.125   1024             858,832  (ours: "pico", CPU demos; not an ultralytics scale)
=====  ======  ======  ============  ==================

Channels = ``make_divisible(min(c, max_channels) * width, 8)``; repeats = ``max(round(2 * depth), 1)``;
scales m / l / x use C3k inner blocks in every C3k2. ``width`` / ``depth`` / ``max_channels``
keyword overrides build custom sizes. Strides come from a forward pass of a 32 px zero image in eval
mode at construction (ultralytics probes with 256 px; 32 px is the smallest giving three levels).
Weights use PyTorch's default initialisation, BatchNorm eps 1e-3 / momentum 0.03, and the head biases
of :meth:`~detassign.yolo.blocks.Detect.init_biases`, as ultralytics.

Outputs
-------
* ``model.train()``: ``model(images)`` returns the raw per-level maps, a list of
  [B, 4 * reg_max + K, H_l, W_l] (box logits first, class logits after) — the input of
  :class:`detassign.yolo.loss.DetectionLoss`.
* ``model.eval()``: ``model(images)`` returns decoded predictions [B, 4 + K, A] (cx, cy, w, h in input
  pixels, then sigmoid class scores), ultralytics' inference layout, the input of
  :func:`detassign.yolo.predict.nms`. ``model.forward_raw(images)`` gives raw maps in either mode.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from .blocks import C2PSA, SPPF, C3k2, Conv, Detect, make_divisible
from .predict import decode

__all__ = ["YOLO11", "SCALES"]


SCALES = {
    "n": (0.50, 0.25, 1024),
    "s": (0.50, 0.50, 1024),
    "m": (0.50, 1.00, 512),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.50, 512),
    "p": (0.50, 0.125, 1024),
}
_C3K_EVERYWHERE = {"m", "l", "x"}
STRIDE_PROBE = 32  # side of the probe image whose forward pass measures the strides (3 levels)


class YOLO11(nn.Module):
    """YOLO11 detector.

    Args:
        scale: one of ``"n", "s", "m", "l", "x"`` (ultralytics sizes, exact) or ``"p"`` (pico, ours).
        num_classes: K.
        width, depth, max_channels: override the scale's multipliers (None keeps them).
        reg_max: DFL bins per box side (16).
        in_channels: image channels (3).

    Attributes: ``stride`` (buffer [3] = 8, 16, 32, measured by a forward pass), ``num_classes``,
    ``reg_max``, ``scale``, ``detect`` (the head).
    """

    def __init__(self, scale: str = "n", num_classes: int = 80, *, width: Optional[float] = None,
                 depth: Optional[float] = None, max_channels: Optional[int] = None, reg_max: int = 16,
                 in_channels: int = 3) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        d0, w0, mc0 = SCALES[scale]
        depth = d0 if depth is None else depth
        width = w0 if width is None else width
        max_channels = mc0 if max_channels is None else max_channels
        self.scale, self.num_classes, self.reg_max = scale, int(num_classes), int(reg_max)

        def ch(c: int) -> int:
            return make_divisible(min(c, max_channels) * width, 8)

        n = max(round(2 * depth), 1)
        c3k_all = scale in _C3K_EVERYWHERE

        def c3k2(c_in: int, c_out: int, c3k: bool, e: float = 0.5) -> C3k2:
            return C3k2(c_in, c_out, n, c3k or c3k_all, e)

        # Backbone (ultralytics layer indices 0-10)
        self.stem = Conv(in_channels, ch(64), 3, 2)                 # 0  P1/2
        self.down1 = Conv(ch(64), ch(128), 3, 2)                     # 1  P2/4
        self.stage2 = c3k2(ch(128), ch(256), False, 0.25)            # 2
        self.down2 = Conv(ch(256), ch(256), 3, 2)                    # 3  P3/8
        self.stage3 = c3k2(ch(256), ch(512), False, 0.25)            # 4
        self.down3 = Conv(ch(512), ch(512), 3, 2)                    # 5  P4/16
        self.stage4 = c3k2(ch(512), ch(512), True)                   # 6
        self.down4 = Conv(ch(512), ch(1024), 3, 2)                   # 7  P5/32
        self.stage5 = c3k2(ch(1024), ch(1024), True)                 # 8
        self.sppf = SPPF(ch(1024), ch(1024), 5)                      # 9
        self.c2psa = C2PSA(ch(1024), ch(1024), n)                    # 10
        # Neck, top-down (11-16) then bottom-up (17-22); Upsample / Concat have no parameters
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td_p4 = c3k2(ch(1024) + ch(512), ch(512), False)        # 13
        self.td_p3 = c3k2(ch(512) + ch(512), ch(256), False)         # 16  P3 output
        self.bu_down3 = Conv(ch(256), ch(256), 3, 2)                 # 17
        self.bu_p4 = c3k2(ch(256) + ch(512), ch(512), False)         # 19  P4 output
        self.bu_down4 = Conv(ch(512), ch(512), 3, 2)                 # 20
        self.bu_p5 = c3k2(ch(512) + ch(1024), ch(1024), True)        # 22  P5 output
        self.detect = Detect(self.num_classes, (ch(256), ch(512), ch(1024)), self.reg_max)

        self.register_buffer("stride", self._measure_strides(in_channels), persistent=False)
        self.detect.init_biases(self.stride.tolist())

    def features(self, images: Tensor) -> List[Tensor]:
        """Neck outputs [P3, P4, P5]: [B, C_l, H / s_l, W / s_l] for s_l = 8, 16, 32."""
        x = self.stage2(self.down1(self.stem(images)))
        p3 = self.stage3(self.down2(x))
        p4 = self.stage4(self.down3(p3))
        p5 = self.c2psa(self.sppf(self.stage5(self.down4(p4))))
        t4 = self.td_p4(torch.cat((self.up(p5), p4), dim=1))
        out3 = self.td_p3(torch.cat((self.up(t4), p3), dim=1))
        out4 = self.bu_p4(torch.cat((self.bu_down3(out3), t4), dim=1))
        out5 = self.bu_p5(torch.cat((self.bu_down4(out4), p5), dim=1))
        return [out3, out4, out5]

    def forward_raw(self, images: Tensor) -> List[Tensor]:
        """Raw per-level head maps [B, 4 * reg_max + K, H_l, W_l], whatever the mode."""
        return self.detect(self.features(images))

    def forward(self, images: Tensor):
        """Train mode: raw per-level maps (list). Eval mode: decoded [B, 4 + K, A] (xywh px, scores)."""
        raw = self.forward_raw(images)
        if self.training:
            return raw
        return decode(raw, self.stride, self.reg_max, self.num_classes)

    @torch.no_grad()
    def _measure_strides(self, in_channels: int) -> Tensor:
        """Strides = probe size / map size, from one forward pass of :meth:`features` in eval mode.

        The probe is the smallest image giving three levels (32 px: maps 4, 2, 1), on the parameters'
        device and dtype; eval mode leaves the BatchNorm statistics untouched.
        """
        was_training = self.training
        self.eval()
        weight = self.stem.conv.weight
        images = torch.zeros(1, in_channels, STRIDE_PROBE, STRIDE_PROBE, device=weight.device, dtype=weight.dtype)
        feats = self.features(images)
        self.train(was_training)
        return torch.tensor([STRIDE_PROBE / f.shape[-2] for f in feats], dtype=torch.float32, device=weight.device)

    def extra_repr(self) -> str:
        return f"scale={self.scale!r}, num_classes={self.num_classes}, reg_max={self.reg_max}"
