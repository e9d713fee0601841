#!/usr/bin/python3
"""The Python package's cost against the CLI's for the same work, and its video reader against torchvision's.

usage: PYTHONPATH=build/python python3 bench/bench_python.py build/adafocus OUT [--videos N] [--rounds R]

1. predict: N generated videos (128 px, 32 frames, H.264) classified by the benchmark's AdaFocusV2 (trained one epoch:
   the weights do not change the work), by `adafocus predict --json V1 .. VN` (one process: start, load, predict) and by
   adafocus.load + model.predict(v) for each video in this process (import excluded: it is the interpreter's). Rounds
   alternate the two; the answers must be identical.
2. read_video: the same files decoded whole by adafocus.read_video and torchvision.io.read_video (PyAV); frames must be
   identical.
Writes OUT/python_bench.json. Run it alone: another busy process skews both sides.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import torch
import torchvision.io

import adafocus


def cpu_name():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("out")
    p.add_argument("--videos", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    threads = torch.get_num_threads()
    data, run = os.path.join(a.out, "data"), os.path.join(a.out, "run")

    def cli(*args):
        r = subprocess.run([a.binary, "--threads", str(threads), *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    if not os.path.exists(os.path.join(data, "val.txt")):
        cli("make-synthetic", "--out", data, "--train", "16", "--val", str(a.videos), "--size", "128", "--frames", "32")
    checkpoint = os.path.join(run, "last.pt")
    if not os.path.exists(checkpoint):
        cli("train", "-c", "benchmark/adafocus_v2", "--data", data, "--out", run, "train.epochs=1",
            "train.eval_every=0")
    videos = adafocus.VideoDataset(os.path.join(data, "val.txt"), data)
    paths = [videos.path(i) for i in range(len(videos))]

    cli_s, py_s = [], []
    for _ in range(a.rounds):
        start = time.perf_counter()
        lines = cli("predict", "--checkpoint", checkpoint, "--json", *paths).splitlines()
        cli_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        model = adafocus.load(checkpoint)
        answers = [model.predict(v) for v in paths]
        py_s.append(time.perf_counter() - start)
        assert answers == [json.loads(line) for line in lines], "Python and CLI answers differ"
    start = time.perf_counter()
    cli("predict", "--checkpoint", checkpoint, "--json", paths[0])
    one_video_s = time.perf_counter() - start

    ours_s, theirs_s, frames = [], [], 0
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        ours = [adafocus.read_video(v) for v in paths]
        t1 = time.perf_counter()
        theirs = [torchvision.io.read_video(v, pts_unit="sec", output_format="THWC")[0] for v in paths]
        t2 = time.perf_counter()
        ours_s.append(t1 - t0)
        theirs_s.append(t2 - t1)
        assert all(torch.equal(x, y) for x, y in zip(ours, theirs)), "decoded frames differ"
        frames = sum(x.size(0) for x in ours)

    result = {
        "cpu": cpu_name(), "threads": threads, "videos": len(paths), "rounds": a.rounds,
        "predict_cli_s": cli_s, "predict_python_s": py_s,
        "python_over_cli": statistics.median(py_s) / statistics.median(cli_s),
        "cli_one_video_s": one_video_s,
        "read_video_adafocus_s": ours_s, "read_video_torchvision_s": theirs_s, "frames": frames,
        "read_video_speedup": statistics.median(theirs_s) / statistics.median(ours_s),
        "frames_identical": True,
    }
    with open(os.path.join(a.out, "python_bench.json"), "w") as f:
        json.dump(result, f, indent=2)
    print("CPU: %s, %d threads, %d videos, median of %d rounds" % (result["cpu"], threads, len(paths), a.rounds))
    print("predict: CLI %.2f s (one process; a 1-video run takes %.2f s), Python %.2f s -> Python/CLI %.3f" % (
        statistics.median(cli_s), one_video_s, statistics.median(py_s), result["python_over_cli"]))
    print("read_video: adafocus %.2f s, torchvision %.2f s for %d frames -> %.2fx, frames identical" % (
        statistics.median(ours_s), statistics.median(theirs_s), frames, result["read_video_speedup"]))


if __name__ == "__main__":
    main()
