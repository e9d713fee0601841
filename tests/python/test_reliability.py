"""Lost data, through the CLI as a user meets it: a disk that fills while a checkpoint is written, a damaged last.pt
on --resume, two runs pointed at one folder.

Run by ctest (make test) with ADAFOCUS_BINARY; or by hand:
ADAFOCUS_BINARY=build/adafocus python3 -m pytest tests/python/test_reliability.py
"""
import glob
import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from presets import TINY_V2  # noqa: E402

BINARY = os.environ["ADAFOCUS_BINARY"]


def cli(*args, file_limit=None, ok=True):
    def limit_file_size():
        # A write past the limit fails with EFBIG, as one on a full disk fails with ENOSPC; ignoring SIGXFSZ keeps
        # the process alive to handle it, as it would be on a full disk. (A tmpfs would need root.)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
    r = subprocess.run([BINARY, "--threads", "1", *args], capture_output=True, text=True, timeout=300,
                       preexec_fn=limit_file_size if file_limit else None)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    data = str(d / "data")
    cli("make-synthetic", "--out", data, "--train", "8", "--val", "2", "--frames", "8", "--size", "64", "--seed", "3")
    preset = str(d / "tiny_v2.yaml")
    with open(preset, "w") as f:
        f.write(TINY_V2.replace("epochs: 2", "epochs: 1"))
    return {"data": data, "preset": preset}


def train(tiny, run, **kw):
    return cli("train", "-c", tiny["preset"], "--data", tiny["data"], "--out", run, **kw)


def set_epochs(run, n):
    """More epochs for a finished run, so that --resume trains on."""
    path = os.path.join(run, "config.yaml")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(re.sub(r"(?m)^  epochs: \d+$", f"  epochs: {n}", text))


def epoch_of(path):
    return torch.load(path)["epoch"]


def test_a_full_disk_keeps_the_previous_checkpoint(tiny, tmp_path):
    run = str(tmp_path / "run")
    train(tiny, run)
    with open(os.path.join(run, "last.pt"), "rb") as f:
        before = f.read()
    set_epochs(run, 2)
    # Room for the metrics and the config, not for another checkpoint.
    r = cli("train", "--resume", run, file_limit=len(before) // 2, ok=False)
    assert r.returncode != 0
    assert "write failed: File too large" in r.stderr and "check free disk space" in r.stderr, r.stderr
    assert re.search(r"/(last|best)\.pt\.tmp\.\d+", r.stderr), r.stderr  # the file being written, named
    with open(os.path.join(run, "last.pt"), "rb") as f:
        assert f.read() == before  # intact
    assert not glob.glob(os.path.join(run, "*.tmp*")), os.listdir(run)  # no half-written file left behind
    # With room again, the run goes on from it.
    cli("train", "--resume", run)
    assert epoch_of(os.path.join(run, "last.pt")) == 2


def test_a_damaged_last_pt_falls_back_to_the_checkpoint_before_it(tiny, tmp_path):
    run = str(tmp_path / "run")
    train(tiny, run)
    set_epochs(run, 2)
    cli("train", "--resume", run)
    last, previous = os.path.join(run, "last.pt"), os.path.join(run, "previous.pt")
    assert epoch_of(last) == 2 and epoch_of(previous) == 1
    with open(last, "r+b") as f:
        f.truncate(os.path.getsize(last) // 2)
    set_epochs(run, 3)
    r = cli("train", "--resume", run)
    assert f"{last}: " in r.stderr and f"resuming from {previous}" in r.stderr, r.stderr
    assert epoch_of(last) == 3 and os.path.exists(os.path.join(run, "last.damaged.pt"))
    # Without a good copy, --resume is refused, naming the damaged file.
    with open(last, "r+b") as f:
        f.truncate(100)
    os.remove(previous)
    set_epochs(run, 4)
    r = cli("train", "--resume", run, ok=False)
    assert r.returncode != 0 and last in r.stderr and "truncated" in r.stderr, r.stderr


def test_two_runs_cannot_write_one_folder(tiny, tmp_path):
    run = str(tmp_path / "run")
    long = str(tmp_path / "long.yaml")
    with open(tiny["preset"]) as f, open(long, "w") as g:
        g.write(f.read().replace("epochs: 1", "epochs: 1000"))
    first = subprocess.Popen([BINARY, "--threads", "1", "train", "-c", long, "--data", tiny["data"], "--out", run],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = os.path.join(run, ".lock")
        deadline = time.time() + 60
        while time.time() < deadline and not (os.path.exists(lock) and open(lock).read() == str(first.pid)):
            time.sleep(0.1)
        r = train(tiny, run, ok=False)
        assert r.returncode != 0 and f"in use by another process (pid {first.pid})" in r.stderr, r.stderr
        r = cli("train", "--resume", run, ok=False)
        assert r.returncode != 0 and f"pid {first.pid}" in r.stderr, r.stderr
    finally:
        first.kill()
        first.wait()
    # The lock died with its holder: the folder is free (its .lock file, left behind, is no obstacle).
    train(tiny, run)
