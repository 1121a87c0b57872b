"""YOLO11 model: exact parameter counts, strides, bias init, and equality with ultralytics' DetectionModel.

The architecture check is constructive: ultralytics' yolo11n state_dict is copied into ours position by
position (same parameter / buffer order and shapes), then every layer's output and the head's outputs
must be identical.
"""
import math

import pytest
import torch

from detassign.yolo import SCALES, YOLO11
from detassign.yolo.blocks import C2PSA, Attention, make_divisible
from tests.oracles import ultralytics

# ultralytics' yolo11.yaml summary lines (8.4.190), 80 classes
PARAMS = {"n": 2_624_080, "s": 9_458_752, "m": 20_114_688, "l": 25_372_160, "x": 56_966_176}

# ultralytics layer index -> our attribute (Upsample / Concat layers have no counterpart module)
LAYER_MAP = {0: "stem", 1: "down1", 2: "stage2", 3: "down2", 4: "stage3", 5: "down3", 6: "stage4", 7: "down4",
             8: "stage5", 9: "sppf", 10: "c2psa", 13: "td_p4", 16: "td_p3", 17: "bu_down3", 19: "bu_p4",
             20: "bu_down4", 22: "bu_p5"}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("scale", ["n", "s", "m", "l", "x"])
def test_parameter_counts_match_ultralytics_summary(scale):
    model = YOLO11(scale, num_classes=80)
    assert count(model) == PARAMS[scale]
    # every parameter but the frozen DFL bins is trainable, as ultralytics' "gradients" column says
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == PARAMS[scale] - 16


def test_make_divisible_and_scale_table():
    # n: 1024 * 0.25 = 256; m caps at 512 before the width: min(1024, 512) * 1.0 = 512; x: 512 * 1.5 = 768
    assert make_divisible(1024 * 0.25) == 256
    assert make_divisible(min(1024, 512) * 1.5) == 768
    assert make_divisible(12.1) == 16
    assert set("nsmlx") <= set(SCALES)


def test_strides_bias_init_and_attributes():
    model = YOLO11("n", num_classes=3)
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert model.num_classes == 3 and model.reg_max == 16
    for level, s in enumerate((8, 16, 32)):
        box_bias = model.detect.cv2[level][-1].bias
        cls_bias = model.detect.cv3[level][-1].bias
        assert torch.all(box_bias == 2.0)
        # log(5 / K / (640 / s)^2): P3 with K=3 -> log(5 / 3 / 6400) = -8.253...
        assert torch.allclose(cls_bias, torch.full_like(cls_bias, math.log(5 / 3 / (640 / s) ** 2)))
    assert "stride" not in model.state_dict()  # non-persistent: state_dicts stay ultralytics-shaped


def test_train_and_eval_outputs_shapes():
    model = YOLO11("p", num_classes=2)
    x = torch.randn(2, 3, 64, 96)
    raw = model(x)
    assert [tuple(r.shape) for r in raw] == [(2, 66, 8, 12), (2, 66, 4, 6), (2, 66, 2, 3)]
    model.eval()
    with torch.no_grad():
        out = model(x)
        raw_eval = model.forward_raw(x)
    assert out.shape == (2, 6, 8 * 12 + 4 * 6 + 2 * 3)
    assert [r.shape for r in raw_eval] == [r.shape for r in raw]
    assert torch.all((out[:, 4:] >= 0) & (out[:, 4:] <= 1))
    assert torch.all(out[:, 2:4] >= 0)  # widths / heights are sums of non-negative distances


def test_pico_is_smaller_and_overrides_work():
    assert count(YOLO11("p", num_classes=80)) < PARAMS["n"] / 2
    custom = YOLO11("n", num_classes=1, width=0.125, depth=0.33)
    assert custom.stem.conv.out_channels == 8


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        YOLO11("q")
    with pytest.raises(ValueError, match="num_classes"):
        YOLO11("p", num_classes=0)
    with pytest.raises(ValueError, match="C2PSA"):
        C2PSA(64, 32)


def test_attention_head_layout():
    # n's C2PSA: 256 channels -> c = 128, heads = 128 // 64 = 2, head_dim 64, key_dim 32 -> qkv 128 + 2*2*32 = 256
    attn = YOLO11("n").c2psa.m[0].attn
    assert isinstance(attn, Attention)
    assert (attn.num_heads, attn.head_dim, attn.key_dim) == (2, 64, 32)
    assert attn.qkv.conv.out_channels == 256


@pytest.fixture(scope="module")
def transferred():
    """(ultralytics yolo11n, ours) with identical weights and randomised BN statistics."""
    ultra = ultralytics()
    torch.manual_seed(0)
    ref = ultra.tasks.DetectionModel("yolo11n.yaml", nc=80, verbose=False)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    ours = YOLO11("n", num_classes=80)
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert [tuple(v.shape) for v in ref_state.values()] == [tuple(v.shape) for v in our_state.values()]
    ours.load_state_dict(dict(zip(our_state.keys(), ref_state.values())))
    return ref, ours


@pytest.mark.oracle
def test_fresh_model_matches_ultralytics_layout_and_init():
    ultra = ultralytics()
    ref = ultra.tasks.DetectionModel("yolo11n.yaml", nc=80, verbose=False)
    ours = YOLO11("n", num_classes=80)
    assert count(ref) == count(ours)
    assert torch.equal(ref.model[-1].stride, ours.stride)
    for level in range(3):
        assert torch.equal(ref.model[-1].cv2[level][-1].bias, ours.detect.cv2[level][-1].bias)
        assert torch.equal(ref.model[-1].cv3[level][-1].bias, ours.detect.cv3[level][-1].bias)
    ref_bn = [m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    our_bn = [m for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(ref_bn) == len(our_bn)
    for a, b in zip(ref_bn, our_bn):
        assert (a.eps, a.momentum) == (b.eps, b.momentum) == (1e-3, 0.03)


@pytest.mark.oracle
def test_every_layer_output_equals_ultralytics_after_state_dict_transfer(transferred):
    ref, ours = transferred
    ref.eval()
    ours.eval()
    captured_ref, captured_ours = {}, {}
    hooks = []
    for idx, name in LAYER_MAP.items():
        hooks.append(ref.model[idx].register_forward_hook(lambda m, i, o, k=idx: captured_ref.__setitem__(k, o)))
        hooks.append(getattr(ours, name).register_forward_hook(lambda m, i, o, k=idx: captured_ours.__setitem__(k, o)))
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            ref_out, ref_raw = ref(x)
            our_out = ours(x)
            our_raw = ours.forward_raw(x)
    finally:
        for h in hooks:
            h.remove()
    for idx in LAYER_MAP:
        assert captured_ref[idx].shape == captured_ours[idx].shape, idx
        assert torch.equal(captured_ref[idx], captured_ours[idx]), idx
    B = x.shape[0]
    assert torch.equal(torch.cat([r[:, :64].reshape(B, 64, -1) for r in our_raw], 2), ref_raw["boxes"])
    assert torch.equal(torch.cat([r[:, 64:].reshape(B, 80, -1) for r in our_raw], 2), ref_raw["scores"])
    # decoded: DFL expectation by matmul here, by a 1x1 conv there -> float rounding only (pixels up to 128)
    assert our_out.shape == ref_out.shape == (2, 84, 12 * 16 + 6 * 8 + 3 * 4)
    torch.testing.assert_close(our_out, ref_out, rtol=1e-6, atol=2e-4)


@pytest.mark.oracle
def test_train_mode_outputs_and_gradients_equal_ultralytics(transferred):
    ref, ours = transferred
    ref.train()
    ours.train()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ref_raw = ref(x)
    our_raw = ours(x)
    torch.testing.assert_close(torch.cat([r[:, :64].flatten(2) for r in our_raw], 2), ref_raw["boxes"],
                               rtol=0, atol=0)
    (ref_raw["scores"].sum() + ref_raw["boxes"].square().mean()).backward()
    loss = torch.cat([r[:, 64:].flatten(2) for r in our_raw], 2).sum() + \
        torch.cat([r[:, :64].flatten(2) for r in our_raw], 2).square().mean()
    loss.backward()
    for (_, a), (_, b) in zip(ref.named_parameters(), ours.named_parameters()):
        if a.grad is None:
            assert b.grad is None
            continue
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)
    ref.zero_grad()
    ours.zero_grad()
