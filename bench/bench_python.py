#!/usr/bin/python3
"""The Python package's cost against the CLI's for the same work, and its video reader against torchvision's.

usage: PYTHONPATH=build/python python3 bench/bench_python.py build/adafocus OUT [--videos N] [--rounds R]

1. predict: N generated videos (128 px, 32 frames, H.264) classified by the benchmark's AdaFocusV2 (trained one epoch:
   the weights do not change the work), by `adafocus predict --json V1 .. VN` (one process: start, load, predict) and by
   adafocus.load + model.predict(v) for each video in this process (import excluded: it is the interpreter's). Rounds
   alternate the two; the answers must be identical. Also per video, without start-up and loading: the CLI's
   (t(N videos) - t(1 video)) / (N - 1) against Python's loop alone / N.
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
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="both sides (CLI default: cores)")
    a = p.parse_args()
    threads = a.threads
    torch.set_num_threads(threads)
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
            "train.eval_every=0", "data.batch_size=8")
    videos = adafocus.VideoDataset(os.path.join(data, "val.txt"), data)
    paths = [videos.path(i) for i in range(len(videos))]

    cli_s, cli_one_s, py_s, py_load_s = [], [], [], []
    for _ in range(a.rounds):
        start = time.perf_counter()
        lines = cli("predict", "--checkpoint", checkpoint, "--json", *paths).splitlines()
        cli_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        cli("predict", "--checkpoint", checkpoint, "--json", paths[0])
        cli_one_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        model = adafocus.load(checkpoint, threads=threads)
        loaded = time.perf_counter()
        answers = [model.predict(v) for v in paths]
        py_s.append(time.perf_counter() - start)
        py_load_s.append(loaded - start)
        assert answers == [json.loads(line) for line in lines], "Python and CLI answers differ"
    med = statistics.median
    # Per video beyond the first: the CLI's start-up (LibTorch, the model) cancels out of t(N) - t(1).
    cli_per_video = (med(cli_s) - med(cli_one_s)) / (len(paths) - 1)
    py_per_video = (med(py_s) - med(py_load_s)) / len(paths)

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
        "python_over_cli": med(py_s) / med(cli_s),
        "cli_one_video_s": cli_one_s, "python_load_s": py_load_s,
        "cli_per_video_s": cli_per_video, "python_per_video_s": py_per_video,
        "python_over_cli_per_video": py_per_video / cli_per_video,
        "read_video_adafocus_s": ours_s, "read_video_torchvision_s": theirs_s, "frames": frames,
        "read_video_speedup": med(theirs_s) / med(ours_s),
        "frames_identical": True,
    }
    with open(os.path.join(a.out, "python_bench.json"), "w") as f:
        json.dump(result, f, indent=2)
    print("CPU: %s, %d threads, %d videos, median of %d rounds" % (result["cpu"], threads, len(paths), a.rounds))
    print("predict, whole: CLI %.2f s (one process; with 1 video %.2f s), Python %.2f s (load %.2f s) -> Python/CLI %.3f"
          % (med(cli_s), med(cli_one_s), med(py_s), med(py_load_s), result["python_over_cli"]))
    print("predict, per video: CLI %.2f ms, Python %.2f ms -> Python/CLI %.3f" % (
        1e3 * cli_per_video, 1e3 * py_per_video, result["python_over_cli_per_video"]))
    print("read_video: adafocus %.2f s, torchvision %.2f s for %d frames -> %.2fx, frames identical" % (
        med(ours_s), med(theirs_s), frames, result["read_video_speedup"]))


if __name__ == "__main__":
    main()
