#!/usr/bin/python3
"""Test oracle: reference outputs and .pth files made by PyTorch and torchvision (Debian's python3-torch 1.13).

The C++ tests compare adafocus against what this script writes. Run with /usr/bin/python3 (the Debian interpreter
that sees python3-torch), never at run time of adafocus itself.

  reference.py backbones DIR              torchvision backbones, TSM variants, the official MobileNetV2 layout
  reference.py check-load PTH ARCH IN OUT  load a state dict written by C++ strictly into torchvision, run it on IN
"""
import os
import sys

import torch
import torch.nn as nn
import torchvision

ARCHS = ["mobilenet_v2", "resnet18", "resnet34", "resnet50"]
SIZES = {"224": (224, 224), "128": (128, 128), "160x112": (160, 112)}
NUM_CLASSES = 10
TSM_SEGMENTS = 4
SHIFT_DIV = 8


def randomize_batchnorm(model, generator):
    """Random affine parameters and running statistics, so that parity covers eval-mode BN exactly."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=generator)
            m.bias.data = 0.1 * torch.randn(c, generator=generator)
            m.running_mean.data = 0.1 * torch.randn(c, generator=generator)
            m.running_var.data = 0.5 + torch.rand(c, generator=generator)
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=generator)))


def official_shift(x, n_segment, fold_div):
    """The shift of the official TSM code (temporal_shift.py), with its in-place slice assignments."""
    nt, c, h, w = x.size()
    x = x.view(nt // n_segment, n_segment, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
    return out.view(nt, c, h, w)


class TemporalShift(nn.Module):
    """Official TSM wrapper: shifts the input of the wrapped layer, which it stores as `net`."""

    def __init__(self, net, n_segment, n_div):
        super().__init__()
        self.net, self.n_segment, self.fold_div = net, n_segment, n_div

    def forward(self, x):
        return self.net(official_shift(x, self.n_segment, self.fold_div))


def make_tsm(model, arch):
    """Inserts the shift as official TSM does: conv1 of every ResNet block, conv[0] of residual MobileNetV2 blocks."""
    if arch == "mobilenet_v2":
        for m in model.modules():
            if isinstance(m, torchvision.models.mobilenetv2.InvertedResidual) and m.use_res_connect \
                    and len(m.conv) == 4:  # torchvision layout: expand, depthwise, project, bn
                m.conv[0] = TemporalShift(m.conv[0], TSM_SEGMENTS, SHIFT_DIV)
    else:
        for layer in [model.layer1, model.layer2, model.layer3, model.layer4]:
            for block in layer:
                block.conv1 = TemporalShift(block.conv1, TSM_SEGMENTS, SHIFT_DIV)
    return model


class TonylinsMobileNetV2(nn.Module):
    """MobileNetV2 in the layout of the official AdaFocus weights (tonylins/pytorch-mobilenet-v2): flat Sequentials,
    ReLU6 at their own indices, a bare Linear classifier. Width 1.0."""

    def __init__(self, n_class):
        super().__init__()

        def conv_bn(inp, oup, k, stride):
            return nn.Sequential(nn.Conv2d(inp, oup, k, stride, (k - 1) // 2, bias=False), nn.BatchNorm2d(oup),
                                 nn.ReLU6(inplace=True))

        class Block(nn.Module):
            def __init__(self, inp, oup, stride, t):
                super().__init__()
                hidden = inp * t
                self.use_res_connect = stride == 1 and inp == oup
                dw = [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                      nn.ReLU6(inplace=True)]
                pw_linear = [nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
                expand = [] if t == 1 else [nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden),
                                            nn.ReLU6(inplace=True)]
                self.conv = nn.Sequential(*(expand + dw + pw_linear))

            def forward(self, x):
                return x + self.conv(x) if self.use_res_connect else self.conv(x)

        settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                    [6, 320, 1, 1]]
        layers, inp = [conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in settings:
            for i in range(n):
                layers.append(Block(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(conv_bn(inp, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, n_class)

    def forward(self, x):
        return self.classifier(self.features(x).mean(3).mean(2))


def save_outputs(model, x, prefix):
    """Saves the feature map, the pooled vector and the logits of `model` on `x` (eval mode, no grad)."""
    with torch.no_grad():
        if isinstance(model, TonylinsMobileNetV2):
            fmap = model.features(x)
            pooled = fmap.mean(3).mean(2)
            logits = model.classifier(pooled)
        else:
            logits = model(x)
            body = model.features if hasattr(model, "features") else nn.Sequential(
                *[getattr(model, n) for n in ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                                              "layer4"]])
            fmap = body(x)
            pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(fmap, 1), 1)
    torch.save(fmap, prefix + "_map.pt")
    torch.save(pooled, prefix + "_pool.pt")
    torch.save(logits, prefix + "_logits.pt")


def official_val_indices(num_frames, num_segments, new_length=1):
    """TSN/TSM TSNDataSet._get_val_indices (0-based: without the official +1 for 1-based file names)."""
    if num_frames > num_segments + new_length - 1:
        tick = (num_frames - new_length + 1) / float(num_segments)
        return [int(tick / 2.0 + tick * x) for x in range(num_segments)]
    return [0] * num_segments


def official_dense_val_indices(num_frames, num_segments, rate):
    """TSM-style dense sampling at test time (start at sample_pos // 2), 0-based."""
    sample_pos = max(1, 1 + num_frames - num_segments * rate)
    start_idx = 0 if sample_pos == 1 else sample_pos // 2
    return [(idx * rate + start_idx) % num_frames for idx in range(num_segments)]


def official_input_order(num_segments):
    """main_v2.py input_order (AdaFocusV2, ActivityNet code), with numpy as there."""
    import numpy as np
    S = [np.floor((num_segments - 1) / 2), 0, num_segments - 1]
    q = 2
    while len(S) < num_segments:
        interval = np.floor(np.linspace(0, num_segments - 1, q + 1))
        for i in range(0, len(interval) - 1):
            ind = np.floor((interval[i] + interval[i + 1]) / 2)
            if ind not in S:
                S.append(ind)
        q *= 2
    return [int(s) for s in S]


def official_crop_candidates(image_w, image_h, input_size, scales, max_distort=1):
    """Every (w, h, x, y) GroupMultiScaleCrop can return with fix_crop=True, more_fix_crop=True: its crop pairs from
    _sample_crop_size and the offsets of fill_fix_offset."""
    base_size = min(image_w, image_h)
    crop_sizes = [int(base_size * x) for x in scales]
    crop_h = [input_size if abs(x - input_size) < 3 else x for x in crop_sizes]
    crop_w = [input_size if abs(x - input_size) < 3 else x for x in crop_sizes]
    pairs = []
    for i, h in enumerate(crop_h):
        for j, w in enumerate(crop_w):
            if abs(i - j) <= max_distort:
                pairs.append((w, h))
    out = []
    for w, h in pairs:
        w_step, h_step = (image_w - w) // 4, (image_h - h) // 4
        offsets = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step),
                   (0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 4 * h_step), (2 * w_step, 0 * h_step),
                   (1 * w_step, 1 * h_step), (3 * w_step, 1 * h_step), (1 * w_step, 3 * h_step),
                   (3 * w_step, 3 * h_step)]
        out += [[w, h, x, y] for x, y in offsets]
    return out


def data_reference(out):
    """Official sampling and cropping arithmetic, for the data pipeline tests (JSON)."""
    import json
    val = [{"frames": n, "segments": t, "indices": official_val_indices(n, t)}
           for n in [9, 16, 17, 31, 50, 100, 333, 1000] for t in [8, 12, 16] if n > t]  # official zeros for n <= T
    dense = [{"frames": n, "segments": t, "stride": r, "indices": official_dense_val_indices(n, t, r)}
             for n in [5, 40, 64, 65, 100, 301] for t, r in [(8, 8), (16, 4), (8, 2)]]
    crops = [{"width": w, "height": h, "input_size": s, "boxes": official_crop_candidates(w, h, s, [1, .875, .75, .66])}
             for w, h, s in [(340, 256, 224), (455, 256, 224), (128, 128, 112), (256, 340, 224), (480, 360, 224)]]
    orders = [{"segments": t, "order": official_input_order(t)} for t in [3, 5, 6, 8, 12, 16, 24, 32, 48]]
    with open(os.path.join(out, "data_reference.json"), "w") as f:
        json.dump({"tsn_val": val, "dense_val": dense, "multiscale_crop": crops, "input_order": orders}, f)


def backbones(out):
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    inputs = {}
    for tag, (h, w) in SIZES.items():
        inputs[tag] = torch.randn(2, 3, h, w, generator=g)
        torch.save(inputs[tag], os.path.join(out, f"input_{tag}.pt"))

    for arch in ARCHS:
        torch.manual_seed(1)
        model = getattr(torchvision.models, arch)(num_classes=NUM_CLASSES).eval()
        randomize_batchnorm(model, g)
        torch.save(model.state_dict(), os.path.join(out, f"{arch}.pth"))
        for tag, x in inputs.items():
            save_outputs(model, x, os.path.join(out, f"{arch}_{tag}"))

    # A narrower MobileNetV2 (channel rounding of the width multiplier).
    torch.manual_seed(1)
    model = torchvision.models.mobilenet_v2(num_classes=NUM_CLASSES, width_mult=0.5).eval()
    randomize_batchnorm(model, g)
    torch.save(model.state_dict(), os.path.join(out, "mobilenet_v2_w0.5.pth"))
    save_outputs(model, inputs["128"], os.path.join(out, "mobilenet_v2_w0.5_128"))

    # TSM backbones in the official layout (".net." inside the shifted layers), 2 clips of TSM_SEGMENTS frames.
    clip = torch.randn(2 * TSM_SEGMENTS, 3, 96, 96, generator=g)
    torch.save(clip, os.path.join(out, "input_tsm.pt"))
    for arch in ["mobilenet_v2", "resnet50"]:
        torch.manual_seed(2)
        model = make_tsm(getattr(torchvision.models, arch)(num_classes=NUM_CLASSES), arch).eval()
        randomize_batchnorm(model, g)
        torch.save(model.state_dict(), os.path.join(out, f"tsm_{arch}.pth"))
        save_outputs(model, clip, os.path.join(out, f"tsm_{arch}"))

    # The shift alone.
    x = torch.randn(2 * TSM_SEGMENTS, 16, 3, 3, generator=g)
    torch.save(x, os.path.join(out, "shift_in.pt"))
    torch.save(official_shift(x, TSM_SEGMENTS, SHIFT_DIV), os.path.join(out, "shift_out.pt"))

    # Official MobileNetV2 layout, saved as the official training scripts do: {'state_dict': {'module.' + key}},
    # in the legacy (pre-1.6) format of the 2018 weights file, with extra entries of other types.
    torch.manual_seed(3)
    official = TonylinsMobileNetV2(NUM_CLASSES).eval()
    randomize_batchnorm(official, g)
    checkpoint = {"epoch": 7, "best_prec1": 71.5, "arch": "mobilenet_v2",
                  "state_dict": {"module." + k: v for k, v in official.state_dict().items()}}
    torch.save(checkpoint, os.path.join(out, "official_mobilenet_v2.pth.tar"), _use_new_zipfile_serialization=False)
    torch.save(checkpoint, os.path.join(out, "official_mobilenet_v2_zip.pth.tar"))
    save_outputs(official, inputs["224"], os.path.join(out, "official_mobilenet_v2_224"))

    # Files that are not state dicts.
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), os.path.join(out, "torchscript.pt"))
    torch.save(torch.arange(12, dtype=torch.float64).view(3, 4)[:, 1:3], os.path.join(out, "tensor_view.pt"))
    torch.save(torch.arange(6, dtype=torch.int64), os.path.join(out, "tensor_legacy.pt"),
               _use_new_zipfile_serialization=False)
    data_reference(out)
    open(os.path.join(out, ".done"), "w").close()


def check_load(pth, arch, input_path, output_path):
    """Loads a C++-written state dict strictly into torchvision and saves the logits on the given input."""
    state = torch.load(pth)
    model = getattr(torchvision.models, arch)(num_classes=state["fc.weight" if arch != "mobilenet_v2"
                                                                else "classifier.1.weight"].shape[0])
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.save(model.eval()(torch.load(input_path)), output_path)


if __name__ == "__main__":
    torch.set_num_threads(2)
    if len(sys.argv) == 3 and sys.argv[1] == "backbones":
        backbones(sys.argv[2])
    elif len(sys.argv) == 6 and sys.argv[1] == "check-load":
        check_load(*sys.argv[2:])
    else:
        sys.exit(__doc__)
