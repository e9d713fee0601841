#!/usr/bin/python3
"""The adafocus binary driven as a user would, with PyTorch/torchvision checking what it writes.

usage: test_cli.py ADAFOCUS_BINARY REFERENCE_DIR   (REFERENCE_DIR written by reference.py backbones)
"""
import os
import subprocess
import sys
import tempfile
import unittest

import torch
import torchvision

BINARY, REF = sys.argv[1], sys.argv[2]


def run(*args):
    return subprocess.run([BINARY, "--threads", "2", *args], capture_output=True, text=True, timeout=600)


def close(actual, expected, rtol=1e-4):
    """max |actual - expected| <= rtol * max |expected|"""
    return actual.shape == expected.shape and \
        (actual.double() - expected.double()).abs().max() <= rtol * expected.double().abs().max()


class Cli(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def ok(self, *args):
        r = run(*args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def fails(self, *args):
        r = run(*args)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertTrue(r.stderr.startswith("error: "), r.stderr)
        return r.stderr

    def test_help_lists_subcommands_and_defaults(self):
        out = self.ok("--help")
        for sub in ["demo", "flops", "features", "convert-weights"]:
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
        err = self.fails("flops", "model.widht_mult=0.5")
        self.assertIn("unknown key 'model.widht_mult'", err)
        self.assertIn("did you mean 'model.width_mult'", err)
        err = self.fails("flops", "model.num_classes=many")
        self.assertIn("must be an integer", err)
        bad = os.path.join(self.dir, "bad.yaml")
        with open(bad, "w") as f:
            f.write("model:\n  arch: resnet18\n  archh: resnet34\n")
        err = self.fails("flops", "-c", bad)
        self.assertIn(bad + ":3", err)
        self.assertIn("did you mean 'model.arch'", err)

    def test_resolved_config_round_trips(self):
        preset = os.path.join(self.dir, "resolved.yaml")
        with open(preset, "w") as f:
            f.write(self.ok("flops", "--print-config", "model.arch=mobilenet_v2", "input.height=224"))
        out = self.ok("flops", "-c", preset)
        self.assertIn("mobilenet_v2 @ 224x224: 0.299511328", out)

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


if __name__ == "__main__":
    torch.set_num_threads(2)
    unittest.main(argv=sys.argv[:1], verbosity=2)
