#!/usr/bin/python3
"""Test oracle: reference outputs and .pth files made by PyTorch and torchvision (Debian's python3-torch 1.13).

The C++ tests compare adafocus against what this script writes. Run with /usr/bin/python3 (the Debian interpreter
that sees python3-torch), never at run time of adafocus itself.

  reference.py backbones DIR              torchvision backbones, TSM variants, the official MobileNetV2 layout,
                                          official AdaFocus checkpoints (V2, V2-TSM, V1, V1-TSM)
  reference.py check-load PTH ARCH IN OUT  load a state dict written by C++ strictly into torchvision, run it on IN
  reference.py pil-resize DIR             Pillow's bilinear resize of random images (raw RGB bytes)
"""
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
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


def make_tsm(model, arch, segments=TSM_SEGMENTS):
    """Inserts the shift as official TSM does: conv1 of every ResNet block, conv[0] of residual MobileNetV2 blocks."""
    if arch == "mobilenet_v2":
        for m in model.modules():
            if isinstance(m, torchvision.models.mobilenetv2.InvertedResidual) and m.use_res_connect \
                    and len(m.conv) == 4:  # torchvision layout: expand, depthwise, project, bn
                m.conv[0] = TemporalShift(m.conv[0], segments, SHIFT_DIV)
    else:
        for layer in [model.layer1, model.layer2, model.layer3, model.layer4]:
            for block in layer:
                block.conv1 = TemporalShift(block.conv1, segments, SHIFT_DIV)
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


def tonylins_tsm(model, segments):
    """The shift in tonylins' MobileNetV2 as the official TSN (AdaFocusV2 ops/models.py) and V1's Glancer
    (AdaFocus gfv_net.py) put it: conv[0], the expanding conv alone, of the residual blocks with an expansion
    (len(conv) == 8)."""
    for m in model.modules():
        if hasattr(m, "use_res_connect") and len(m.conv) == 8 and m.use_res_connect:
            m.conv[0] = TemporalShift(m.conv[0], segments, SHIFT_DIV)
    return model


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


class OfficialPolicySTN(nn.Module):
    """AdaFocusV2's PolicySTN (ActivityNet code), layer for layer."""

    def __init__(self, stn_feature_dim, stn_state_dim, hidden_dim, num_segments):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(stn_feature_dim, 64, kernel_size=1, stride=1, padding=0, bias=False), nn.BatchNorm2d(64),
            nn.Tanh(), nn.Flatten(), nn.Linear(int(stn_state_dim * 64 / stn_feature_dim), hidden_dim),
            nn.BatchNorm1d(hidden_dim), nn.Tanh())
        self.num_segments, self.hidden_dim = num_segments, hidden_dim
        self.gru = nn.GRU(hidden_dim, hidden_dim, batch_first=True)
        self.fc = nn.Sequential(nn.Linear(hidden_dim, 2), nn.Sigmoid())

    def forward(self, features):
        feature = self.encoder(features).view(-1, self.num_segments, self.hidden_dim)
        hx = torch.zeros(1, feature.size(0), self.hidden_dim)
        out, _ = self.gru(feature, hx)
        return self.fc(out.reshape(-1, self.hidden_dim))


class OfficialPoolingClassifier(nn.Module):
    """FrameExit-style classifier of the official code: MLP 4096 (linear, BN, ReLU), cumulative max, a head per step."""

    def __init__(self, input_dim, num_segments, num_classes, dropout):
        super().__init__()
        self.input_dim, self.num_segments, self.num_classes = input_dim, num_segments, num_classes
        self.mlp = nn.Module()
        self.mlp.layers = nn.Sequential(nn.Linear(input_dim, 4096), nn.BatchNorm1d(4096), nn.ReLU())
        self.classifiers = nn.ModuleList(
            [nn.Sequential(nn.Dropout(dropout), nn.Linear(4096, num_classes)) for _ in range(num_segments)])

    def forward(self, x):
        b = x.size(0)
        z = self.mlp.layers(x.view(-1, self.input_dim)).view(b, self.num_segments, -1)
        logits = torch.zeros(b, self.num_segments, self.num_classes)
        cur = z[:, 0]
        for t in range(self.num_segments):
            if t > 0:
                cur = torch.cat((z[:, t].unsqueeze(1), cur.unsqueeze(1)), 1).max(1)[0]
            logits[:, t] = self.classifiers[t](cur)
        return logits


def official_patches(frames, actions, patch_size, image_size):
    """get_patches_frame of the official code."""
    theta = torch.zeros(frames.size(0), 2, 3)
    coordinate = actions * (image_size - patch_size)
    x1, x2 = coordinate[:, 1], coordinate[:, 1] + patch_size
    y1, y2 = coordinate[:, 0], coordinate[:, 0] + patch_size
    theta[:, 0, 0], theta[:, 1, 1] = patch_size / image_size, patch_size / image_size
    theta[:, 0, 2], theta[:, 1, 2] = -1 + (x1 + x2) / image_size, -1 + (y1 + y2) / image_size
    grid = F.affine_grid(theta.float(), torch.Size((frames.size(0), 3, patch_size, patch_size)))
    return F.grid_sample(frames, grid)


class OfficialAdaFocusV2(nn.Module):
    """The official AdaFocusV2 model (ActivityNet code) with its module names, small: MobileNetV2 glance in the
    official layout, ResNet-18 local network."""

    def __init__(self, frames, classes, size, patch, hidden):
        super().__init__()
        self.frames, self.size, self.patch = frames, size, patch
        self.global_CNN = TonylinsMobileNetV2(1000)
        self.global_CNN_fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))
        self.local_CNN = torchvision.models.resnet18()
        self.local_CNN_fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, classes))
        cells = (size // 32) ** 2
        self.policy_stn = OfficialPolicySTN(1280, 1280 * cells, hidden, frames)
        self.classifier = OfficialPoolingClassifier(1280 + 512, frames, classes, 0.2)

    def forward(self, images):  # (B, T, 3, S, S), eval
        x = images.view(-1, 3, self.size, self.size)
        fmap = self.global_CNN.features(x)
        feat = fmap.mean(3).mean(2)
        actions = self.policy_stn(fmap)
        patches = official_patches(x, actions, self.patch, self.size)
        l = self.local_CNN
        y = l.maxpool(l.relu(l.bn1(l.conv1(patches))))
        local = torch.flatten(l.avgpool(l.layer4(l.layer3(l.layer2(l.layer1(y))))), 1)
        logits = self.classifier(torch.cat([feat, local], -1).view(-1, self.frames, 1280 + 512))
        return logits, actions


def adafocus_v2_reference(out):
    """An official-layout AdaFocusV2 checkpoint ({'state_dict': {'module.' + key}}) and its outputs."""
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = OfficialAdaFocusV2(frames=4, classes=5, size=64, patch=32, hidden=64).eval()
    randomize_batchnorm(model, g)
    clips = torch.randn(2, 4, 3, 64, 64, generator=g)
    with torch.no_grad():
        logits, actions = model(clips)
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
               os.path.join(out, "official_v2.pth.tar"))
    torch.save(clips, os.path.join(out, "official_v2_clips.pt"))
    torch.save(logits, os.path.join(out, "official_v2_logits.pt"))
    torch.save(actions, os.path.join(out, "official_v2_actions.pt"))


def adafuse_block_reference(out):
    """AdaFuse's gated TSM blocks with a downsampling shortcut, as the official BateNet computes them
    (mengyuest/AdaFuse ops/batenet.py, Bottleneck/BasicBlock.forward): the block input is shifted once; conv1 + BN +
    ReLU; each channel kept, replaced by the previous frame's conv1 output of that channel (zeros at the first frame)
    or zeroed, as the mask [skip, reuse, keep] says; the rest of the block; the shortcut's downsample applied to the
    shifted input. Weights under torchvision's names, the input, the mask and the output, for both block kinds."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    g = torch.Generator().manual_seed(11)
    segments, fold_div = 3, 4
    for kind, block, cin in [("bottleneck", Bottleneck, 16), ("basic", BasicBlock, 8)]:
        torch.manual_seed(11)
        planes = 8
        cout = planes * block.expansion
        b = block(cin, planes, stride=2, downsample=nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False),
                                                                  nn.BatchNorm2d(cout))).eval()
        randomize_batchnorm(b, g)
        x = torch.randn(2 * segments, cin, 12, 12, generator=g)
        width = b.conv1.out_channels
        mask = F.one_hot(torch.randint(0, 3, (2 * segments, width), generator=g), 3).float()  # (N, G, 3)
        with torch.no_grad():
            xs = official_shift(x, segments, fold_div)
            y = b.relu(b.bn1(b.conv1(xs)))
            before = torch.zeros_like(y.view(2, segments, *y.shape[1:]))
            before[:, 1:] = y.view(2, segments, *y.shape[1:])[:, :-1]
            y = y * mask[:, :, 2, None, None] + before.view_as(y) * mask[:, :, 1, None, None]
            if block is Bottleneck:
                y = b.bn3(b.conv3(b.relu(b.bn2(b.conv2(y)))))
            else:
                y = b.bn2(b.conv2(y))
            y = b.relu(y + b.downsample(xs))
        torch.save(dict(b.state_dict()), os.path.join(out, f"adafuse_{kind}_block.pth"))
        for name, t in [("x", x), ("mask", mask), ("out", y)]:
            torch.save(t, os.path.join(out, f"adafuse_{kind}_{name}.pt"))


class OfficialTSN(nn.Module):
    """The TSN of the official TSM code as AdaFocusV2-TSM builds it (ops/models.py, dropout > 0): `base_model` with its
    classifier (`last_layer_name`) replaced by dropout and its pooling by adaptive pooling, and two heads: new_fc (on
    detached features) and new_new_fc."""

    def __init__(self, base_model, last_layer_name, feature_dim, classes, dropout=0.5):
        super().__init__()
        self.base_model = base_model
        setattr(self.base_model, last_layer_name, nn.Dropout(dropout))
        self.base_model.avgpool = nn.AdaptiveAvgPool2d(1)
        self.new_fc = nn.Linear(feature_dim, classes)
        self.new_new_fc = nn.Linear(feature_dim, classes)


class OfficialAdaFocusV2TSM(nn.Module):
    """The official AdaFocusV2-TSM model (Sth-Sth code, main.py AdaFocus) with its module names, small: TSN over TSM
    MobileNetV2 (tonylins' layout) on `frames` glance frames, TSN over TSM ResNet-18 on `focus_frames` focus frames,
    policy_stn with the widths `widths` (official: 64, 1024, 512)."""

    def __init__(self, frames, focus_frames, classes, size, patch, widths):
        super().__init__()
        self.frames, self.focus_frames, self.size, self.patch = frames, focus_frames, size, patch
        self.global_CNN = OfficialTSN(tonylins_tsm(TonylinsMobileNetV2(1000), frames), "classifier", 1280, classes)
        self.local_CNN = OfficialTSN(make_tsm(torchvision.models.resnet18(), "resnet18", focus_frames), "fc", 512,
                                     classes)
        c, h1, h2 = widths
        self.policy_stn = nn.Sequential(
            nn.Conv2d(1280 * frames, c, kernel_size=1, stride=1, padding=0, bias=False), nn.BatchNorm2d(c), nn.Tanh(),
            nn.Flatten(), nn.Linear(c * (size // 32) ** 2, h1), nn.BatchNorm1d(h1), nn.Tanh(), nn.Linear(h1, h2),
            nn.BatchNorm1d(h2), nn.Tanh(), nn.Linear(h2, 2), nn.Sigmoid())

    def forward(self, glance, focus):  # (B, T, 3, S, S), (B, Tf, 3, S, S), eval: the official eval branch
        b = glance.size(0)
        fmap = self.global_CNN.base_model.features(glance.reshape(-1, 3, self.size, self.size))
        glance_logits = self.global_CNN.new_fc(fmap.mean(3).mean(2)).view(b, self.frames, -1).mean(1)
        action = self.policy_stn(fmap.reshape(b, -1, fmap.size(2), fmap.size(3)))
        patches = official_patches(focus.reshape(b, -1, self.size, self.size), action, self.patch, self.size)
        local = self.local_CNN.base_model(patches.reshape(-1, 3, self.patch, self.patch))  # fc is dropout: features
        return glance_logits + self.local_CNN.new_fc(local).view(b, self.focus_frames, -1).mean(1), action


class OfficialActorCritic(nn.Module):
    """AdaFocus V1's discrete PPO actor-critic (ActivityNet code, models/ppo.py, policy_conv) with the 1x1 conv's
    `channels` (official 32)."""

    def __init__(self, feature_dim, cells, channels, hidden, actions):
        super().__init__()
        self.state_encoder = nn.Sequential(nn.Conv2d(feature_dim, channels, kernel_size=1, stride=1, padding=0,
                                                     bias=False), nn.ReLU(), nn.Flatten(),
                                           nn.Linear(channels * cells, hidden), nn.ReLU())
        self.gru = nn.GRU(hidden, hidden, batch_first=False)
        self.actor = nn.Sequential(nn.Linear(hidden, actions), nn.Softmax(dim=-1))
        self.critic = nn.Sequential(nn.Linear(hidden, 1))


class OfficialPPO(nn.Module):
    """V1's PPO (ActivityNet code): a module holding the policy and policy_old, its copy for acting."""

    def __init__(self, *args):
        super().__init__()
        self.policy = OfficialActorCritic(*args)
        self.policy_old = OfficialActorCritic(*args)
        self.policy_old.load_state_dict(self.policy.state_dict())
        self.MseLoss = nn.MSELoss()


class OfficialAdaFocusV1(nn.Module):
    """The official AdaFocus V1 model (ActivityNet code, models/gfv_net.py GFV, stages 2-3) with its module names,
    small: torchvision's MobileNetV2 glancer (models/mobilenet.py) with a Dropout + Linear head, a ResNet-18 focuser
    (official: ResNet-50, models/resnet.py, torchvision's) with its fc, the PPO over grid x grid corners, the GRU
    classifier."""

    def __init__(self, classes, glance_size, channels, hidden, grid, classifier_hidden):
        super().__init__()
        self.glancer = nn.Module()
        self.glancer.net = torchvision.models.mobilenet_v2()
        self.glancer.net.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))
        self.focuser = nn.Module()
        self.focuser.net = torchvision.models.resnet18()
        self.focuser.net.fc = nn.Linear(512, classes)
        cells = math.ceil(glance_size / 32) ** 2
        self.focuser.policy = OfficialPPO(1280, cells, channels, hidden, grid * grid)
        self.dropout = nn.Dropout(0.8)
        self.classifier = nn.Module()
        self.classifier.gru = nn.GRU(1280 + 512, classifier_hidden, batch_first=True)
        self.classifier.fc = nn.Linear(classifier_hidden, classes)
        self.classifier.dropout = nn.Dropout(0.8)


class OfficialGaussianActorCritic(nn.Module):
    """AdaFocus V1-TSM's continuous actor-critic (Sth-Sth code, models/ppo_continuous.py, with_bn) with the 1x1 conv's
    `channels` (official 64). Its action_var is a plain tensor, not a buffer."""

    def __init__(self, feature_dim, cells, channels, hidden, action_std=0.25):
        super().__init__()
        self.state_encoder = nn.Sequential(
            nn.Conv2d(feature_dim, channels, kernel_size=1, stride=1, padding=0, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(), nn.Flatten(), nn.Linear(channels * cells, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.gru = nn.GRU(hidden, hidden, batch_first=False)
        self.actor = nn.Sequential(nn.Linear(hidden, 2), nn.Sigmoid())
        self.critic = nn.Sequential(nn.Linear(hidden, 1))
        self.action_var = torch.full((2,), action_std)


class OfficialPPOContinuous:
    """V1-TSM's PPO_Continuous: a plain object, not a module, so the model's state dict holds neither policy."""

    def __init__(self, *args):
        self.policy = OfficialGaussianActorCritic(*args)
        self.policy_old = OfficialGaussianActorCritic(*args)
        self.policy_old.load_state_dict(self.policy.state_dict())


class OfficialAdaFocusV1TSM(nn.Module):
    """The official AdaFocus V1-TSM model (Sth-Sth code, models/gfv_net.py GFV) as the stage scripts leave it, small:
    tonylins' MobileNetV2 glancer with its Linear head and the shift on `frames`; a focuser TSN (models/tsn.py: only
    base_model) over TSM ResNet-18 (official 50) on `focus_frames`, whose base model stage1/2/3.py replace by a
    Sequential of its children without fc; the continuous PPO; the top-level classifier."""

    def __init__(self, frames, focus_frames, classes, glance_size, channels, hidden):
        super().__init__()
        self.glancer = nn.Module()
        self.glancer.net = tonylins_tsm(TonylinsMobileNetV2(classes), frames)
        self.focuser = nn.Module()
        self.focuser.net = nn.Module()
        resnet = make_tsm(torchvision.models.resnet18(), "resnet18", focus_frames)
        resnet.avgpool = nn.AdaptiveAvgPool2d(1)
        self.focuser.net.base_model = nn.Sequential(*list(resnet.children())[:-1])
        cells = math.ceil(glance_size / 32) ** 2
        self.focuser.policy = OfficialPPOContinuous(1280 * frames, cells, channels, hidden)
        self.dropout = nn.Dropout(0.5)
        self.classifier = nn.Linear(512, classes)


def batchnorm_statistics_of(model, inputs):
    """BatchNorm statistics measured on the model's own activations for `inputs` (random affine parameters kept), so
    that, as after training, features vary with the input: with random statistics the glance maps hardly do and the
    policy puts every video's patch at the same place."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        model(*inputs)
    model.eval()


def official_v1_checkpoint(model):
    """What the official V1 stage scripts save (main_dist.py, V1s stage2.py): the unwrapped model's state and its
    parts, which they load one by one."""
    return {"epoch": 7, "model_state_dict": model.state_dict(), "glancer": model.glancer.state_dict(),
            "focuser": model.focuser.state_dict(), "fc": model.classifier.state_dict(), "scaler": None,
            "policy": model.focuser.policy.policy.state_dict(), "acc": 40.0, "best_acc": 41.0,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0003, "params": [0, 1]}]}}


def official_export_references(out):
    """Official-layout checkpoints of V2-TSM ({'state_dict': {'module.' + key}}, with the clips and the official
    model's outputs), V1 and V1-TSM (the stage scripts' dict), tiny, for adafocus export to round-trip."""
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    model = OfficialAdaFocusV2TSM(frames=4, focus_frames=6, classes=10, size=64, patch=32, widths=(8, 16, 8))
    randomize_batchnorm(model, g)
    batchnorm_statistics_of(model, [torch.randn(4, 4, 3, 64, 64, generator=g),
                                    torch.randn(4, 6, 3, 64, 64, generator=g)])
    torch.save({"epoch": 3, "arch": "mobilenetv2", "best_prec1": 12.5,
                "state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
               os.path.join(out, "official_v2_tsm.pth.tar"))
    inputs = {"clip": torch.randn(2, 4, 3, 64, 64, generator=g), "focus": torch.randn(2, 6, 3, 64, 64, generator=g)}
    torch.save(inputs, os.path.join(out, "official_v2_tsm_clips.pt"))
    with torch.no_grad():
        logits, actions = model(inputs["clip"], inputs["focus"])
    torch.save({"logits": logits, "actions": actions}, os.path.join(out, "official_v2_tsm_outputs.pt"))

    model = OfficialAdaFocusV1(classes=10, glance_size=64, channels=8, hidden=16, grid=7, classifier_hidden=32)
    randomize_batchnorm(model, g)
    model.focuser.policy.policy_old.load_state_dict(model.focuser.policy.policy.state_dict())  # synced by updates
    torch.save(official_v1_checkpoint(model), os.path.join(out, "official_v1.pth.tar"))

    model = OfficialAdaFocusV1TSM(frames=4, focus_frames=6, classes=10, glance_size=64, channels=8, hidden=16)
    randomize_batchnorm(model, g)
    randomize_batchnorm(model.focuser.policy.policy, g)  # not a submodule of the model
    torch.save(official_v1_checkpoint(model), os.path.join(out, "official_v1_tsm.pth.tar"))


def training_reference():
    """torch.optim SGD/Adam steps, OneCycleLR, the official cosine schedule and cal_map, for the training tests."""
    grads = [torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.1, 0.3, -0.2]), torch.tensor([-0.4, 0.0, 1.0])]
    result = {"start": [1.0, -2.0, 0.5], "grads": [x.tolist() for x in grads]}
    for name, make in [("sgd", lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-4)),
                       ("adam", lambda p: torch.optim.Adam([p], lr=0.01, weight_decay=1e-4))]:
        p = torch.tensor(result["start"], dtype=torch.float64, requires_grad=True)
        opt = make(p)
        for gr in grads:
            p.grad = gr.to(torch.float64).clone()
            opt.step()
        result[name] = p.detach().tolist()
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.002)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.002, total_steps=60, pct_start=0.15)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    result["onecycle"] = {"lr": 0.002, "epochs": 6, "steps": 10, "warmup": 0.15, "lrs": lrs}
    result["cosine"] = {"lr": 0.002, "epochs": 50,
                        "lrs": [0.5 * 0.002 * (1 + math.cos(math.pi * e / 50)) for e in range(50)]}  # main_v2.py
    # ops/utils.py cal_map and accuracy on multi-label targets padded with -1
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(40, 6, generator=g)
    target = torch.randint(0, 6, (40, 2), generator=g)
    target[torch.rand(40, generator=g) < 0.6, 1] = -1
    probs = F.softmax(logits, dim=1)
    gt = torch.zeros(40, 6)
    for i in range(40):
        for t in target[i]:
            if t >= 0:
                gt[i, t] = 1
    rg = torch.arange(1, 41).float()
    ap = torch.zeros(6)
    for k in range(6):
        _, order = torch.sort(probs[:, k], 0, True)
        truth = gt[order, k]
        precision = truth.cumsum(0) / rg
        ap[k] = precision[truth.bool()].sum() / max(float(truth.sum()), 1)
    top5 = logits.topk(5, 1)[1]
    result["metrics"] = {"logits": logits.tolist(), "labels": target.tolist(), "map": float(ap.mean() * 100),
                         "top1": float((top5[:, 0] == target[:, 0]).float().mean() * 100),
                         "top5": float((top5 == target[:, :1]).any(1).float().mean() * 100)}
    return result


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
    adafocus_v2_reference(out)
    adafuse_block_reference(out)
    official_export_references(out)
    import json
    with open(os.path.join(out, "training_reference.json"), "w") as f:
        json.dump(training_reference(), f)
    open(os.path.join(out, ".done"), "w").close()


def pil_resize(out):
    """Pillow's bilinear resize (what the official GroupScale and GroupMultiScaleCrop use) of seeded random RGB images,
    shrinking and enlarging, at the official extraction size (640x360) and others: case_N.in / case_N.out raw bytes."""
    import json
    import random
    from PIL import Image
    rng = random.Random(0)
    cases = [(640, 360, 455, 256), (640, 360, 341, 192), (360, 360, 224, 224), (315, 315, 224, 224),
             (237, 237, 224, 224), (480, 360, 128, 96), (320, 240, 455, 341), (100, 60, 300, 180),
             (171, 128, 224, 168), (640, 360, 640, 400), (50, 50, 50, 51)]
    os.makedirs(out, exist_ok=True)
    for i, (w, h, ow, oh) in enumerate(cases):
        # smooth gradients with noise on 30% of the values: both the averaging and the rounding are exercised
        data = bytes(rng.getrandbits(8) if rng.random() < 0.3 else (x * 3 + y * 5 + c * 40) % 256
                     for y in range(h) for x in range(w) for c in range(3))
        with open(os.path.join(out, "case_%d.in" % i), "wb") as f:
            f.write(data)
        with open(os.path.join(out, "case_%d.out" % i), "wb") as f:
            f.write(Image.frombytes("RGB", (w, h), data).resize((ow, oh), Image.BILINEAR).tobytes())
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump([{"width": w, "height": h, "out_width": ow, "out_height": oh} for w, h, ow, oh in cases], f)


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
    elif len(sys.argv) == 3 and sys.argv[1] == "pil-resize":
        pil_resize(sys.argv[2])
    elif len(sys.argv) == 6 and sys.argv[1] == "check-load":
        check_load(*sys.argv[2:])
    else:
        sys.exit(__doc__)
