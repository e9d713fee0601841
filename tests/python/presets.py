"""Presets the Python tests share."""

# A tiny AdaFocusV2 (ResNet-10 width 4 on both sides) that trains in seconds on 64 px benchmark videos.
TINY_V2 = """model:
  method: adafocus_v2
  glance: {arch: resnet10, base_width: 4, stem: small, resolution: 16}
  local: {arch: resnet10, base_width: 4, stem: small_s2}
  patch_size: 24
  policy_channels: 8
  policy_hidden: 16
  classifier_hidden: 32
  resize: area
data: {segments: 4, input_size: 64, test_resize: 64, scales: [1.0], batch_size: 4, workers: 1}
train: {epochs: 2, optimizer: adam, lr: 0.003, schedule: onecycle, eval_every: 1, metric: top1, checkpoint_every: 1}
"""
