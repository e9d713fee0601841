#!/usr/bin/env bash
# Installs every Debian package adafocus needs to build, test and run. Idempotent: packages already present are
# skipped, so `make test` can call it on every run at almost no cost.
set -euo pipefail

packages=(
  # build
  cmake ninja-build g++ make ccache pkg-config
  # LibTorch 1.13 (CPU) and a fast BLAS: the default reference BLAS makes 1x1 convs and Linear 5-8x slower.
  libtorch-dev libopenblas0-openmp
  # oneDNN's headers, for the library LibTorch already links (fused convolutions of MobileNetV2, src/nn/fused_conv.*)
  libdnnl-dev
  # multi-process training: the gloo headers that LibTorch's c10d ProcessGroupGloo.hpp includes
  libgloo-dev
  # command line, config, JSON, formatting; the server's HTTP (Boost.Beast and Asio, headers only)
  libcli11-dev libyaml-cpp-dev nlohmann-json3-dev libfmt-dev libboost-dev
  # video decoding and encoding (FFmpeg libraries; the ffmpeg tools make and check test videos), JPEG frames, gzip
  libavformat-dev libavcodec-dev libavutil-dev libswscale-dev ffmpeg libturbojpeg0-dev zlib1g-dev
  # real images for the built-in benchmark (Cluttered Moving Fashion-MNIST)
  dataset-fashion-mnist
  # the Python package (import adafocus, on python3-torch below): bindings, and its tests
  pybind11-dev python3-dev python3-pytest
  # tests and micro-benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # the reliability builds (make test-sanitize, make fuzz): clang with its sanitizer and libFuzzer runtimes
  clang-14 libclang-rt-14-dev
  # test oracle (parity with torchvision, Pillow and PyAV, .pth files written by PyTorch); the CLI never needs them,
  # the Python package runs on python3-torch
  python3-torch python3-torchvision python3-pil python3-av
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
