#!/usr/bin/python3
"""Writes the seed inputs of the fuzz targets (fuzz/corpus/TARGET/seed_*): one valid input per form each parser
reads, like the test fixtures. Run once; the seeds are kept in the repository beside the regression inputs."""
import io
import json
import os
import subprocess
import sys
import tempfile

import torch

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    os.makedirs(os.path.join(root, target), exist_ok=True)
    with open(os.path.join(root, target, "seed_" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# list files: the official formats, and class index files
put("list", "comma", "v_abc,120,3\nv_def,96,1,4\n")
put("list", "frames", "# comment\nframes/a b 32 0\nframes/c 16 2\n")
put("list", "frames_semicolon", "a/b;32;0\nc;16;2\n")
put("list", "video", "videos/a.mp4 0\nvideos/b c.mp4 1\n")
put("list", "class_index", "1 ApplyEyeMakeup\n2 Archery\n")
put("list", "class_names", "walking\nrunning\n")

# config: a preset and command-line overrides
preset = os.path.join(os.path.dirname(root), "..", "configs", "benchmark", "adafocus_v2.yaml")
put("config", "preset", open(preset).read())
put("config", "overrides", "model.method=adafocus_v3\ntrain.lr=0.01\ndata.segments=4\nmodel.patch_size=[96]\n")

# pth: state dicts in both containers, a nested checkpoint, a tensor, a run's checkpoint
small = {"conv.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "bn.num_batches_tracked": torch.tensor(3)}
def saved(obj, **kw):
    b = io.BytesIO()
    torch.save(obj, b, **kw)
    return b.getvalue()
put("pth", "state_dict_zip", saved(small))
put("pth", "state_dict_legacy", saved(small, _use_new_zipfile_serialization=False))
put("pth", "nested", saved({"state_dict": small, "epoch": 3, "best_prec1": 71.5, "args": [1, "a", None, (2.5, True)]}))
put("pth", "tensor", saved(torch.ones(2, 2, dtype=torch.float16)[:, 1]))
put("pth", "checkpoint", saved({"format": "adafocus-checkpoint-1", "state_dict": small, "optimizer": {},
                                "epoch": 2, "batch": 0, "best_metric": 50.0, "best_epoch": 1,
                                "epoch_sums": torch.zeros(3, dtype=torch.float64), "config": "seed: 1\n",
                                "classes": "a\nb\n"}))

# thresholds: an exit table as calibrate writes it
setting = {"q": 1.5, "first": 0, "thresholds": [0.5, 0.8, -1e30], "proportions": [0.3, 0.3, 0.4],
           "gflops": 0.02, "top1": 70.0}
put("thresholds", "table", json.dumps({"format": "adafocus-exits-1", "criterion": "entropy", "calibration": "calib.txt",
                                       "videos": 500, "exit_gflops": [0.01, 0.02, 0.03], "exit_top1": [50, 60, 70],
                                       "budgets": [dict(setting, budget=0.025)], "sweep": [setting]}, indent=2))

# video: tiny files of the containers and codecs we read
with tempfile.TemporaryDirectory() as tmp:
    for name, args in [("h264.mp4", ["-c:v", "libx264", "-g", "2", "-bf", "1"]), ("vp9.webm", ["-c:v", "libvpx-vp9"]),
                       ("mjpeg.avi", ["-c:v", "mjpeg"]), ("mpeg4.mkv", ["-c:v", "mpeg4"])]:
        out = os.path.join(tmp, name)
        subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=32x24:rate=8:duration=0.5",
                        "-pix_fmt", "yuv420p", *args, out], check=True)
        put("video", name.replace(".", "_"), open(out, "rb").read())
    mp4 = open(os.path.join(root, "video", "seed_h264_mp4"), "rb").read()

# http: requests as they arrive on a connection
put("http", "get", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
put("http", "body", b"POST /v1/predict?top_k=3&budget=0.5 HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
    b"Content-Length: " + str(len(mp4)).encode() + b"\r\n\r\n" + mp4)
form = (b"--B0\r\nContent-Disposition: form-data; name=\"degrade\"\r\n\r\nfalse\r\n--B0\r\nContent-Disposition: "
        b"form-data; name=\"video\"; filename=\"a.mp4\"\r\nContent-Type: video/mp4\r\n\r\n" + mp4[:64] + b"\r\n--B0--\r\n")
put("http", "form", b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B0\r\n"
    b"Content-Length: " + str(len(form)).encode() + b"\r\n\r\n" + form)
put("http", "chunked", b"POST /v1/predict?degrade=yes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nabcd\r\n0\r\n\r\n")
put("http", "stream", b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 27"
    b"\r\n\r\n{\"source\": \"a.mp4\", \"x\": 1}")
print("seeds written to", root, file=sys.stderr)
