#!/usr/bin/python3
"""The adafocus binary driven as a user would, with PyTorch/torchvision checking what it writes.

usage: test_cli.py ADAFOCUS_BINARY REFERENCE_DIR   (REFERENCE_DIR written by reference.py backbones)
"""
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402  the official model definitions re-implemented for the tests
from presets import TINY_V2  # noqa: E402

BINARY, REF = sys.argv[1], sys.argv[2]


def run(*args, threads=2):
    return subprocess.run([BINARY, "--threads", str(threads), *args], capture_output=True, text=True, timeout=600)


def close(actual, expected, rtol=1e-4):
    """max |actual - expected| <= rtol * max |expected|"""
    return actual.shape == expected.shape and \
        (actual.double() - expected.double()).abs().max() <= rtol * expected.double().abs().max()


class BinaryTest(unittest.TestCase):
    def ok(self, *args):
        r = run(*args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout


class SharedFolder(BinaryTest):
    """Tests of a class share one temporary folder (and what setUpClass makes in it)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def make_tiny(cls, preset_name, preset_text, *generator_args):
        """A tiny generated benchmark in DIR/data (16 training videos of 8 frames at 64 px) and a preset beside it."""
        cls.data = os.path.join(cls.dir, "data")
        r = run("make-synthetic", "--out", cls.data, "--train", "16", "--frames", "8", "--size", "64", *generator_args)
        assert r.returncode == 0, r.stderr
        preset = os.path.join(cls.dir, preset_name)
        with open(preset, "w") as f:
            f.write(preset_text)
        return preset


class Cli(BinaryTest):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def fails(self, *args):
        r = run(*args)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertTrue(r.stderr.startswith("error: "), r.stderr)
        return r.stderr

    def test_help_lists_subcommands_and_defaults(self):
        out = self.ok("--help")
        for sub in ["demo", "train", "eval", "predict", "flops", "features", "convert-weights", "make-synthetic",
                    "check-data", "make-list", "pretrain-items"]:
            self.assertIn(sub, out)
        self.assertIn("--threads", out)
        out = self.ok("flops", "-h")
        self.assertIn("--arch TEXT=resnet50", out)
        self.assertIn("--size TEXT=224", out)

    def test_flops_json_matches_official_constants(self):
        import json
        for arch, size, expected in [("mobilenet_v2", "224", 0.299511328), ("resnet50", "96", 0.750725056),
                                     ("resnet50", "128", 1.334601664), ("resnet50", "160", 2.08530016),
                                     ("resnet50", "192", 3.002820544)]:
            out = json.loads(self.ok("flops", "--arch", arch, "--size", size, "--json"))
            self.assertAlmostEqual(out["gflops"], expected, delta=1e-4)
            self.assertAlmostEqual(out["gflops"], expected, delta=1e-9)

    def test_flops_verbose_lists_layers(self):
        out = self.ok("flops", "--arch", "resnet18", "--size", "160x112", "--verbose")
        self.assertIn("layer1.0.conv1", out)
        self.assertIn("resnet18 @ 160x112", out)

    def test_config_errors_name_key_file_and_closest_key(self):
        err = self.fails("flops", "model.backbone.widht_mult=0.5")
        self.assertIn("unknown key 'model.backbone.widht_mult'", err)
        self.assertIn("did you mean 'model.backbone.width_mult'", err)
        err = self.fails("flops", "model.num_classes=many")
        self.assertIn("must be an integer", err)
        bad = os.path.join(self.dir, "bad.yaml")
        with open(bad, "w") as f:
            f.write("model:\n  patch_size: 96\n  patch_sise: 128\n")
        err = self.fails("flops", "-c", bad)
        self.assertIn(bad + ":3", err)
        self.assertIn("did you mean 'model.patch_size'", err)

    def test_resolved_config_round_trips(self):
        printed = self.ok("flops", "--print-config", "model.backbone.arch=mobilenet_v2", "data.input_size=160",
                          "data.scales=[1.0, 0.5]")
        preset = os.path.join(self.dir, "resolved.yaml")
        with open(preset, "w") as f:
            f.write(printed)
        self.assertEqual(self.ok("flops", "-c", preset, "--print-config"), printed)
        self.assertIn("mobilenet_v2", printed)
        self.assertIn("160", printed)

    def test_bad_arguments_are_errors(self):
        self.assertIn("unknown backbone arch 'resnet51'", self.fails("flops", "--arch", "resnet51"))
        self.assertIn("--size must be", self.fails("flops", "--size", "big"))
        self.assertNotEqual(run("flops", "--threads", "0").returncode, 0)
        if not torch.cuda.is_available():
            self.assertIn("no CUDA device", self.fails("--device", "cuda", "flops"))

    def test_features_match_torchvision(self):
        for arch, layer in [("resnet18", "logits"), ("resnet50", "pool"), ("mobilenet_v2", "map")]:
            out = os.path.join(self.dir, f"{arch}.pt")
            self.ok("features", "--arch", arch, "--weights", os.path.join(REF, f"{arch}.pth"),
                    "--input", os.path.join(REF, "input_128.pt"), "--output", out, "--layer", layer,
                    "--batch-size", "1")
            self.assertTrue(close(torch.load(out), torch.load(os.path.join(REF, f"{arch}_128_{layer}.pt"))), arch)

    def test_features_with_tsm(self):
        out = os.path.join(self.dir, "tsm.pt")
        self.ok("features", "--arch", "resnet50", "--tsm-segments", "4", "--weights",
                os.path.join(REF, "tsm_resnet50.pth"), "--input", os.path.join(REF, "input_tsm.pt"),
                "--output", out, "--layer", "logits", "--batch-size", "5")  # rounded to whole clips of 4
        self.assertTrue(close(torch.load(out), torch.load(os.path.join(REF, "tsm_resnet50_logits.pt"))))

    def test_features_bad_input_is_an_error(self):
        flat = os.path.join(self.dir, "flat.pt")
        torch.save(torch.zeros(4, 10), flat)
        err = self.fails("features", "--arch", "resnet18", "--weights", os.path.join(REF, "resnet18.pth"),
                         "--input", flat, "--output", os.path.join(self.dir, "o.pt"))
        self.assertIn(flat, err)
        self.assertIn("(N, 3, H, W)", err)
        err = self.fails("features", "--arch", "resnet34", "--weights", os.path.join(REF, "resnet18.pth"),
                         "--input", os.path.join(REF, "input_128.pt"), "--output", os.path.join(self.dir, "o.pt"))
        self.assertIn("missing key", err)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "o.pt")))

    def test_convert_official_weights_for_torchvision(self):
        out = os.path.join(self.dir, "mbv2_torchvision.pth")
        self.ok("convert-weights", "--arch", "mobilenet_v2", "--input",
                os.path.join(REF, "official_mobilenet_v2.pth.tar"), "--output", out)
        model = torchvision.models.mobilenet_v2(num_classes=10)
        model.load_state_dict(torch.load(out), strict=True)
        with torch.no_grad():
            logits = model.eval()(torch.load(os.path.join(REF, "input_224.pt")))
        self.assertTrue(close(logits, torch.load(os.path.join(REF, "official_mobilenet_v2_224_logits.pt"))))

    def test_export_round_trips_through_the_official_layout(self):
        # An official-layout checkpoint (written by the re-implemented official model) read by us and exported again:
        # the same keys and values, and the official model definition loads it strictly and gives its outputs.
        with tempfile.TemporaryDirectory() as d:
            preset = os.path.join(d, "preset.yaml")
            with open(preset, "w") as f:
                f.write("model: {method: adafocus_v2, num_classes: 5, glance: {arch: mobilenet_v2, resolution: 64}, "
                        "local: {arch: resnet18}, patch_size: 32, policy_hidden: 64, classifier_hidden: 4096}\n"
                        "data: {segments: 4, input_size: 64}\n")
            official = os.path.join(REF, "official_v2.pth.tar")
            out = os.path.join(d, "exported.pth.tar")
            self.ok("export", "--checkpoint", official, "-c", preset, "--out", out)
            exported, original = torch.load(out)["state_dict"], torch.load(official)["state_dict"]
            self.assertEqual(sorted(exported), sorted(original))
            for k, v in original.items():
                self.assertTrue(torch.equal(exported[k], v), k)
            model = reference.OfficialAdaFocusV2(frames=4, classes=5, size=64, patch=32, hidden=64).eval()
            model.load_state_dict({k[len("module."):]: v for k, v in exported.items()}, strict=True)
            with torch.no_grad():
                logits, _ = model(torch.load(os.path.join(REF, "official_v2_clips.pt")))
            self.assertTrue(close(logits, torch.load(os.path.join(REF, "official_v2_logits.pt"))))
            r = run("export", "--checkpoint", official, "-c", preset, "--out", out, "--format", "tf")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("--format must be official", r.stderr)

    def test_official_checkpoint_on_official_size_jpeg_frames_gives_the_official_logits(self):
        # The whole pipeline on 640x360 JPEG frames against the official one rebuilt here: PIL decoding, GroupScale
        # (PIL bilinear) to the short side, centre crop, ToTorchFormatTensor, normalisation, TSN val indices, the
        # coarse-to-fine input order, the official model.
        from PIL import Image
        import torchvision.transforms as T
        with tempfile.TemporaryDirectory() as d:
            folder = os.path.join(d, "video")
            os.makedirs(folder)
            g = torch.Generator().manual_seed(3)
            num_frames = 12
            for i in range(num_frames):  # smooth content with noise, so that resizing matters
                y, x = torch.meshgrid(torch.arange(360.0), torch.arange(640.0), indexing="ij")
                base = torch.stack([(x + 20 * i) % 256, (y * 2 + x / 3) % 256, (x * y / 500 + 40 * i) % 256], -1)
                img = (base + 40 * torch.rand(360, 640, 3, generator=g)).clamp(0, 255).to(torch.uint8)
                Image.fromarray(img.numpy()).save(os.path.join(folder, "image_%05d.jpg" % (i + 1)), quality=90)
            preset = os.path.join(d, "preset.yaml")
            with open(preset, "w") as f:
                f.write("model: {method: adafocus_v2, num_classes: 5, glance: {arch: mobilenet_v2, resolution: 64}, "
                        "local: {arch: resnet18}, patch_size: 32, policy_hidden: 64, classifier_hidden: 4096}\n"
                        "data: {segments: 4, input_size: 64, test_resize: 73, input_order: true, "
                        "frame_pattern: image_%05d.jpg}\n")
            ours = json.loads(self.ok("predict", "--checkpoint", os.path.join(REF, "official_v2.pth.tar"), "-c",
                                      preset, folder, "--raw"))
            indices = reference.official_val_indices(num_frames, 4)
            fed = [indices[o] for o in reference.official_input_order(4)]
            self.assertEqual(ours["frames"], fed)
            transform = T.Compose([T.Resize(73, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(64),
                                   T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
            clip = torch.stack([transform(Image.open(os.path.join(folder, "image_%05d.jpg" % (i + 1))).convert("RGB"))
                                for i in fed]).unsqueeze(0)
            model = reference.OfficialAdaFocusV2(frames=4, classes=5, size=64, patch=32, hidden=64).eval()
            model.load_state_dict({k[len("module."):]: v for k, v in
                                   torch.load(os.path.join(REF, "official_v2.pth.tar"))["state_dict"].items()})
            with torch.no_grad():
                logits, _ = model(clip)
            got = torch.tensor(ours["raw"]["logits"])
            error = ((got - logits[0]).abs().max() / logits.abs().max()).item()
            print("\n  official pipeline on 640x360 JPEG frames: max relative logit difference %.2e" % error)
            self.assertLessEqual(error, 1e-4)


class Data(SharedFolder):
    """make-synthetic, make-list, check-data and features on videos, on a small generated benchmark."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.videos = os.path.join(cls.dir, "videos_ds")
        r = run("make-synthetic", "--out", cls.videos, "--train", "6", "--val", "2", "--seed", "3", "--frames", "16")
        assert r.returncode == 0, r.stderr

    def check(self, *args):
        return run("check-data", *args)

    def test_generated_videos_decode_with_ffmpeg_and_repeat_with_the_seed(self):
        for name in ["train_00000", "val_00001"]:
            out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                                  "stream=nb_read_frames,width,height", "-of", "csv=p=0",
                                  os.path.join(self.videos, "videos", name + ".mp4")],
                                 capture_output=True, text=True).stdout.strip()
            self.assertEqual(out, "128,128,16")
        again = os.path.join(self.dir, "again")
        self.assertEqual(run("make-synthetic", "--out", again, "--train", "6", "--val", "2", "--seed", "3",
                             "--frames", "16", threads=1).returncode, 0)
        for f in ["train.txt", "val.txt", "meta.jsonl", "videos/train_00004.mp4"]:
            with open(os.path.join(self.videos, f), "rb") as a, open(os.path.join(again, f), "rb") as b:
                self.assertEqual(a.read(), b.read(), f)

    def test_check_data_passes_a_clean_generated_list(self):
        r = self.check("--list", os.path.join(self.videos, "train.txt"), "--root", self.videos, "--full")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("6 lines checked, 6 ok, 0 with problems (labels checked against 10 classes)", r.stdout)

    def test_check_data_passes_an_activitynet_list_over_official_frame_folders(self):
        frames = os.path.join(self.dir, "frames_ds")
        self.assertEqual(run("make-synthetic", "--out", frames, "--train", "3", "--val", "1", "--format", "frames",
                             "--frames", "16").returncode, 0)
        self.assertTrue(os.path.exists(os.path.join(frames, "frames", "train_00001", "image_00016.jpg")))
        listing = os.path.join(frames, "actnet_val.txt")
        with open(listing, "w") as f:
            f.write("train_00000,16,3\ntrain_00001,16,1,4\ntrain_00002,12,9\n")
        r = self.check("--list", listing, "--root", frames)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("3 ok", r.stdout)

    def test_check_data_names_every_bad_line(self):
        bad = os.path.join(self.dir, "bad")
        os.makedirs(bad, exist_ok=True)
        with open(os.path.join(self.videos, "videos", "train_00000.mp4"), "rb") as f:
            video = f.read()
        files = {"good.mp4": video, "cut.mp4": video[:len(video) // 2], "empty.mp4": b"",
                 "notes.mp4": b"not a video at all\n", "garbage.mp4": bytes(range(256)) * 40}
        for name, data in files.items():
            with open(os.path.join(bad, name), "wb") as f:
                f.write(data)
        listing = os.path.join(bad, "list.txt")
        with open(listing, "w") as f:
            f.write("good.mp4 1\ncut.mp4 2\nempty.mp4 3\nnotes.mp4 4\nmissing.mp4 5\nlonely_field\n"
                    "good.mp4 12\ngarbage.mp4 0\ngood.mp4 -1\n")
        r = self.check("--list", listing, "--root", bad, "--num-classes", "10")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        lines = {int(line.split(":")[0].split()[1]): line for line in r.stdout.splitlines() if line.startswith("line ")}
        self.assertEqual(sorted(lines), [2, 3, 4, 5, 6, 7, 8, 9], r.stdout)
        self.assertIn("cut.mp4: not a readable video", lines[2])
        self.assertIn("empty", lines[3])
        self.assertIn("notes.mp4: not a readable video", lines[4])
        self.assertIn("missing.mp4: not found", lines[5])
        self.assertIn("1 field, expected path label", lines[6])
        self.assertIn("label 12 out of range [0, 10)", lines[7])
        self.assertIn("garbage.mp4", lines[8])
        self.assertIn("label -1 out of range", lines[9])
        self.assertIn("9 lines checked, 1 ok, 8 with problems", r.stdout)

    def test_make_list_from_a_class_tree(self):
        import shutil
        tree = os.path.join(self.dir, "tree")
        for i, cls in enumerate(["walking", "cooking", "walking", "cooking", "archery"]):
            os.makedirs(os.path.join(tree, cls), exist_ok=True)
            shutil.copy(os.path.join(self.videos, "videos", f"train_0000{i}.mp4"), os.path.join(tree, cls, f"v{i}.mp4"))
        with open(os.path.join(tree, "walking", "README.txt"), "w") as f:
            f.write("not a video")
        out = os.path.join(self.dir, "tree_lists")
        r = run("make-list", "--root", tree, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "classInd.txt")) as f:
            self.assertEqual(f.read().split(), ["archery", "cooking", "walking"])
        with open(os.path.join(out, "list.txt")) as f:
            self.assertEqual(f.read().splitlines(), ["archery/v4.mp4 0", "cooking/v1.mp4 1", "cooking/v3.mp4 1",
                                                     "walking/v0.mp4 2", "walking/v2.mp4 2"])
        r = self.check("--list", os.path.join(out, "list.txt"), "--root", tree)
        self.assertEqual(r.returncode, 0, r.stdout)

    def test_features_of_a_video_file(self):
        out = os.path.join(self.dir, "video_features.pt")
        r = run("features", "--arch", "resnet18", "--weights", os.path.join(REF, "resnet18.pth"), "--input",
                os.path.join(self.videos, "videos", "val_00000.mp4"), "--output", out, "data.segments=8",
                "data.input_size=112", "data.test_resize=128")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(tuple(torch.load(out).shape), (8, 512))


TINY_V3 = TINY_V2.replace("method: adafocus_v2", "method: adafocus_v3").replace("epochs: 2,", "epochs: 2, policy_from_epoch: 1,")

TINY_V1 = TINY_V2.replace("method: adafocus_v2", "method: adafocus_v1").replace(
    "train: {epochs: 2,", "train: {stage2: [train.epochs=2, train.lr=0.0003], epochs: 1,")


def ck_state(path):
    return torch.load(path)["state_dict"]


OFFICIAL_TINY = {  # presets of the tiny official-layout models reference.py writes (10 classes, 64 px frames)
    "adafocus_v2_tsm": "model: {method: adafocus_v2_tsm, num_classes: 10, glance: {arch: mobilenet_v2, tsm: true}, "
                       "local: {arch: resnet18, tsm: true}, patch_size: 32, policy_channels: 8, policy_hidden: 16, "
                       "policy_hidden2: 8, dropout: 0.5}\n"
                       "data: {segments: 4, focus_segments: 6, input_size: 64, test_resize: 64, flip: false}\n",
    "adafocus_v1": "model: {method: adafocus_v1, num_classes: 10, glance: {arch: mobilenet_v2, resolution: 64}, "
                   "local: {arch: resnet18}, patch_size: 32, policy_grid: 7, policy_channels: 8, policy_hidden: 16, "
                   "classifier_hidden: 32}\n"
                   "data: {segments: 4, input_size: 64, test_resize: 64}\n",
    "adafocus_v1_tsm": "model: {method: adafocus_v1_tsm, num_classes: 10, glance: {arch: mobilenet_v2, tsm: true, "
                       "resolution: 64}, local: {arch: resnet18, tsm: true}, patch_size: 32, policy_channels: 8, "
                       "policy_hidden: 16}\n"
                       "data: {segments: 4, focus_segments: 6, input_size: 64, test_resize: 64, flip: false}\n",
}
OFFICIAL_TRAIN = "data: {scales: [1.0], batch_size: 4, workers: 1}\ntrain: {epochs: 1, lr: 0.01, eval_every: 1}\n"


def state_dict_entries(checkpoint):
    """The entries of a checkpoint dict that are state dicts (dicts of tensors)."""
    return {k: v for k, v in checkpoint.items()
            if isinstance(v, dict) and v and all(torch.is_tensor(t) for t in v.values())}


class OfficialExport(SharedFolder):
    """export --format official: official-layout checkpoints (reference.py's re-implemented official models) read and
    written back unchanged, and models trained here loaded strictly by the official model definitions."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.presets = {}
        for method, text in OFFICIAL_TINY.items():
            cls.presets[method] = cls.make_tiny(method + ".yaml", text + OFFICIAL_TRAIN, "--val", "4", "--seed", "2")

    def official_model(self, method):
        if method == "adafocus_v2_tsm":
            return reference.OfficialAdaFocusV2TSM(frames=4, focus_frames=6, classes=10, size=64, patch=32,
                                                   widths=(8, 16, 8)).eval()
        if method == "adafocus_v1":
            return reference.OfficialAdaFocusV1(classes=10, glance_size=64, channels=8, hidden=16, grid=7,
                                                classifier_hidden=32).eval()
        return reference.OfficialAdaFocusV1TSM(frames=4, focus_frames=6, classes=10, glance_size=64, channels=8,
                                               hidden=16).eval()

    def load_as_official(self, method, path):
        """The official model with the file loaded as the official scripts load it, strictly."""
        checkpoint = torch.load(path)
        model = self.official_model(method)
        if method == "adafocus_v2_tsm":  # main.py: the DataParallel model takes checkpoint['state_dict']
            model.load_state_dict({k[len("module."):]: v for k, v in checkpoint["state_dict"].items()}, strict=True)
            return model
        # The V1 stage scripts (main_dist.py, stage2.py, evaluate.py) load the parts; the model's own state loads too.
        model.load_state_dict(checkpoint["model_state_dict"], strict=True)
        model.glancer.load_state_dict(checkpoint["glancer"], strict=True)
        model.focuser.load_state_dict(checkpoint["focuser"], strict=True)
        model.classifier.load_state_dict(checkpoint["fc"], strict=True)
        model.focuser.policy.policy.load_state_dict(checkpoint["policy"], strict=True)
        model.focuser.policy.policy_old.load_state_dict(checkpoint["policy"], strict=True)
        self.assertEqual((checkpoint["epoch"], checkpoint["best_acc"]), (0, 0.0))  # read by the scripts too
        return model

    def export(self, method, checkpoint, out, *preset):
        self.ok("export", "--checkpoint", checkpoint, *preset, "--out", out)
        self.load_as_official(method, out)
        return out

    def test_official_checkpoints_export_unchanged(self):
        for method, name in [("adafocus_v2_tsm", "official_v2_tsm"), ("adafocus_v1", "official_v1"),
                             ("adafocus_v1_tsm", "official_v1_tsm")]:
            with self.subTest(method):
                official = os.path.join(REF, name + ".pth.tar")
                out = self.export(method, official, os.path.join(self.dir, name + "_exported.pth.tar"), "-c",
                                  self.presets[method])
                exported, original = state_dict_entries(torch.load(out)), state_dict_entries(torch.load(official))
                self.assertEqual(sorted(exported), sorted(original))
                for entry, state in original.items():
                    self.assertEqual(sorted(exported[entry]), sorted(state), entry)
                    for k, v in state.items():
                        self.assertTrue(torch.equal(exported[entry][k], v), entry + ": " + k)

    def test_v2_tsm_official_checkpoint_gives_the_official_outputs(self):
        # The re-implemented official model's logits on its checkpoint, ours on the same file: float32 rounding apart
        # (the official model itself in float32 differs from float64 by 2.7e-4 of the largest logit here).
        ours = os.path.join(self.dir, "v2_tsm_official_ours.pt")
        self.ok("predict", "--checkpoint", os.path.join(REF, "official_v2_tsm.pth.tar"), "-c",
                self.presets["adafocus_v2_tsm"], "--input-tensor", os.path.join(REF, "official_v2_tsm_clips.pt"),
                "--output", ours)
        expected = torch.load(os.path.join(REF, "official_v2_tsm_outputs.pt"))
        self.assertTrue(close(torch.load(ours)["logits"][:, 0], expected["logits"], rtol=1e-3))

    def test_models_trained_here_load_in_the_official_models(self):
        # A run started from the official checkpoint (--init) trains one epoch: weights and BatchNorm statistics
        # are ours. Its export loads strictly into the official model and predicts what our checkpoint does.
        torch.manual_seed(4)
        inputs = {"clip": torch.randn(2, 4, 3, 64, 64), "focus": torch.randn(2, 6, 3, 64, 64)}
        with_focus, clip_only = os.path.join(self.dir, "clip_focus.pt"), os.path.join(self.dir, "clip.pt")
        torch.save(inputs, with_focus)
        torch.save(inputs["clip"], clip_only)
        cases = [  # method, official file, its model entry, a head that training changes, training arguments
            ("adafocus_v2_tsm", "official_v2_tsm", "state_dict", "module.local_CNN.new_new_fc.weight", []),
            ("adafocus_v1", "official_v1", "model_state_dict", "classifier.fc.weight", ["stage=1"]),
            ("adafocus_v1_tsm", "official_v1_tsm", "model_state_dict", "classifier.weight", ["stage=1"])]
        for method, name, entry, head, stage in cases:
            with self.subTest(method):
                official = os.path.join(REF, name + ".pth.tar")
                run_dir = os.path.join(self.dir, "trained_" + method)
                self.ok("train", "-c", self.presets[method], "--data", self.data, "--out", run_dir, "--init", official,
                        *stage)
                ours = os.path.join(run_dir, "last.pt")
                out = self.export(method, ours, os.path.join(self.dir, method + "_trained.pth.tar"))
                self.assertFalse(torch.equal(torch.load(out)[entry][head], torch.load(official)[entry][head]))
                logits = []
                for checkpoint, preset in [(ours, []), (out, ["-c", self.presets[method]])]:
                    self.ok("predict", "--checkpoint", checkpoint, *preset, "--input-tensor",
                            with_focus if "tsm" in method else clip_only, "--output", checkpoint + ".logits.pt")
                    logits.append(torch.load(checkpoint + ".logits.pt")["logits"])
                self.assertTrue(torch.equal(logits[0], logits[1]))
                if method == "adafocus_v2_tsm":  # and the official model computes them
                    with torch.no_grad():
                        official_logits, _ = self.load_as_official(method, out)(inputs["clip"], inputs["focus"])
                    self.assertTrue(close(logits[0][:, 0], official_logits, rtol=1e-3))


def metrics_lines(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return f.read().splitlines()


class Methods(SharedFolder):
    """train, resume, eval, predict and flops of methods, on a tiny generated benchmark and a tiny AdaFocusV2."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.preset = cls.make_tiny("tiny_v2.yaml", TINY_V2, "--val", "4", "--seed", "5")
        cls.run_dir = os.path.join(cls.dir, "run")
        r = run("train", "-c", cls.preset, "--data", cls.data, "--out", cls.run_dir)
        assert r.returncode == 0, r.stderr
        cls.train_output = r.stdout + r.stderr

    def test_train_writes_run_folder(self):
        for f in ["config.yaml", "metrics.jsonl", "last.pt", "best.pt"]:
            self.assertTrue(os.path.exists(os.path.join(self.run_dir, f)), f)
        lines = [json.loads(line) for line in metrics_lines(self.run_dir)]
        self.assertEqual([m["epoch"] for m in lines], [0, 1])
        for m in lines:
            self.assertTrue(math.isfinite(m["train_loss"]))
            self.assertIn("val_top1", m)
            self.assertIn("val_iou", m)
        self.assertIn("epoch 2/2", self.train_output)  # the progress display
        self.assertIn("best val top1", self.train_output)
        # Python reads the checkpoint: a dict whose model is a state dict with the official names.
        ck = torch.load(os.path.join(self.run_dir, "last.pt"))
        self.assertIn("policy_stn.fc.0.weight", ck["state_dict"])
        self.assertEqual(ck["epoch"], 2)

    def test_killed_run_resumes_to_the_same_metrics(self):
        killed = os.path.join(self.dir, "killed")
        proc = subprocess.Popen([BINARY, "--threads", "2", "train", "-c", self.preset, "--data", self.data, "--out",
                                 killed], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill it mid-epoch 2, after a step checkpoint (train.checkpoint_every=1) of that epoch.
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            try:
                if len(metrics_lines(killed)) == 1 and torch.load(os.path.join(killed, "last.pt"))["batch"] >= 1:
                    break
            except (OSError, RuntimeError, KeyError):
                pass
            time.sleep(0.05)
        self.assertIsNone(proc.poll(), "the run ended before it could be killed")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.ok("train", "--resume", killed)
        def without_times(lines):  # every figure but the epochs' wall times
            return [{k: v for k, v in json.loads(line).items() if k != "epoch_s"} for line in lines]
        self.assertEqual(without_times(metrics_lines(killed)), without_times(metrics_lines(self.run_dir)))
        self.assertIn("--resume continues a run", run("train", "--resume", killed, "train.epochs=3").stderr)

    def test_calibrate_defaults_to_the_methods_official_criterion(self):
        # AdaFocusV2+: the official "confidence" (max raw logit); --criterion still chooses another.
        with tempfile.TemporaryDirectory() as d:
            for args, criterion in [((), "max_logit"), (("--criterion", "entropy"), "entropy")]:
                out = os.path.join(d, "exits.json")
                self.ok("calibrate", "--checkpoint", os.path.join(self.run_dir, "last.pt"), "--data", self.data,
                        "--out", out, *args)
                with open(out) as f:
                    self.assertEqual(json.load(f)["criterion"], criterion)

    def test_eval_json(self):
        out = json.loads(self.ok("eval", "--checkpoint", os.path.join(self.run_dir, "best.pt"), "--data", self.data,
                                 "--json"))
        self.assertEqual(out["videos"], 4)
        for key in ["top1", "top5", "mean_class_accuracy", "map", "gflops", "iou", "exit_gflops"]:
            self.assertIn(key, out)
        self.assertEqual(len(out["exit_gflops"]), 4)  # one exit per frame
        self.assertEqual(len(out["exit_top1"]), 4)
        self.assertAlmostEqual(out["exit_top1"][-1], out["top1"], places=9)
        # The exit-by-exit path skips the auxiliary heads that the official forward (and the papers' count) runs.
        self.assertLess(out["exit_gflops"][-1], out["gflops"])
        self.assertGreater(out["exit_gflops"][-1], 0.99 * out["gflops"])
        flops = json.loads(self.ok("flops", "-c", self.preset, "model.num_classes=10", "--json"))
        self.assertAlmostEqual(flops["gflops"], out["gflops"], places=9)
        per_class = out["per_class_top1"]  # named by classInd.txt; their mean is the mean class accuracy
        self.assertAlmostEqual(sum(per_class.values()) / len(per_class), out["mean_class_accuracy"], places=6)
        names = os.path.join(self.dir, "eval_names.txt")
        with open(os.path.join(self.data, "classInd.txt")) as f:
            count = len([line for line in f if line.strip()])
        with open(names, "w") as f:
            f.write("".join("c%d\n" % i for i in range(count)))
        renamed = json.loads(self.ok("eval", "--checkpoint", os.path.join(self.run_dir, "best.pt"), "--data",
                                     self.data, "--json", "--classes", names))
        self.assertEqual(sorted(renamed["per_class_top1"].values()), sorted(per_class.values()))
        self.assertTrue(all(k.startswith("c") for k in renamed["per_class_top1"]))
        swapped = json.loads(self.ok("eval", "--checkpoint", os.path.join(self.run_dir, "best.pt"), "--data",
                                     self.data, "--json", "--policy", "center"))
        self.assertEqual(swapped["policy"], "center")
        # Centred patches skip only the policy network: a little cheaper, the same networks otherwise.
        self.assertTrue(0.95 * out["gflops"] < swapped["gflops"] < out["gflops"], (swapped["gflops"], out["gflops"]))
        err = run("eval", "--checkpoint", os.path.join(self.run_dir, "best.pt"), "--data", self.data, "--list",
                  "nope.txt").stderr
        self.assertIn("nope.txt", err)

    def test_predict_json_and_visualization(self):
        video = os.path.join(self.data, "videos", "val_00001.mp4")
        gif = os.path.join(self.dir, "focus.gif")
        out = json.loads(self.ok("predict", "--checkpoint", os.path.join(self.run_dir, "last.pt"), video, "--json",
                                 "--top-k", "3", "--visualize", gif))
        self.assertEqual(len(out["top"]), 3)
        scores = [t["score"] for t in out["top"]]
        self.assertEqual(scores, sorted(scores, reverse=True))
        self.assertTrue(0 < scores[0] <= 1)
        with open(os.path.join(self.data, "classInd.txt")) as f:
            names = [line.split()[-1] for line in f if line.strip()]
        self.assertTrue(all(t["label"] in names for t in out["top"]), out["top"])
        self.assertEqual(len(out["regions"]), 4)  # a patch on each frame read
        for r in out["regions"]:
            self.assertEqual(set(r), {"frame", "x", "y", "w", "h"})
            self.assertTrue(0 <= r["frame"] < 8)
            self.assertTrue(0 <= r["x"] and r["x"] + r["w"] <= 64 + 1e-6 and r["w"] > 0)
        self.assertGreater(out["gflops"], 0)
        frames = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                                 "stream=nb_read_frames", "-of", "csv=p=0", gif], capture_output=True, text=True)
        self.assertEqual(frames.stdout.strip(), "4", frames.stderr)

    def test_bf16_runs_where_the_cpu_has_it_natively_or_when_emulation_is_asked(self):
        video, ck = os.path.join(self.data, "videos", "val_00001.mp4"), os.path.join(self.run_dir, "last.pt")

        def scores(*precision):
            r = run(*precision, "predict", "--checkpoint", ck, video, "--json", "--top-k", "10")
            self.assertEqual(r.returncode, 0, r.stderr)
            return [t["score"] for t in json.loads(r.stdout)["top"]], r.stderr

        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
        native = "avx512_bf16" in flags or "amx_bf16" in flags
        fp32, _ = scores()
        bf16, note = scores("--precision", "bf16")
        emulated, emulated_note = scores("--precision", "bf16-emulated")
        self.assertNotEqual(emulated, fp32)  # bf16 arithmetic did run
        if native:
            self.assertEqual(bf16, emulated)
            self.assertNotIn("note:", note + emulated_note)
        else:  # fp32 rather than a 2-4x slower emulation, and said so
            self.assertEqual(bf16, fp32)
            self.assertIn("no native bf16", note)
            self.assertIn("running in fp32", note)
            self.assertIn("emulated", emulated_note)

    def test_predict_raw_outputs_and_class_names(self):
        video = os.path.join(self.data, "videos", "val_00001.mp4")
        ck = os.path.join(self.run_dir, "last.pt")
        out = json.loads(self.ok("predict", "--checkpoint", ck, video, "--raw", "--top-k", "10"))
        raw = out["raw"]
        logits = torch.tensor(raw["logits"])
        self.assertEqual(logits.shape[0], 4)  # an exit per frame (4 segments)
        probs = torch.softmax(logits[-1], 0)
        self.assertAlmostEqual(out["top"][0]["score"], probs.max().item(), places=5)
        self.assertEqual(torch.tensor(raw["glance_logits"]).shape, logits.shape)
        self.assertEqual(torch.tensor(raw["local_logits"]).shape, logits.shape)
        actions = torch.tensor(raw["actions"])
        self.assertEqual(actions.shape, (4, 2))
        self.assertTrue(((actions >= 0) & (actions <= 1)).all())
        regions = torch.tensor(raw["regions_input"])  # x = col * (S - P), y = row * (S - P): S 64, P 24
        self.assertTrue(close(regions[:, 0], actions[:, 1] * 40) and close(regions[:, 1], actions[:, 0] * 40))
        names = os.path.join(self.dir, "names.txt")
        with open(os.path.join(self.data, "classInd.txt")) as f:
            count = len([line for line in f if line.strip()])
        with open(names, "w") as f:
            f.write("".join("%d renamed_%d\n" % (i + 1, i) for i in range(count)))
        out = json.loads(self.ok("predict", "--checkpoint", ck, video, "--json", "--classes", names))
        self.assertTrue(out["top"][0]["label"].startswith("renamed_"))
        with open(names, "w") as f:
            f.write("1 only\n")
        r = run("predict", "--checkpoint", ck, video, "--classes", names)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("1 class names for a model of %d classes" % count, r.stderr)

    def test_predict_on_a_tensor_matches_the_official_model(self):
        # The re-implemented official model's checkpoint and outputs (reference.py): a whole model on a prepared clip.
        preset = os.path.join(self.dir, "official_v2.yaml")
        with open(preset, "w") as f:
            f.write("model: {method: adafocus_v2, num_classes: 5, glance: {arch: mobilenet_v2, resolution: 64}, "
                    "local: {arch: resnet18}, patch_size: 32, policy_hidden: 64, classifier_hidden: 4096}\n"
                    "data: {segments: 4, input_size: 64}\n")
        out = os.path.join(self.dir, "official_outputs.pt")
        self.ok("predict", "--checkpoint", os.path.join(REF, "official_v2.pth.tar"), "-c", preset,
                "--input-tensor", os.path.join(REF, "official_v2_clips.pt"), "--output", out)
        got = torch.load(out)
        self.assertTrue(close(got["logits"], torch.load(os.path.join(REF, "official_v2_logits.pt"))))
        actions = torch.load(os.path.join(REF, "official_v2_actions.pt"))  # (B*T, 2) as (row, col)
        self.assertTrue(close(got["regions"].reshape(-1, 4)[:, 0], actions[:, 1] * 32))
        bad = os.path.join(self.dir, "bad_clip.pt")
        torch.save(torch.zeros(4, 64, 64), bad)
        r = run("predict", "--checkpoint", os.path.join(REF, "official_v2.pth.tar"), "-c", preset, "--input-tensor",
                bad, "--output", out)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("bad_clip.pt", r.stderr)

    def test_predict_bad_input(self):
        ck = os.path.join(self.run_dir, "last.pt")
        err = run("predict", "--checkpoint", ck, os.path.join(self.dir, "missing.mp4")).stderr
        self.assertIn("missing.mp4", err)
        notes = os.path.join(self.dir, "notes.txt")
        with open(notes, "w") as f:
            f.write("hello")
        self.assertIn("notes.txt", run("predict", "--checkpoint", notes, "x.mp4").stderr)
        err = run("predict", "--checkpoint", ck, os.path.join(self.data, "videos", "val_00000.mp4"), "--set",
                  "model.classifier_hidden=64").stderr
        self.assertIn("weights do not fit the model", err)

    def test_paper_preset_without_imagenet_weights_stops_with_a_hint(self):
        out = os.path.join(self.dir, "no_weights")
        r = run("train", "-c", "activitynet_v2", "--data", self.data, "--out", out)
        self.assertNotEqual(r.returncode, 0)
        for text in ["model.glance.weights is not set", "mobilenet_v2.pth.tar", "convert-weights --arch mobilenet_v2",
                     "model.from_scratch=true", "activitynet_v2:8"]:
            self.assertIn(text, r.stderr)
        self.assertFalse(os.path.exists(out))  # refused before anything is written
        r = run("train", "-c", "sthv1_v2_tsm", "--data", self.data, "--out", out, "model.glance.weights=x.pth")
        self.assertIn("model.local.weights is not set", r.stderr)
        self.assertIn("resnet50", r.stderr)

    def test_paper_presets_flops(self):
        for preset, expected in [("activitynet_v2", 27.0), ("sthv1_v2_tsm", 18.5)]:
            out = json.loads(self.ok("flops", "-c", preset, "--json"))
            self.assertAlmostEqual(out["gflops"], expected, delta=0.05)

    def test_v3_presets_flops_are_the_papers_networks(self):
        # The paper gives only early-exit averages; its networks' share of the no-exit cost follows from the official
        # per-frame constants: MobileNetV2@224 on every glance frame, ResNet-50@P on every frame of every cube.
        mbv2, r50 = 0.299511328, {96: 0.750725056, 128: 1.334601664}
        for preset, glance, cube_frames, p in [("activitynet_v3", 18, 18, 128), ("activitynet_v3_p96", 18, 18, 96),
                                               ("sthv1_v3_tsm", 8, 24, 128)]:
            out = json.loads(self.ok("flops", "-c", preset, "--json", "--verbose"))
            part = lambda prefix: sum(l["macs"] for l in out["layers"] if l["name"].startswith(prefix)) * 1e-9
            self.assertAlmostEqual(part("global_CNN."), glance * mbv2, delta=1e-6)
            self.assertAlmostEqual(part("local_CNN."), cube_frames * r50[p], delta=1e-6)
            self.assertAlmostEqual(out["exits"][-1], out["gflops"], delta=1e-9)  # V3 runs no auxiliary head
            # p_0 comes before any cube: the glance, the policy and the classifier, but none of the local network.
            self.assertLessEqual(out["exits"][0], out["gflops"] - part("local_CNN.") + 1e-9)

    def test_item_pretraining_repeats_with_the_seed(self):
        # Each run is a new process: LibTorch seeds its default generator at random, so the seed must come first.
        paths = [os.path.join(self.dir, f"items{i}.pth") for i in range(2)]
        for p in paths:
            self.ok("pretrain-items", "-c", "benchmark/adafocus_v2", "--images", "256", "--epochs", "1", "--out", p)
        a, b = (torch.load(p) for p in paths)
        self.assertEqual(a.keys(), b.keys())
        for k in a:
            self.assertTrue(torch.equal(a[k], b[k]), k)
        # Items are single images: a TSM network pretrains without its shift, as its plain twin does (same weights).
        frames = [os.path.join(self.dir, f"frame_{p}.pth") for p in ["full_frame_full_res", "full_frame_tsm"]]
        for p, preset in zip(frames, ["full_frame_full_res", "full_frame_tsm"]):
            self.ok("pretrain-items", "-c", "benchmark/" + preset, "--section", "backbone", "--images", "256",
                    "--epochs", "1", "--out", p)
        plain, shifted = (torch.load(p) for p in frames)
        for k in plain:
            self.assertTrue(torch.equal(plain[k], shifted[k]), k)

    def test_adafocus_v1_trains_in_stages(self):
        preset = os.path.join(self.dir, "tiny_v1.yaml")
        with open(preset, "w") as f:
            f.write(TINY_V1)
        out = os.path.join(self.dir, "v1")
        r = run("train", "-c", preset, "--data", self.data, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        for s in range(4):
            self.assertEqual(torch.load(os.path.join(out, f"stage{s}", "last.pt"))["epoch"], 2 if s == 2 else 1)
        self.assertIn("reward", r.stderr)  # PPO's running reward on the progress line of stage 2
        ppo = [json.loads(line) for line in metrics_lines(os.path.join(out, "stage2"))]
        self.assertTrue(all("ppo_entropy" in m and "val_top1" in m for m in ppo), ppo)
        # Python reads the model under the official names.
        state = torch.load(os.path.join(out, "stage3", "last.pt"))["state_dict"]
        self.assertIn("focuser.policy.policy.actor.0.weight", state)
        self.assertIn("classifier.gru.weight_ih_l0", state)
        # One stage alone: from the previous stage's checkpoint, and a clear error without it.
        one = os.path.join(self.dir, "v1_stage3")
        err = run("train", "-c", preset, "--data", self.data, "--out", one, "stage=3").stderr
        self.assertIn("stage 3 starts from the model of stage 2", err)
        self.assertIn("--init RUN/stage2/last.pt", err)
        err = run("train", "-c", preset, "--data", self.data, "--out", one, "stage=3", "--init",
                  os.path.join(out, "stage1", "last.pt")).stderr
        self.assertIn("a checkpoint of stage 1: stage 3 starts from stage 2's", err)
        self.ok("train", "-c", preset, "--data", self.data, "--out", one, "stage=3", "--init",
                os.path.join(out, "stage2", "last.pt"))
        scores = json.loads(self.ok("eval", "--checkpoint", os.path.join(one, "last.pt"), "--json"))
        self.assertTrue(0 <= scores["top1"] <= 100 and scores["gflops"] > 0, scores)
        # The same model in the official V1 checkpoint's form (main_dist.py's dict: DataParallel's 'module.' names in
        # model_state_dict, the PPO's policy_old copy, optimizer and scaler entries) gives the same outputs.
        official = os.path.join(self.dir, "official_v1.pth.tar")
        state = {"module." + k: v for k, v in ck_state(os.path.join(one, "last.pt")).items()}
        for k in list(state):
            if k.startswith("module.focuser.policy.policy."):
                state[k.replace(".policy.policy.", ".policy.policy_old.")] = state[k].clone()
        torch.save({"model_state_dict": state, "epoch": 10, "best_acc": 50.0, "scaler": None,
                    "optimizer": {"state": {}, "param_groups": [{"lr": 0.005, "params": [0, 1]}]}}, official)
        clip = os.path.join(self.dir, "v1_clip.pt")
        torch.manual_seed(0)
        torch.save(torch.randn(2, 4, 3, 64, 64), clip)
        ours, theirs = os.path.join(self.dir, "v1_ours.pt"), os.path.join(self.dir, "v1_official.pt")
        self.ok("predict", "--checkpoint", os.path.join(one, "last.pt"), "--input-tensor", clip, "--output", ours)
        self.ok("predict", "--checkpoint", official, "-c", preset, "--set", "model.num_classes=10", "--input-tensor", clip,
                "--output", theirs)
        self.assertTrue(torch.equal(torch.load(ours)["logits"], torch.load(theirs)["logits"]))

    def tiny_demo(self, out_dir, methods=(), calibration_videos=8):
        """`adafocus demo` on 16 training and 8 val videos for one epoch; its output and results.json by method."""
        r = run("demo", "--out", out_dir, *(["--methods", ",".join(methods)] if methods else []), "--train-videos",
                "16", "--val-videos", "8", "--epochs", "1", "--pretrain-images", "256", "--calibration-videos",
                str(calibration_videos), "--set", "data.batch_size=8")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out_dir, "results.json")) as f:
            return r, {row["method"]: row for row in json.load(f)}

    def test_demo_smoke(self):
        out_dir = os.path.join(self.dir, "demo")
        r, rows = self.tiny_demo(out_dir)
        for m in ["adafocus_v2", "adafocus_v3", "random_patch", "full_frame_low_res", "full_frame_full_res"]:
            self.assertIn(m, rows)
            self.assertTrue(os.path.exists(os.path.join(out_dir, m + ".pt")), m)
            self.assertTrue(0 <= rows[m]["top1"] <= 100)
        self.assertIn("iou", rows["adafocus_v2"])
        self.assertNotIn("iou", rows["full_frame_full_res"])
        # Exits: V2 has none for the glance alone (index 0), V3 does; both have a budget curve of counted GFLOPs.
        self.assertIsNone(rows["adafocus_v2"]["top1_per_exit"][0])
        self.assertEqual(len(rows["adafocus_v2"]["top1_per_exit"]), 9)
        self.assertEqual(len(rows["adafocus_v3"]["top1_per_exit"]), 9)
        for m in ["adafocus_v2", "adafocus_v3"]:
            curve = rows[m]["curve"]
            self.assertGreater(len(curve), 1)
            self.assertTrue(all(set(p) >= {"budget", "gflops", "top1"} for p in curve), curve)
            self.assertLessEqual(max(p["gflops"] for p in curve), rows[m]["gflops"] * (1 + 1e-6))
        self.assertNotIn("curve", rows["random_patch"])
        self.assertLess(rows["adafocus_v2"]["gflops"], rows["full_frame_full_res"]["gflops"] / 3)
        self.assertIn("Claims on this run", r.stdout)
        with open(os.path.join(out_dir, "accuracy_vs_gflops.svg")) as f:
            self.assertIn("<svg", f.read())
        self.assertTrue(os.path.getsize(os.path.join(out_dir, "focus.gif")) > 0)
        # Every trained row carries its training time; AdaFocus V1 and its stage-1 model (evaluated with random
        # patches) are rows on request, V1's time counting all its stages, the stage-1 row's stages 0-1.
        self.assertTrue(all(rows[m]["train_s"] > 0 for m in ["adafocus_v2", "adafocus_v3", "random_patch"]), rows)
        r, rows = self.tiny_demo(out_dir, ["adafocus_v1_stage1", "adafocus_v1"])
        self.assertGreater(rows["adafocus_v1"]["train_s"], rows["adafocus_v1_stage1"]["train_s"])
        self.assertIn("iou", rows["adafocus_v1_stage1"])
        self.assertEqual(len(rows["adafocus_v1"]["top1_per_exit"]), 9)
        self.assertIn("beats its own stage-1 random-patch model", r.stdout)

    def test_adafuse_in_the_demo_eval_and_bench(self):
        out_dir = os.path.join(self.dir, "demo_adafuse")
        r, rows = self.tiny_demo(out_dir, ["adafuse_tsm", "full_frame_tsm"], calibration_videos=0)
        fuse = rows["adafuse_tsm"]
        self.assertAlmostEqual(fuse["kept"] + fuse["reused"] + fuse["skipped"], 1.0, places=6)
        self.assertGreater(fuse["skipped"], 0)
        self.assertGreater(fuse["speedup"], 0)
        self.assertNotIn("speedup", rows["full_frame_tsm"])
        self.assertIn("kept/reused/skipped", r.stdout)
        self.assertIn("adafuse_tsm cuts full_frame_tsm's GFLOPs", r.stdout)
        model = os.path.join(out_dir, "adafuse_tsm.pt")
        ev = json.loads(self.ok("eval", "--checkpoint", model, "--json"))
        self.assertLess(ev["gflops"], ev["dense_gflops"])  # counted from each video's gates
        video = os.path.join(out_dir, "data_motion", "frames", sorted(os.listdir(os.path.join(out_dir, "data_motion",
                                                                                               "frames")))[0])
        pred = json.loads(self.ok("predict", "--checkpoint", model, video, "--json"))
        self.assertLess(pred["gflops"], pred["full_gflops"])  # this video's own cost, not the dense one
        self.assertAlmostEqual(ev["kept"] + ev["reused"] + ev["skipped"], 1.0, places=6)
        def bench(*args):
            return json.loads(self.ok("bench", *args, "--videos", "4", "--batch", "2", "--rounds", "1", "--warmup", "1",
                                      "--json"))
        for out in [bench("--checkpoint", model),  # trained, and untrained from the preset alone
                    bench("-c", "benchmark/adafuse_tsn", "--data", os.path.join(out_dir, "data_motion"))]:
            v = {v["name"]: v for v in out["variants"]}
            self.assertEqual(list(v), ["gated channels only", "frame by frame", "batched union", "gates, dense compute",
                                       "dense baseline"])
            self.assertLess(v["gated channels only"]["gflops"], v["gates, dense compute"]["gflops"])
            self.assertGreater(v["gated channels only"]["videos_per_second"], 0)

    def test_sweep_quick(self):
        out_dir = os.path.join(self.dir, "sweep")
        r = run("sweep", "--quick", "--out", out_dir, "--train-videos", "16", "--val-videos", "8", "--epochs", "2",
                "--pretrain-images", "256", "--set", "data.batch_size=8", "--set", "train.policy_from_epoch=1")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out_dir, "sweep.json")) as f:
            sweep = json.load(f)
        self.assertEqual([c["name"] for c in sweep["cells"]], ["default_seed0", "hard_seed0"])
        rows = {(row["setting"], row["method"]): row for row in sweep["rows"]}
        for setting in ["default", "hard"]:
            for m in ["adafocus_v2", "adafocus_v3", "v3_pixel_gradient", "random_patch", "full_frame_low_res"]:
                row = rows[(setting, m)]
                self.assertTrue(0 <= row["top1"] <= 100 and row["gflops"] > 0, row)
                # Every network starts pretrained on items: the patch methods' glance too, the baseline's frame network.
                for network in (["backbone"] if m == "full_frame_low_res" else ["local", "glance"]):
                    self.assertTrue(0 < row["items_top1_" + network] <= 100, row)
            v2 = rows[(setting, "adafocus_v2")]
            # The training log of the policy's epoch: where it looked and how much gradient reached it.
            self.assertTrue(0 <= v2["train_iou"] <= v2["train_hits"] <= 1, v2)
            self.assertGreater(v2["policy_grad"], 0)
            self.assertIn("glance_top1", v2)
            self.assertIn("iou", rows[(setting, "random_patch")])
        # The hard setting really draws smaller items (meta.jsonl: the item's box in every frame, 128 px frames).
        def item_sides(cell):
            with open(os.path.join(out_dir, cell, "data", "meta.jsonl")) as f:
                return [max(box[2], box[3]) for line in f for box in json.loads(line)["boxes"]]
        self.assertLessEqual(max(item_sides("hard_seed0")), 32.5)
        self.assertGreaterEqual(min(item_sides("default_seed0")), 31.5)
        # The claims per cell, recomputed from the rows.
        for c in sweep["cells"]:
            row = lambda m: rows[(c["setting"], m)]
            random = row("random_patch")
            for m in ["adafocus_v2", "adafocus_v3"]:
                self.assertEqual(c["claims"][m], row(m)["top1"] - random["top1"] >= 5 and
                                 row(m)["iou"] >= 2 * random["iou"], (c, m))
            self.assertEqual(c["claims"]["above_low_res"], max(row("adafocus_v2")["top1"], row("adafocus_v3")["top1"])
                             >= row("full_frame_low_res")["top1"])
            exits = lambda m: sum(row(m)["top1_per_exit"][1:5]) / 4
            self.assertEqual(c["claims"]["feature_gradient"], exits("adafocus_v3") >= exits("v3_pixel_gradient"))
        self.assertIn("Claims per cell", r.stdout)
        # Two threads here: the two cells ran side by side as child processes, each writing its own log.
        self.assertEqual(sweep["jobs"], 2)
        for cell in ["default_seed0", "hard_seed0"]:
            with open(os.path.join(out_dir, cell, "demo.log")) as f:
                self.assertIn("adafocus_v2: top-1", f.read())
        # One at a time in this process: the finished steps are kept, the same table comes back.
        again = run("sweep", "--quick", "--jobs", "1", "--out", out_dir, "--train-videos", "16", "--val-videos", "8",
                    "--epochs", "2", "--pretrain-images", "256", "--set", "data.batch_size=8",
                    "--set", "train.policy_from_epoch=1")
        self.assertEqual(again.returncode, 0, again.stderr)
        def table(out):  # the sweep's table (in-process, each cell's demo prints its own before it)
            return out[out.rindex("\nsetting "):out.index("Claims per cell")]
        self.assertEqual(table(again.stdout), table(r.stdout))
        self.assertIn("unknown setting 'nope'", run("sweep", "--settings", "nope", "--out", out_dir).stderr)
        # A failing cell names itself and shows its error; the sweep exits non-zero.
        bad = run("sweep", "--quick", "--out", os.path.join(self.dir, "bad_sweep"), "--set", "nope.key=1")
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("2 of 2 cells failed: default_seed0, hard_seed0", bad.stderr)
        self.assertIn("unknown key 'nope.key'", bad.stderr)


TINY_FULL_FRAME = """model:
  method: full_frame
  backbone: {arch: resnet10, base_width: 4, stem: small}
  from_scratch: true
  dropout: 0.0
data: {segments: 4, input_size: 64, test_resize: 64, scales: [1.0], batch_size: 8, workers: 1}
train: {epochs: 2, optimizer: sgd, lr: 0.05, schedule: cosine, eval_every: 1, metric: top1, sync_bn: true}
"""


def rank_pid(parent, rank):
    """The process of `rank` among the children `adafocus train --nproc` started (their RANK variable)."""
    for pid in subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"RANK={rank}".encode() in f.read().split(b"\0"):
                    return int(pid)
        except OSError:
            pass
    return None


class Distributed(SharedFolder):
    """Data-parallel training on loopback: --nproc and torchrun, equal to one process, faults named."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.preset = cls.make_tiny("tiny_full_frame.yaml", TINY_FULL_FRAME, "--val", "6", "--seed", "5")

    def train(self, out, *args, threads=2):
        r = run("train", "-c", self.preset, "--data", self.data, "--out", os.path.join(self.dir, out), *args,
                threads=threads)
        self.assertEqual(r.returncode, 0, r.stderr)
        return os.path.join(self.dir, out)

    def assert_same_parameters(self, a, b, rtol):
        sa, sb = ck_state(os.path.join(a, "last.pt")), ck_state(os.path.join(b, "last.pt"))
        self.assertEqual(sa.keys(), sb.keys())
        for k in sa:
            if sa[k].is_floating_point():
                self.assertTrue(close(sb[k], sa[k], rtol), f"{k}: {(sb[k] - sa[k]).abs().max()}")

    def test_two_processes_train_as_one_with_their_batch(self):
        # 2 processes x 4 videos with synchronised BatchNorm and no dropout: the same steps as 1 process x 8.
        # Measured: parameters within 2e-6 of the largest after 4 steps; the validation identical.
        one = self.train("one", threads=2)
        two = self.train("two", "--nproc", "2")
        self.assert_same_parameters(one, two, 1e-4)
        lines = [[json.loads(line) for line in metrics_lines(d)] for d in (one, two)]
        for a, b in zip(*lines):
            for key in ["val_top1", "val_top5", "val_map", "train_top1"]:
                self.assertAlmostEqual(a[key], b[key], places=6, msg=key)
            self.assertAlmostEqual(a["train_loss"], b["train_loss"], places=5)
            self.assertEqual(b["processes"], 2)
            self.assertGreater(b["allreduce_mb_per_step"], 0)
        # Launched by torchrun (Debian's python3-torch ships it) the processes do the same arithmetic. Debian 12's
        # torchrun (PyTorch 1.13 on Python 3.11) fails in its own output redirection unless --redirects and --tee
        # are given a non-zero value.
        launched = os.path.join(self.dir, "torchrun")
        r = subprocess.run(["/usr/bin/python3", "-m", "torch.distributed.run", "--nproc_per_node", "2", "--redirects",
                            "1", "--tee", "1", "--no_python", BINARY, "train", "-c", self.preset, "--data", self.data,
                            "--out", launched], capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_same_parameters(two, launched, 1e-5)  # 1 thread per process here, 2 above

    def test_validation_gathered_from_the_processes_equals_one_process(self):
        # AdaFocusV2 (regions, IoU) trained by 2 processes; its last validation, sharded over them and gathered,
        # against a single-process evaluation of the same weights.
        preset = os.path.join(self.dir, "tiny_v2.yaml")
        with open(preset, "w") as f:
            f.write(TINY_V2)
        out = os.path.join(self.dir, "v2")
        r = run("train", "--nproc", "2", "-c", preset, "--data", self.data, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        last = json.loads(metrics_lines(out)[-1])
        alone = json.loads(self.ok("eval", "--checkpoint", os.path.join(out, "last.pt"), "--data", self.data, "--json"))
        self.assertEqual(alone["videos"], 6)
        self.assertAlmostEqual(last["val_top1"], alone["top1"], places=4)
        self.assertAlmostEqual(last["val_map"], alone["map"], places=3)
        self.assertAlmostEqual(last["val_iou"], alone["iou"], places=4)

    def run_and_stop_rank(self, out, stop, timeout, epochs):
        """Starts 2 processes, sends `stop` to rank 1 once an epoch is done; returns (result, seconds after)."""
        proc = subprocess.Popen([BINARY, "train", "--nproc", "2", "--timeout", str(timeout), "-c", self.preset,
                                 "--data", self.data, "--out", out, f"train.epochs={epochs}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(os.path.join(out, "metrics.jsonl")):
                break
            time.sleep(0.05)
        pid = rank_pid(proc.pid, 1)
        self.assertIsNotNone(pid, "the run ended before rank 1 could be stopped")
        os.kill(pid, stop)
        stopped = time.time()
        _, stderr = proc.communicate(timeout=timeout + 60)
        return proc.returncode, stderr, time.time() - stopped

    def test_a_killed_rank_is_named_and_the_run_resumes(self):
        out = os.path.join(self.dir, "killed")
        code, stderr, seconds = self.run_and_stop_rank(out, signal.SIGKILL, 20, 40)
        self.assertNotEqual(code, 0)
        self.assertIn("rank 1 of 2 was killed by signal 9", stderr)
        self.assertIn("rank 1 stopped responding", stderr)  # rank 0's own message names it
        self.assertLess(seconds, 20, stderr)  # a closed connection is seen at once, before the timeout
        done = len(metrics_lines(out))
        self.assertEqual(torch.load(os.path.join(out, "last.pt"))["epoch"], done)  # the last checkpoint intact
        # Resumed with another number of processes, it runs to the end.
        self.ok("train", "--resume", out, "--nproc", "1")
        self.assertEqual([json.loads(line)["epoch"] for line in metrics_lines(out)], list(range(40)))

    def test_a_stopped_rank_is_named_after_the_timeout(self):
        out = os.path.join(self.dir, "stopped")
        code, stderr, seconds = self.run_and_stop_rank(out, signal.SIGSTOP, 4, 40)
        self.assertNotEqual(code, 0)
        self.assertIn("rank 1 stopped responding", stderr)
        self.assertIn("still running", stderr)  # then killed by --nproc's process
        self.assertLess(seconds, 4 + 10 + 15, stderr)

    def test_bad_launches_are_refused(self):
        r = run("train", "--nproc", "2", "-c", self.preset, "--data", self.data, "--out",
                os.path.join(self.dir, "odd"), "data.batch_size=3")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("data.batch_size 3 (the batch of all processes) does not split over 2 processes", r.stderr)
        env = dict(os.environ, RANK="0", WORLD_SIZE="2")
        r = subprocess.run([BINARY, "train", "--nproc", "2", "-c", self.preset, "--data", self.data, "--out",
                            os.path.join(self.dir, "nested")], capture_output=True, text=True, env=env, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--nproc inside a job", r.stderr)


class AdaptiveInference(SharedFolder):
    """calibrate, eval with thresholds, predict --budget and bench, on a tiny AdaFocusV3."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        preset = cls.make_tiny("tiny_v3.yaml", TINY_V3, "--val", "6", "--calib", "12", "--seed", "7")
        cls.run_dir = os.path.join(cls.dir, "run")
        r = run("train", "-c", preset, "--data", cls.data, "--out", cls.run_dir, "train.eval_every=0",
                "train.eval_last=0")
        assert r.returncode == 0, r.stderr
        cls.plain = os.path.join(cls.run_dir, "last.pt")  # no thresholds
        cls.model = os.path.join(cls.dir, "model.pt")
        with open(cls.plain, "rb") as a, open(cls.model, "wb") as b:
            b.write(a.read())
        cls.exits = json.loads(run("flops", "-c", preset, "model.num_classes=10", "--json").stdout)["exits"]
        cls.table = os.path.join(cls.dir, "exits.json")
        # Budgets between the exits' costs, so that videos leave at several exits.
        cls.budgets = [(cls.exits[1] + cls.exits[2]) / 2, (cls.exits[2] + cls.exits[4]) / 2]
        r = run("calibrate", "--checkpoint", cls.model, "--list", "calib.txt", "--budgets",
                ",".join(str(b) for b in cls.budgets), "--out", cls.table, "--embed")
        assert r.returncode == 0, r.stderr

    def test_exit_costs_are_counted_on_the_exit_by_exit_path(self):
        self.assertEqual(len(self.exits), 5)  # the glance alone, then one per frame-wise cube
        self.assertTrue(all(a < b for a, b in zip(self.exits, self.exits[1:])), self.exits)

    def test_counted_gflops_equal_the_expectation_on_the_calibration_set(self):
        with open(self.table) as f:
            table = json.load(f)
        self.assertEqual(table["criterion"], "entropy")
        self.assertEqual([b["budget"] for b in table["budgets"]], self.budgets)
        self.assertAlmostEqual(table["exit_gflops"][-1], self.exits[-1], places=12)
        out = json.loads(self.ok("eval", "--checkpoint", self.model, "--thresholds", self.table, "--list",
                                 "calib.txt", "--json"))
        self.assertEqual(len(out["curve"]), 2)
        for point, fitted in zip(out["curve"], table["budgets"]):
            self.assertLessEqual(fitted["gflops"], fitted["budget"] * (1 + 1e-9))
            # Counted as the batches ran, exit by exit, and the fitted expectation: the same on the same videos.
            self.assertAlmostEqual(point["gflops"], point["expected_gflops"], delta=1e-9 * point["gflops"])
            self.assertAlmostEqual(point["top1"], fitted["top1"], places=6)
            self.assertAlmostEqual(sum(point["exit_proportions"]), 1.0, places=9)
        self.assertLess(out["curve"][0]["gflops"], out["curve"][1]["gflops"])
        # On other videos the cost follows the budget without equalling the expectation exactly.
        val = json.loads(self.ok("eval", "--checkpoint", self.model, "--budget", str(self.budgets[0]), "--json"))
        self.assertLess(val["curve"][0]["gflops"], self.exits[-1])

    def test_predict_stops_early_under_a_budget(self):
        video = os.path.join(self.data, "videos", "val_00001.mp4")
        tiny = json.loads(self.ok("predict", "--checkpoint", self.model, video, "--budget", "1e-9", "--json"))
        self.assertLessEqual(tiny["exit"], 1)
        self.assertEqual(tiny["exits"], 5)
        self.assertAlmostEqual(tiny["gflops"], self.exits[tiny["exit"]], delta=1e-9)
        self.assertLess(tiny["gflops"], tiny["full_gflops"])
        self.assertEqual(len(tiny["regions"]), tiny["exit"])  # one frame-wise cube per exit after the glance
        whole = json.loads(self.ok("predict", "--checkpoint", self.model, video, "--budget", "1e9", "--json"))
        self.assertGreaterEqual(whole["exit"], tiny["exit"])
        frames = [r["frame"] for r in whole["regions"]]
        self.assertEqual(len(frames), len(set(frames)))  # no frame processed twice
        text = self.ok("predict", "--checkpoint", self.model, video, "--budget", "1e-9")
        self.assertIn("stopped after exit", text)

    def test_budget_without_thresholds_is_an_error_with_a_hint(self):
        r = run("predict", "--checkpoint", self.plain, os.path.join(self.data, "videos", "val_00001.mp4"),
                "--budget", "0.01")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("calibrate", r.stderr)
        r = run("eval", "--checkpoint", self.plain, "--budget", "0.01")
        self.assertIn("no early-exit thresholds", r.stderr)
        self.assertIn("nowhere to write", run("calibrate", "--checkpoint", self.plain).stderr)

    def test_bench_reports_speed_beside_gflops(self):
        out = json.loads(self.ok("bench", "--checkpoint", self.model, "--videos", "4", "--batch", "2", "--rounds", "1",
                                 "--warmup", "1", "--json"))
        names = [v["name"] for v in out["variants"]]
        self.assertEqual(names, ["early exits", "no early exit", "full frame"])
        for v in out["variants"]:
            self.assertGreater(v["videos_per_second"], 0)
            self.assertLessEqual(v["latency_p50_ms"], v["latency_p90_ms"])
        full = out["variants"][-1]
        self.assertAlmostEqual(full["gflops_ratio"], 1.0)
        self.assertLess(out["variants"][1]["gflops"], full["gflops"])
        self.assertLessEqual(out["variants"][0]["gflops"], out["variants"][1]["gflops"])
        self.assertGreater(out["decode_ms_per_video"], 0)


class Speed(BinaryTest):
    def test_compare_python_checks_agreement_and_writes_the_ratios(self):
        with tempfile.TemporaryDirectory() as d:
            text = self.ok("bench", "--compare-python", "--tiny", "--out", d, "--rounds", "1", "--warmup", "1")
            self.assertIn("PyTorch ms", text)
            with open(os.path.join(d, "compare.json")) as f:
                out = json.load(f)
            for key in ["v2_speedup_over_gflops_ratio", "inference_vs_python", "training_vs_python", "bf16_vs_fp32",
                        "v2_ms_b1", "tsn_ms_b8"]:
                self.assertGreater(out[key], 0, key)
            self.assertEqual(len(out["cases"]), 8)
            # AdaFocusV3 with early exit at two budgets: the same exits and logits as PyTorch's (checked by adafocus),
            # the lower budget counting fewer GFLOPs per video.
            self.assertLess(out["cases"]["v3_exit_b8_top50"]["counted_gflops_per_video"],
                            out["cases"]["v3_exit_b8_top25"]["counted_gflops_per_video"])
            for name, case in out["cases"].items():
                self.assertLessEqual(case["max_abs_difference"], 1e-3, name)
            # Our realised speed against our dense networks: AdaFuse's gates save GFLOPs, V3's forced exits put the
            # 16 videos where the budgets say, the quarter below the half.
            for key in ["adafuse_speedup_over_gflops_ratio_b1", "adafuse_speedup_over_gflops_ratio_b8",
                        "v3_speedup_over_gflops_ratio_b1", "v3_speedup_over_gflops_ratio_b8", "glance_speedup"]:
                self.assertGreater(out[key], 0, key)
            speed = out["speed_cases"]
            # The glance's oneDNN chain computes what its LibTorch layers compute.
            self.assertLess(speed["glance_b16"]["max_relative_difference"], 1e-4)
            for name in ["adafuse_tsn_r50_b1", "adafuse_tsm_r50_b8"]:
                self.assertLess(speed[name]["gflops"], speed[name]["dense_gflops"], name)
            for batch in [1, 8]:
                half, quarter = speed["v3_budget_half_b%d" % batch], speed["v3_budget_quarter_b%d" % batch]
                self.assertEqual(sum(half["videos_per_exit"]), 16)
                self.assertLessEqual(half["gflops"], 0.5 * half["no_exit_gflops"] + 1e-9)
                self.assertLess(quarter["gflops"], half["gflops"])
            # --speed-only runs that part alone, without PyTorch, into speed.json.
            self.ok("bench", "--compare-python", "--speed-only", "--tiny", "--out", d, "--rounds", "1", "--warmup", "1")
            with open(os.path.join(d, "speed.json")) as f:
                alone = json.load(f)
            self.assertEqual(set(alone["speed_cases"]), set(speed))
            self.assertNotIn("cases", alone)
            # A model that computes something else shows: a wrong weight file gives a large difference.
            work = os.path.join(d, "compare")
            broken = os.path.join(work, "v2_p128_b1.pth")
            state = torch.load(broken)
            state["classifier.classifiers.0.1.bias"] += 1
            torch.save(state, broken)
            out = os.path.join(work, "broken.json")
            subprocess.run(["/usr/bin/python3", os.path.join(os.path.dirname(__file__), "..", "..", "bench",
                                                             "python_reference.py"),
                            os.path.join(work, "v2_p128_b1.json"), out], check=True, capture_output=True)
            with open(out) as f:
                self.assertGreater(json.load(f)["cases"]["v2_p128_b1"]["max_abs_difference"], 0.5)
            # ... and adafocus refuses to time models that disagree (a stand-in reference reporting a difference).
            fake = os.path.join(d, "fake.py")
            with open(fake, "w") as f:
                f.write("import json, sys\nspec = json.load(open(sys.argv[1]))\n"
                        "json.dump({'torch': 'x', 'cases': {c['name']: {'max_abs_difference': 0.5, 'seconds': [1.0]}"
                        " for c in spec['cases']}}, open(sys.argv[2], 'w'))\n")
            r = run("bench", "--compare-python", "--tiny", "--out", d, "--rounds", "1", "--warmup", "1",
                    "--python-script", fake)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("differ by 0.5", r.stderr)

if __name__ == "__main__":
    torch.set_num_threads(2)
    unittest.main(argv=sys.argv[:1], verbosity=2)
