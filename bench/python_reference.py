#!/usr/bin/python3
"""PyTorch eager side of `adafocus bench --compare-python`: the same models, loaded from the weights adafocus wrote,
run on the same inputs with the same number of threads, written as a user of PyTorch would write them (eval mode and
no_grad for inference, a plain loss.backward() and torch.optim step for training).

  python_reference.py SPEC OUT    reads the cases of SPEC (JSON), writes the results to OUT (JSON)

adafocus runs it case by case, right after timing its own. Each case first checks that our outputs (WORK/<case>_ours.pth) agree with PyTorch's on the same input, then times
`rounds` runs after `warmup` ones. Run with /usr/bin/python3 (Debian's python3-torch).
"""
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
from reference import TonylinsMobileNetV2  # noqa: E402  the official glance layout, shared with the parity tests


class ResNet(nn.Module):
    """torchvision's ResNet names and blocks, with adafocus' options: stage widths from base_width and a stem for
    small inputs (3x3 conv, stride 1 or 2, no max-pool)."""

    def __init__(self, arch, width, stem):
        super().__init__()
        block = Bottleneck if arch == "resnet50" else BasicBlock
        depth = {"resnet10": [1, 1, 1, 1], "resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3],
                 "resnet50": [3, 4, 6, 3]}[arch]
        self.stem = stem
        k, s = (7, 2) if stem == "imagenet" else (3, 1 if stem == "small" else 2)
        self.conv1 = nn.Conv2d(3, width, k, s, k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        inp = width
        for i, n in enumerate(depth):
            planes, blocks = width << i, []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                out = planes * block.expansion
                down = None if stride == 1 and inp == out else nn.Sequential(
                    nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                blocks.append(block(inp, planes, stride, down))
                inp = out
            setattr(self, "layer%d" % (i + 1), nn.Sequential(*blocks))
        self.fc = nn.Linear(inp, 1000)  # unused: in the state dict as in torchvision
        self.dim = inp

    def feature_map(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            x = F.max_pool2d(x, 3, 2, 1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class MobileNetV2(TonylinsMobileNetV2):
    dim = 1280

    def feature_map(self, x):
        return self.features(x)


def backbone(c):
    if c["arch"] == "mobilenet_v2":
        return MobileNetV2(1000)
    return ResNet(c["arch"], c["base_width"], c["stem"])


def resize(frames, side, mode):
    if frames.size(-1) == side:
        return frames
    if mode == "area":
        return F.adaptive_avg_pool2d(frames, side)
    return F.interpolate(frames, size=(side, side), mode="bilinear", align_corners=True)


def crop_patches(images, actions, patch):
    """The official patch crop: affine_grid + bilinear grid_sample, the patch's corner at actions * (side - P)."""
    n, _, h, w = images.shape
    y1, x1 = actions[:, 0] * (h - patch), actions[:, 1] * (w - patch)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = patch / w, patch / h
    theta[:, 0, 2], theta[:, 1, 2] = -1 + (2 * x1 + patch) / w, -1 + (2 * y1 + patch) / h
    grid = F.affine_grid(theta, (n, images.size(1), patch, patch), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def enlarged_patches(frames, corners, side):
    """Patches side x side with top-left corners (N, 2) in pixels (y, x), zeros outside the frame."""
    n, _, h, w = frames.shape
    i = torch.arange(side, dtype=frames.dtype)
    y = corners[:, 0].view(n, 1, 1) + i.view(1, side, 1)
    x = corners[:, 1].view(n, 1, 1) + i.view(1, 1, side)
    grid = torch.stack([((2 * x + 1) / w - 1).expand(n, side, side), ((2 * y + 1) / h - 1).expand(n, side, side)], -1)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def interpolate_map(maps, offsets):
    """AdaFocusV3 Eq. 6 on one frame: maps (N, C, h+1, w+1) read at cell + offset (N, 2) -> (N, C, h, w)."""
    n, _, hh, ww = maps.shape
    h, w = hh - 1, ww - 1
    y = (torch.arange(h, dtype=maps.dtype).view(1, h, 1) + offsets[:, 0].view(n, 1, 1)) * (2.0 / h) - 1
    x = (torch.arange(w, dtype=maps.dtype).view(1, 1, w) + offsets[:, 1].view(n, 1, 1)) * (2.0 / w) - 1
    grid = torch.stack([x.expand(n, h, w), y.expand(n, h, w)], -1)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)


class PolicySTN(nn.Module):
    def __init__(self, cg, cells, channels, hidden):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(cg, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.Tanh(),
                                     nn.Flatten(), nn.Linear(cells * channels, hidden), nn.BatchNorm1d(hidden),
                                     nn.Tanh())
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.fc = nn.Sequential(nn.Linear(hidden, 2), nn.Sigmoid())

    def forward(self, maps, frames):
        state = self.encoder(maps).view(-1, frames, self.gru.hidden_size)
        out, _ = self.gru(state)
        return self.fc(out.reshape(-1, out.size(2)))


class PoolingClassifier(nn.Module):
    def __init__(self, dim, hidden, frames, classes, dropout):
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.layers = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.classifiers = nn.ModuleList(
            [nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, classes)) for _ in range(frames)])

    def forward(self, x):  # (B, T, D) -> (B, T, C)
        b, t, _ = x.shape
        z = self.mlp.layers(x.reshape(b * t, -1)).view(b, t, -1)
        pooled, logits = z[:, 0], []
        for i in range(t):
            if i > 0:
                pooled = torch.maximum(pooled, z[:, i])
            logits.append(self.classifiers[i](pooled))
        return torch.stack(logits, 1)


class GlanceAndFocus(nn.Module):
    """The glance and local networks with their auxiliary heads, named as AdaFocusV2 and V3 name them."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.global_CNN, self.local_CNN = backbone(c["glance"]), backbone(c["local"])
        self.global_CNN_fc = nn.Sequential(nn.Dropout(c["fc_dropout"]), nn.Linear(self.global_CNN.dim, c["classes"]))
        self.local_CNN_fc = nn.Sequential(nn.Dropout(c["fc_dropout"]), nn.Linear(self.local_CNN.dim, c["classes"]))


class AdaFocusV2(GlanceAndFocus):
    """AdaFocusV2 as adafocus runs it (the official model, plus the deep-feature policy gradient option)."""

    def __init__(self, c):
        super().__init__(c)
        cg, cl, classes = self.global_CNN.dim, self.local_CNN.dim, c["classes"]
        self.policy_stn = PolicySTN(cg, c["map_cells"], c["policy_channels"], c["policy_hidden"])
        fused = (cg if c["fuse"] == "concat" else 0) + cl
        self.classifier = PoolingClassifier(fused, c["classifier_hidden"], c["frames"], classes, c["dropout"])

    def local_features(self, frames, actions, feature_gradient):
        p = self.c["patch"]
        if not feature_gradient:
            return self.local_CNN.feature_map(crop_patches(frames, actions, p)).mean((2, 3))
        s = self.c["local_stride"]
        q = actions * torch.tensor([frames.size(2) - p, frames.size(3) - p], dtype=actions.dtype)
        fixed = q.detach()
        with torch.no_grad():
            patches = enlarged_patches(frames, fixed - s / 2.0, p + s)
        maps = self.local_CNN.feature_map(patches.contiguous(memory_format=torch.channels_last))
        return interpolate_map(maps, (q - fixed) / s + 0.5).mean((2, 3))

    def run(self, clips, branches):
        """Per branch: (fused logits (B, T, C), local features (B*T, Cl)); glance map, feature and frames."""
        c, t = self.c, self.c["frames"]
        frames = clips.reshape(-1, *clips.shape[2:])
        gmap = self.global_CNN.feature_map(resize(frames, c["glance_size"], c["resize"]))
        feature = gmap.mean((2, 3))
        out = []
        for branch in branches:
            if branch == "learned":
                actions = self.policy_stn(gmap.detach(), t)
            else:
                actions = torch.rand(frames.size(0), 2)
            local = self.local_features(frames, actions, branch == "learned" and c["feature_gradient"])
            fused = torch.cat([feature, local], 1) if c["fuse"] == "concat" else local
            out.append((self.classifier(fused.view(-1, t, fused.size(1))), local))
        return out, feature

    def predict(self, clips):
        [(logits, local)], feature = self.run(clips, ["learned"])
        # the auxiliary heads run at test time too, as in the official forward
        return logits, self.global_CNN_fc(feature), self.local_CNN_fc(local)

    def loss(self, clips, target):
        t = self.c["frames"]
        frame_target = target.repeat_interleave(t)
        branches, feature = self.run(clips, ["learned", "random"])
        glance_ce = F.cross_entropy(self.global_CNN_fc(feature), frame_target)
        total = 0
        for logits, local in branches:
            total = total + F.cross_entropy(logits.reshape(-1, logits.size(2)), frame_target) + glance_ce + \
                F.cross_entropy(self.local_CNN_fc(local), frame_target)
        return total / len(branches)


class CubePolicy(nn.Module):
    """AdaFocusV3's policy: 3D convolutions over the glance maps of all frames, then K cube positions in [0, 1]^3."""

    def __init__(self, cg, frames, cells, channels, cubes):
        super().__init__()
        layers = [nn.Conv3d(cg, channels, 1, bias=False), nn.BatchNorm3d(channels), nn.ReLU()]
        for _ in range(2):
            layers += [nn.Conv3d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm3d(channels), nn.ReLU()]
        self.encoder = nn.Sequential(*layers)
        self.fc = nn.Linear(channels * frames * cells, 3 * cubes)
        self.cubes = cubes

    def forward(self, maps):  # (B, T, C, h, w) -> (B, K, 3)
        return torch.sigmoid(self.fc(self.encoder(maps.permute(0, 2, 1, 3, 4)).flatten(1))).view(-1, self.cubes, 3)


def mlp(n_in, hidden):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU())


class CubeClassifier(nn.Module):
    def __init__(self, cg, cl, hidden, cubes, classes, dropout, concat):
        super().__init__()
        self.concat = concat
        self.global_mlp, self.local_mlp = mlp(cg, hidden), mlp(cl, hidden)
        self.classifiers = nn.ModuleList(
            [nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden if k == 0 or not concat else 2 * hidden, classes))
             for k in range(cubes + 1)])

    def head(self, k, local, glance):
        if k == 0:
            return self.classifiers[0](glance)
        return self.classifiers[k](torch.cat([local, glance], 1) if self.concat else local)


def assign_frames(times, frames):
    """Frame-wise cubes at test time: each cube takes the free frame nearest its position (ties: the earlier)."""
    out = torch.empty(times.shape, dtype=torch.long)
    for b in range(times.size(0)):
        free = list(range(frames))
        for k in range(times.size(1)):
            t = float(times[b, k])
            best = min(free, key=lambda f: (abs(f - t), f))
            free.remove(best)
            out[b, k] = best
    return out


def sample_cubes(clips, corners, side, length):
    """Cubes (B, K, L, C, P, P) cut from clips (B, T, C, H, W) at corners (B, K, 3) (y, x, t) by trilinear sampling."""
    b, t, c, h, w = clips.shape
    k = corners.size(1)
    i = torch.arange(side, dtype=clips.dtype)
    y = corners[..., 0].view(b, k, 1, 1, 1) + i.view(1, 1, 1, side, 1)
    x = corners[..., 1].view(b, k, 1, 1, 1) + i.view(1, 1, 1, 1, side)
    z = corners[..., 2].view(b, k, 1, 1, 1) + torch.arange(length, dtype=clips.dtype).view(1, 1, length, 1, 1)
    shape = (b, k, length, side, side)
    grid = torch.stack([((2 * x + 1) / w - 1).expand(shape), ((2 * y + 1) / h - 1).expand(shape),
                        ((2 * z + 1) / t - 1).expand(shape)], -1).view(b, k * length, side, side, 3)
    out = F.grid_sample(clips.permute(0, 2, 1, 3, 4), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(b, c, k, length, side, side).permute(0, 2, 3, 1, 4, 5)


class AdaFocusV3(GlanceAndFocus):
    """AdaFocusV3 inference with early exit, as adafocus runs it: the glance on every frame and p_0; then, for the
    videos still present, the policy's cubes and one cube per exit; a video leaves once its exit's -entropy reaches
    the threshold. Frame-wise cubes (length 1) only, as the benchmark's."""

    def __init__(self, c):
        super().__init__(c)
        cg, cl, classes = self.global_CNN.dim, self.local_CNN.dim, c["classes"]
        self.policy = CubePolicy(cg, c["frames"], c["map_cells"], c["policy_channels"], c["cubes"])
        self.classifier = CubeClassifier(cg, cl, c["classifier_hidden"], c["cubes"], classes, c["dropout"],
                                         c["fuse"] == "concat")

    def early_exit(self, clips, thresholds):
        c, (b, t, _, s, _) = self.c, clips.shape
        p, length, cubes = c["patch"], c["cube_frames"], c["cubes"]
        assert length == 1, "frame-wise cubes only"
        maps = self.global_CNN.feature_map(resize(clips.reshape(-1, *clips.shape[2:]), c["glance_size"], c["resize"]))
        features, maps = maps.mean((2, 3)).view(b, t, -1), maps.view(b, t, *maps.shape[1:])
        glance = self.classifier.global_mlp(features.reshape(b * t, -1)).view(b, t, -1).max(1)[0]
        present = torch.arange(b)
        logits, exits, local = None, torch.empty(b, dtype=torch.long), None
        frames = clips.reshape(-1, *clips.shape[2:])
        for e in range(cubes + 1):
            if e == 1:  # the policy, for the videos that did not leave at p_0
                corners = self.policy(maps) * torch.tensor([s - p, s - p, t - length], dtype=clips.dtype)
                times = assign_frames(corners[..., 2], t)
            if e > 0:  # the next cube of the videos present: its frames gathered, cut where the policy put it
                n = present.numel()
                rows = ((present * t + times[:, e - 1]).unsqueeze(1) + torch.arange(length)).flatten()
                at = torch.cat([corners[:, e - 1, :2], torch.zeros(n, 1)], 1).unsqueeze(1)
                cube = sample_cubes(frames.index_select(0, rows).view(n, length, *frames.shape[1:]), at, p, length)
                z = self.local_CNN.feature_map(cube.reshape(n * length, 3, p, p)).mean((2, 3)).view(n, length, -1)
                z = self.classifier.local_mlp(z.mean(1))
                local = z if e == 1 else torch.max(local, z)
            step = self.classifier.head(e, local, glance)
            if logits is None:
                logits = torch.empty(b, step.size(1))
            lp = F.log_softmax(step.double(), 1)
            leave = torch.ones(present.numel(), dtype=torch.bool) if e == cubes else (lp.exp() * lp).sum(1) >= thresholds[e]
            logits[present[leave]] = step[leave]
            exits[present[leave]] = e
            keep = (~leave).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            present, glance = present[keep], glance[keep]
            if e == 0:
                maps = maps[keep]
            else:
                corners, times = corners[keep], times[keep]
            local = local[keep] if local is not None else None
        return logits, exits


class TSN(nn.Module):
    """Full-frame TSN: the backbone on every frame at its resolution, logits averaged over the frames."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.base_model = backbone(c["backbone"])
        self.dropout = nn.Dropout(c["dropout"])
        self.new_fc = nn.Linear(self.base_model.dim, c["classes"])

    def logits(self, clips):
        frames = resize(clips.reshape(-1, *clips.shape[2:]), self.c["resolution"], self.c["resize"])
        per_frame = self.new_fc(self.dropout(self.base_model.feature_map(frames).mean((2, 3))))
        return per_frame.view(clips.size(0), self.c["frames"], -1).mean(1)

    def predict(self, clips):
        return (self.logits(clips),)

    def loss(self, clips, target):
        return F.cross_entropy(self.logits(clips), target)


def build(case):
    model = {"adafocus_v2": AdaFocusV2, "adafocus_v3": AdaFocusV3}.get(case["model"]["method"], TSN)(case["model"])
    model.load_state_dict(torch.load(case["weights"]), strict=True)
    return model


def max_difference(ours, theirs):
    return max(float((a - b.reshape(a.shape)).abs().max()) for a, b in zip(ours, theirs))


def timed(fn, warmup, rounds):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def inference(case, warmup, rounds):
    model = build(case).eval()
    inputs = torch.load(case["input"])
    clips = inputs["clips"]
    ours = torch.load(case["ours"])
    with torch.no_grad():
        theirs = model.predict(clips)
        difference = max_difference([ours[k] for k in ["logits", "glance_logits", "local_logits"][:len(theirs)]],
                                    theirs)
        times = timed(lambda: model.predict(clips), warmup, rounds)
    return {"max_abs_difference": difference, "seconds": times}


def early_exit(case, warmup, rounds):
    """V3 with early exit at the case's thresholds: the logits each video left with and where it left must agree."""
    model = build(case).eval()
    clips, ours = torch.load(case["input"])["clips"], torch.load(case["ours"])
    with torch.no_grad():
        logits, exits = model.early_exit(clips, case["thresholds"])
        same_exits = bool((exits == ours["exits"]).all())
        # a video leaving at another exit is a disagreement however close the logits are
        difference = float((logits - ours["logits"]).abs().max()) if same_exits else 1e9
        times = timed(lambda: model.early_exit(clips, case["thresholds"]), warmup, rounds)
    return {"max_abs_difference": difference, "same_exits": same_exits, "seconds": times}


def training(case, warmup, rounds):
    model = build(case).train()
    inputs, ours = torch.load(case["input"]), torch.load(case["ours"])
    clips, target = inputs["clips"], inputs["target"]
    o = case["optimizer"]
    # Adam or SGD over every parameter at the preset's rate (the demo presets' per-group multipliers are all 1).
    optimizer = torch.optim.Adam(model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"]) \
        if o["kind"] == "adam" else \
        torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])

    def step():
        optimizer.zero_grad()
        loss = model.loss(clips, target)
        loss.backward()
        optimizer.step()
        return loss

    # The check: the first step's loss (the random branch's patches drawn from the same seed) and its gradients,
    # relative to the largest (the optimiser's update amplifies rounding noise in near-zero gradients: not compared).
    torch.manual_seed(case["seed"])
    loss = step()
    difference = abs(float(loss) - float(ours["loss"]))
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    scale = max(float(g.abs().max()) for g in grads.values())
    gradient_difference = max(float((g - ours["grad." + k]).abs().max()) for k, g in grads.items()) / scale
    times = timed(step, warmup, rounds)
    return {"max_abs_difference": difference, "gradient_difference": gradient_difference, "seconds": times}


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cases": {}}
    for case in spec["cases"]:
        run = {"training": training, "early_exit": early_exit}.get(case["kind"], inference)
        results["cases"][case["name"]] = run(case, spec["warmup"], spec["rounds"])
        print("python: %s %.1f ms" % (case["name"], 1e3 * min(results["cases"][case["name"]]["seconds"])),
              file=sys.stderr)
    with open(sys.argv[2], "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
