"""The Python package (import adafocus) against PyTorch, torchvision and the CLI doing the same work.

Run by ctest (make test) with PYTHONPATH=build/python, ADAFOCUS_BINARY (the CLI) and ADAFOCUS_TEST_REFERENCE (what
reference.py backbones wrote); or by hand: PYTHONPATH=build/python ADAFOCUS_BINARY=build/adafocus
ADAFOCUS_TEST_REFERENCE=build/reference python3 -m pytest tests/python/test_package.py
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

import adafocus

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402  the official model definitions re-implemented for the tests
from presets import TINY_V2  # noqa: E402

BINARY = os.environ["ADAFOCUS_BINARY"]
REF = os.environ["ADAFOCUS_TEST_REFERENCE"]
torch.set_num_threads(2)  # as the CLI below (--threads 2): the same arithmetic, the same numbers

OFFICIAL_V2_PRESET = ("model: {method: adafocus_v2, num_classes: 5, glance: {arch: mobilenet_v2, resolution: 64}, "
                      "local: {arch: resnet18}, patch_size: 32, policy_hidden: 64, classifier_hidden: 4096}\n"
                      "data: {segments: 4, input_size: 64}\n")


def cli(*args):
    r = subprocess.run([BINARY, "--threads", "2", *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


def close(actual, expected, rtol=1e-4):
    """max |actual - expected| <= rtol * max |expected|"""
    return actual.shape == expected.shape and \
        (actual.double() - expected.double()).abs().max() <= rtol * expected.double().abs().max()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny generated benchmark (16 training, 4 val videos of 8 frames at 64 px), its preset, and a run of the CLI
    trained on it."""
    d = tmp_path_factory.mktemp("tiny")
    data = str(d / "data")
    cli("make-synthetic", "--out", data, "--train", "16", "--val", "4", "--frames", "8", "--size", "64", "--seed", "5")
    preset = str(d / "tiny_v2.yaml")
    with open(preset, "w") as f:  # random crops (two scales), so that epochs and workers could differ
        f.write(TINY_V2.replace("scales: [1.0]", "scales: [1.0, 0.875]"))
    run = str(d / "cli_run")
    cli("train", "-c", preset, "--data", data, "--out", run)
    return {"dir": d, "data": data, "preset": preset, "run": run}


@pytest.fixture(scope="module")
def official_v2(tmp_path_factory):
    preset = str(tmp_path_factory.mktemp("official") / "preset.yaml")
    with open(preset, "w") as f:
        f.write(OFFICIAL_V2_PRESET)
    return os.path.join(REF, "official_v2.pth.tar"), preset


def test_official_v2_checkpoint_gives_the_official_models_logits(official_v2):
    # The official AdaFocusV2 written from the official equations (reference.py), loaded strictly with the same file.
    path, preset = official_v2
    official = reference.OfficialAdaFocusV2(frames=4, classes=5, size=64, patch=32, hidden=64).eval()
    official.load_state_dict({k[len("module."):]: v for k, v in torch.load(path)["state_dict"].items()}, strict=True)
    clips = torch.randn(3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        logits, actions = official(clips)
    model = adafocus.load(path, preset=preset)
    assert model.method == "adafocus_v2" and model.exits == 4 and len(model.classes) == 5
    out = model(clips)
    assert close(out["logits"], logits), (out["logits"] - logits).abs().max()  # (B, T, C): an exit per frame
    assert close(out["actions"].reshape(-1, 2), actions)  # official: (B * T, 2) (row, col) in [0, 1]
    # predict() on one clip: predict --raw's dict, the same logits
    raw = model.predict(clips[1], raw=True)
    assert close(torch.tensor(raw["raw"]["logits"]), logits[1])
    assert raw["top"][0]["label"] == model.classes[int(logits[1, -1].argmax())]


def test_tensors_pass_without_copies(official_v2):
    clip = torch.randn(4, 3, 64, 64)
    assert adafocus._core.data_ptr(clip) == clip.data_ptr()  # what C++ reads is the caller's memory
    back = adafocus._core.echo(clip)
    assert back.data_ptr() == clip.data_ptr()  # and a tensor C++ returns is the same memory too
    back[0, 0, 0, 0] = 123.0
    assert clip[0, 0, 0, 0] == 123.0
    model = adafocus.load(*official_v2)
    out = model(clip)
    assert out["logits"].shape == (1, 4, 5) and out["logits"].dtype == torch.float32


def test_errors_arrive_as_python_exceptions(official_v2, tmp_path):
    path, preset = official_v2
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        adafocus.load(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown key 'model.nope'"):
        adafocus.load(path, preset=preset, overrides={"model.nope": 1})
    model = adafocus.load(path, preset=preset)
    with pytest.raises(ValueError, match=r"expected a \(T, 3, S, S\)"):
        model.predict(torch.zeros(4, 64, 64))
    with pytest.raises(ValueError, match="no early-exit thresholds"):
        model.predict(torch.zeros(4, 3, 64, 64), budget=0.1)
    with pytest.raises(FileNotFoundError):
        adafocus.read_video(str(tmp_path / "none.mp4"))
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        adafocus.VideoDataset("nothing.txt", str(tmp_path))
    # bad input in a list file: the file and line in the message
    (tmp_path / "bad.txt").write_text("video.mp4 not_a_number\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        adafocus.VideoDataset(str(tmp_path / "bad.txt"), str(tmp_path))


def test_read_video_gives_torchvisions_frames(tmp_path):
    import torchvision.io
    video = str(tmp_path / "v.mp4")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10:duration=2",
                    "-pix_fmt", "yuv420p", "-c:v", "libx264", video], check=True)
    ours = adafocus.read_video(video)
    theirs, _, _ = torchvision.io.read_video(video, pts_unit="sec", output_format="THWC")
    assert ours.shape == theirs.shape == (20, 64, 96, 3) and ours.dtype == torch.uint8
    assert torch.equal(ours, theirs), (ours.int() - theirs.int()).abs().max()
    picked = adafocus.read_video(video, frames=[3, 17, 3])
    assert torch.equal(picked, theirs[[3, 17, 3]])
    assert adafocus.read_video(video, size=32).shape == (20, 32, 48, 3)


def test_dataset_in_a_dataloader_yields_the_cpp_loaders_clips(tiny):
    data = adafocus.VideoDataset(os.path.join(tiny["data"], "train.txt"), tiny["data"], preset=tiny["preset"],
                                 train=True)
    assert len(data) == 16
    data.set_epoch(1)
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=2)
    ours = list(data.batches(batch_size=4, workers=2))
    assert len(ours) == 4
    for (clips, target), batch in zip(loader, ours):
        assert clips.shape == (4, 4, 3, 64, 64)
        assert torch.equal(clips, batch["clips"])
        assert torch.equal(target, batch["target"])
    # another epoch draws other crops, the same epoch the same ones
    data.set_epoch(2)
    assert not torch.equal(data[0][0], ours[0]["clips"][0])
    data.set_epoch(1)
    assert torch.equal(data[0][0], ours[0]["clips"][0])
    # the test view is the clip `predict` reads
    val = adafocus.VideoDataset(os.path.join(tiny["data"], "val.txt"), tiny["data"], preset=tiny["preset"])
    model = adafocus.load(os.path.join(tiny["run"], "best.pt"))
    from_path = model.predict(val.path(0), raw=True)
    from_tensor = model.predict(val[0][0], raw=True)
    assert from_path["raw"]["logits"] == from_tensor["raw"]["logits"]
    assert from_path["frames"] == val.sample(0)["frames"]


def test_train_writes_the_clis_run_folder(tiny, tmp_path):
    out = str(tmp_path / "py_run")
    lines = []
    summary = adafocus.train(tiny["preset"], tiny["data"], out, progress=lines.append, quiet=True)
    assert summary["epochs"] == 2 and [m["epoch"] for m in lines] == [0, 1]

    def metrics(run):
        with open(os.path.join(run, "metrics.jsonl")) as f:
            return [{k: v for k, v in json.loads(line).items() if k != "epoch_s"} for line in f]
    assert metrics(out) == metrics(tiny["run"])
    assert [{k: v for k, v in m.items() if k != "epoch_s"} for m in lines] == metrics(out)
    with open(os.path.join(out, "config.yaml")) as a, open(os.path.join(tiny["run"], "config.yaml")) as b:
        assert a.read() == b.read()
    for name in ["last.pt", "best.pt"]:
        ours, theirs = torch.load(os.path.join(out, name)), torch.load(os.path.join(tiny["run"], name))
        assert sorted(ours["state_dict"]) == sorted(theirs["state_dict"])
        for k, v in theirs["state_dict"].items():
            assert torch.equal(ours["state_dict"][k], v), k
    with pytest.raises(ValueError, match="resume=True continues a run"):
        adafocus.train(tiny["preset"], tiny["data"], out, resume=True)


def test_calibrate_predict_and_export_match_the_cli(tiny, tmp_path):
    best = os.path.join(tiny["run"], "best.pt")
    train_list = os.path.join(tiny["data"], "train.txt")
    table_file = str(tmp_path / "t.json")
    cli("calibrate", "--checkpoint", best, "--list", train_list, "--budgets", "0.004,0.006", "--out", table_file)
    model = adafocus.load(best)
    table = model.calibrate(train_list, budgets=[0.004, 0.006])
    with open(table_file) as f:
        assert table == json.load(f)
    assert model.thresholds == table
    video = adafocus.VideoDataset(os.path.join(tiny["data"], "val.txt"), tiny["data"]).path(1)
    ours = model.predict(video, budget=0.004)
    theirs = json.loads(cli("predict", "--checkpoint", best, "--thresholds", table_file, "--budget", "0.004",
                            "--json", video))
    assert ours == theirs and "exit" in ours
    # (a run's config.yaml keeps model.num_classes as configured; the model has the data's 10)
    assert model.flops() == json.loads(cli("flops", "-c", os.path.join(tiny["run"], "config.yaml"),
                                           "model.num_classes=%d" % len(model.classes), "--json"))
    model.export(str(tmp_path / "py.pth.tar"))
    cli("export", "--checkpoint", best, "--out", str(tmp_path / "cli.pth.tar"))
    ours, theirs = torch.load(str(tmp_path / "py.pth.tar")), torch.load(str(tmp_path / "cli.pth.tar"))
    assert sorted(ours["state_dict"]) == sorted(theirs["state_dict"])
    assert all(torch.equal(ours["state_dict"][k], v) for k, v in theirs["state_dict"].items())
    with pytest.raises(ValueError, match="format must be 'official'"):
        model.export(str(tmp_path / "x"), format="onnx")


def test_calls_release_the_gil(tiny):
    # Python threads run while C++ computes: a counter in this thread advances during predictions in another.
    model = adafocus.load(os.path.join(tiny["run"], "best.pt"))
    clip = torch.randn(16, 4, 3, 64, 64)
    done = threading.Event()

    def work():
        for _ in range(10):
            model(clip)
        done.set()
    t = threading.Thread(target=work)
    ticks = 0
    t.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    assert ticks > 20


def test_ctrl_c_stops_training_at_the_next_batch(tiny, tmp_path):
    script = textwrap.dedent("""
        import sys, adafocus
        def progress(line):
            print("epoch", line["epoch"], flush=True)
        try:
            adafocus.train(sys.argv[1], sys.argv[2], sys.argv[3], overrides={"train.epochs": 200}, progress=progress,
                           quiet=True)
            print("finished")
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """)
    out = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", script, tiny["preset"], tiny["data"], out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    assert proc.stdout.readline().strip() == "epoch 0"  # training is under way
    proc.send_signal(signal.SIGINT)
    start = time.time()
    stdout, stderr = proc.communicate(timeout=60)
    assert "interrupted" in stdout, stderr
    assert time.time() - start < 10
    assert torch.load(os.path.join(out, "last.pt"))["epoch"] >= 1  # the last checkpoint is whole
