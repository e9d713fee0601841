"""adafocus from Python: the C++ library's models, decoders, exits, budgets and trainer, with tensors shared with
PyTorch (no copies) - one implementation behind the CLI, the server and this package.

    import adafocus
    model = adafocus.load("runs/v2/best.pt")
    model.predict("video.mp4", budget=0.02)            # the dict `adafocus predict --json` prints
    out = model(clip)                                  # clip (T, 3, S, S) or (B, T, 3, S, S): logits of every exit
    data = adafocus.VideoDataset("train.txt", "data", preset="runs/v2/config.yaml", train=True)
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2)

Every error of the library arrives as a Python exception carrying its message, the file/line/key it is about and a
hint: FileNotFoundError when the file it names does not exist, ValueError otherwise. Calls release the GIL while C++
computes, and Ctrl-C stops a long call (training, calibration, the batches of a dataset) at its next batch with
KeyboardInterrupt. See docs/python.md.
"""
import json
import os

import torch  # first: the C++ core converts torch.Tensor with this very LibTorch

from . import _core

__all__ = ["load", "Model", "read_video", "VideoDataset", "train"]


def _overrides(overrides):
    """{'data.segments': 16} or ['data.segments=16'] -> ['data.segments=16']"""
    if isinstance(overrides, dict):
        return ["%s=%s" % (k, v) for k, v in overrides.items()]
    return [str(o) for o in (overrides or ())]


def _set_threads(threads):
    """None: every core this process may use, as the CLI (PyTorch alone may take one); 0: leave PyTorch's setting."""
    if threads is None:
        threads = len(os.sched_getaffinity(0))
    if threads:
        torch.set_num_threads(int(threads))


def load(checkpoint, preset=None, device="cpu", threads=None, classes=None, overrides=()):
    """Loads a trained model for inference, as `adafocus predict` does: our checkpoints (best.pt / last.pt of a run)
    and official ones (.pth.tar, with `preset` naming their configuration), strictly.

    checkpoint: path of the checkpoint.
    preset: a preset file or built-in name (e.g. "activitynet_v2"); needed for official checkpoints, else it
        overrides keys of the checkpoint's own configuration.
    device: "cpu" or "cuda".
    threads: intra-op threads for this process (torch.set_num_threads); None: every core it may use, as the CLI;
        0: leave PyTorch's setting.
    classes: a classInd.txt naming the classes (official checkpoints have none).
    overrides: {key: value} or ["key=value"] configuration overrides.
    """
    _set_threads(threads)
    return Model(_core.load(os.fspath(checkpoint), preset or "", str(device), _overrides(overrides),
                            os.fspath(classes) if classes else ""))


class Model:
    """A trained model (from `load`). Attributes: classes (names in label order), method (e.g. "adafocus_v2"),
    exits (predictions it can stop after), config (its resolved configuration as YAML), device, thresholds (the
    early-exit table it carries, a dict, or None)."""

    def __init__(self, core):
        self._core = core

    classes = property(lambda self: self._core.classes)
    method = property(lambda self: self._core.method)
    exits = property(lambda self: self._core.exits)
    config = property(lambda self: self._core.config)
    device = property(lambda self: self._core.device)
    thresholds = property(lambda self: json.loads(self._core.thresholds) if self._core.thresholds else None)

    def predict(self, video, budget=None, thresholds=None, top_k=5, raw=False, focus=None):
        """Classifies one video: `video` is a video file or a frame folder (read and sampled with the model's test
        view) or a torch.Tensor clip (T, 3, S, S) normalised as the data pipeline gives it (`focus`: V2-TSM's second
        clip). Returns the dict `adafocus predict --json` prints (video, method, gflops, full_gflops, frames, top,
        regions; with a budget also exit, exits, budget, expected_gflops) - with raw=True also "raw", every exit's
        logits, the regions in input pixels and the method's own outputs, as `predict --raw`.

        budget: stop early at this many GFLOPs per video on average, with the thresholds from `thresholds` (a file
            of `adafocus calibrate --out` or a dict), else those of the checkpoint or of `calibrate`.
        """
        budget = -1.0 if budget is None else float(budget)
        thresholds = self._thresholds(thresholds)
        if isinstance(video, torch.Tensor):
            text = self._core.predict_tensor(video, focus, budget, thresholds, int(top_k), bool(raw))
        else:
            text = self._core.predict_path(os.fspath(video), budget, thresholds, int(top_k), bool(raw))
        return json.loads(text)

    def __call__(self, clip, focus=None):
        """Runs the network on clips (T, 3, S, S) or (B, T, 3, S, S) (float, normalised) without gradients and returns
        what it computed as tensors on the model's device, without copies: "logits" (B, K, C) of its K exits (the last
        is the final prediction), "regions" (B, R, 4) x, y, w, h in input pixels and "region_frames" (B, R, F) the clip
        positions each covers (methods that look at regions), "gflops" (B,) when the cost depends on the video
        (AdaFuse), and the method's own outputs (e.g. V2's auxiliary heads)."""
        return self._core.forward(clip, focus)

    def flops(self):
        """GFLOPs per video as the papers count them: {"gflops", "exits" (the cost of leaving at each exit),
        "frames", "focus_frames", "input_size", "method"}."""
        return json.loads(self._core.flops())

    def calibrate(self, list_file, budgets=(), root=None, criterion=None, videos=0):
        """Fits early-exit thresholds for `budgets` (GFLOPs per video; none: the cost of each exit) on the videos of
        `list_file` (relative to `root`, default the model's data.root), as `adafocus calibrate` does. The model
        keeps them (predict(budget=...) then needs no file); returns the table (a dict, the JSON of --out).
        criterion: entropy | max_logit | max_softmax (default: the method's own)."""
        text = self._core.calibrate(os.fspath(list_file), os.fspath(root) if root else "",
                                    [float(b) for b in budgets], criterion or "", int(videos))
        return json.loads(text)

    def export(self, path, format="official"):
        """Writes the model as the official code's checkpoint (.pth.tar), which its scripts load strictly."""
        self._core.export(os.fspath(path), format)

    @staticmethod
    def _thresholds(thresholds):
        """A file of `adafocus calibrate --out` or a table (dict) -> what the core takes: a path or the JSON text."""
        if thresholds is None:
            return ""
        return json.dumps(thresholds) if isinstance(thresholds, dict) else os.fspath(thresholds)

    def __repr__(self):
        return "<adafocus.Model %s, %d classes, %d exits, on %s>" % (self.method, len(self.classes), self.exits,
                                                                     self.device)


def read_video(path, frames=None, size=None):
    """The frames of a video file or a frame folder as a (T, H, W, 3) uint8 RGB tensor (torchvision.io.read_video's
    layout), decoded by our readers (FFmpeg, libjpeg-turbo). frames: 0-based indices to read (default: all);
    size: scale so that the short side is `size` (default: the video's own size)."""
    return _core.read_video(os.fspath(path), None if frames is None else [int(f) for f in frames],
                            int(size or 0))


class VideoDataset(torch.utils.data.Dataset):
    """The clips of a list file as our C++ loader makes them (decoding, TSN/dense sampling, crops, flips,
    normalisation of the configuration's data.* keys), as a torch.utils.data.Dataset for a user's own training loop.

    list_file: the list (any format `adafocus check-data` reads), relative to `root` or absolute.
    root: the folder its paths are relative to (data.root).
    preset: a preset file or built-in name, or a run's config.yaml, whose data.* keys say how to sample and crop.
    overrides: {key: value} or ["key=value"].
    train: random sampling and augmentation (the training view), else the deterministic test view.
    transform: a callable applied to each clip.

    dataset[i] is (clip, target): clip (T, 3, S, S) float, or (clip, focus) for presets with a focus clip; target the
    first label. Item i of epoch e draws its random choices from (seed, e, i), so that it equals position i of the C++
    loader's unshuffled epoch e whatever process or worker loads it; call set_epoch(e) in each epoch to vary them.
    """

    def __init__(self, list_file, root, preset=None, overrides=(), train=False, transform=None):
        self._args = (os.fspath(list_file), os.fspath(root), preset or "", _overrides(overrides), bool(train))
        self._core = _core.Dataset(*self._args)
        self.transform = transform

    def __len__(self):
        return len(self._core)

    def __getitem__(self, index):
        s = self._core.get(int(index))
        clip = s["clip"] if self.transform is None else self.transform(s["clip"])
        x = (clip, s["focus"]) if "focus" in s else clip
        return x, s["labels"][0] if s["labels"] else -1

    def sample(self, index):
        """Item `index` with everything known of it: clip, focus (if any), labels, frames (indices read)."""
        return self._core.get(int(index))

    def path(self, index):
        """The file or folder of item `index`."""
        return self._core.path(int(index))

    def set_epoch(self, epoch):
        self._core.epoch = int(epoch)

    def batches(self, batch_size=8, shuffle=False, workers=None, drop_last=False):
        """One epoch of batches from the C++ loader (worker threads, no Python processes): dicts of "clips"
        (B, T, 3, S, S), "labels" (B, L) -1 padded, "target" (B,), "indices" and "focus" if any. shuffle: the order
        of epoch set_epoch(e), drawn from the seed as training does. workers: loader threads (None: data.workers)."""
        return self._core.batches(int(batch_size), bool(shuffle), -1 if workers is None else int(workers),
                                  bool(drop_last))

    def __getstate__(self):  # DataLoader workers started by spawn rebuild the dataset from its arguments
        return {"args": self._args, "transform": self.transform, "epoch": self._core.epoch}

    def __setstate__(self, state):
        self._args, self.transform = state["args"], state["transform"]
        self._core = _core.Dataset(*self._args)
        self._core.epoch = state["epoch"]


def train(preset, data, out, overrides=(), progress=None, resume=False, init=None, device="cpu", threads=None,
          quiet=False):
    """Trains a method into the run folder `out` exactly as `adafocus train -c PRESET --data DATA --out OUT
    key=value...` does (config.yaml, metrics.jsonl, last.pt, best.pt; the same weights and metrics).

    preset: a preset file or built-in name; data: the dataset folder (data.root); overrides: {key: value} or
    ["key=value"]; progress: called with each epoch's metrics.jsonl line (a dict) as it is written; resume=True
    continues the run in `out` from its last.pt (no preset, data or overrides then); init: a checkpoint to start from;
    threads: as in load(); quiet: no progress bars on stderr. Returns a summary: epochs, seconds, metric, best_metric, best_epoch (0-based),
    last (top1, map, gflops), failures (samples replaced)."""
    _set_threads(threads)
    callback = None if progress is None else (lambda line: progress(json.loads(line)))
    text = _core.train(preset or "", os.fspath(data) if data else "", os.fspath(out), _overrides(overrides),
                       bool(resume), os.fspath(init) if init else "", str(device), callback, bool(quiet))
    return json.loads(text)
