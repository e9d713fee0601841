#include "methods/adafuse.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <set>
#include <tuple>

#include "core/error.h"
#include "nn/flop_counter.h"
#include "nn/kernels.h"
#include "nn/temporal_shift.h"

namespace adafocus::methods {

namespace {

namespace F = torch::nn::functional;

// x: (N, ...) with each clip's `segments` frames adjacent -> frame t holds frame t-1's value, zeros at t = 0.
torch::Tensor previous_frame(const torch::Tensor& x, int64_t segments) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = segments;
  shape.insert(shape.begin(), -1);
  const auto v = x.reshape(shape);  // (B, T, ...)
  return torch::cat({torch::zeros_like(v.narrow(1, 0, 1)), v.narrow(1, 0, segments - 1)}, 1).reshape(x.sizes());
}

// Linear with the official gate initialisation: N(0, 0.001) weights, zero bias.
torch::nn::Linear gate_linear(int64_t in, int64_t out) {
  torch::nn::Linear fc(in, out);
  torch::NoGradGuard no_grad;
  fc->weight.normal_(0.0, 0.001);
  fc->bias.zero_();
  return fc;
}

// Whether the gates' last steps run as the plain loops below: CPU floats with no gradient to carry.
bool gate_loops(const torch::Tensor& t) {
  return t.is_cpu() && t.scalar_type() == torch::kFloat && !t.requires_grad();
}

// log(max(softmax(logits, 2), 1e-8)) of (N, G, 3), row by row: LibTorch's softmax over a last dimension of 3 is not
// vectorised, and with log and clamp it took several times as long as the loop.
torch::Tensor floored_log_probs(const torch::Tensor& logits) {
  const auto in = logits.contiguous();
  auto out = torch::empty_like(in);
  const float* x = in.data_ptr<float>();
  float* y = out.data_ptr<float>();
  for (int64_t r = 0; r < in.numel() / 3; ++r, x += 3, y += 3) {
    const float top = std::max({x[0], x[1], x[2]});
    const float e[3] = {std::exp(x[0] - top), std::exp(x[1] - top), std::exp(x[2] - top)};
    const float sum = e[0] + e[1] + e[2];
    for (int k = 0; k < 3; ++k) y[k] = std::log(std::max(e[k] / sum, 1e-8f));
  }
  return out;
}

// One-hot (N, G, 3) of each row's largest score[k] - log(draws[k]) (no draws: score[k]).
torch::Tensor one_hot_of_best(const torch::Tensor& scores, const torch::Tensor& draws) {
  const auto s = scores.contiguous();
  const auto d = draws.defined() ? draws.contiguous() : draws;
  auto out = torch::zeros_like(s);
  const float* x = s.data_ptr<float>();
  const float* e = d.defined() ? d.data_ptr<float>() : nullptr;
  float* y = out.data_ptr<float>();
  for (int64_t r = 0; r < s.numel(); r += 3) {
    int best = 0;
    float top = 0;
    for (int k = 0; k < 3; ++k) {
      const float v = x[r + k] - (e ? std::log(e[r + k]) : 0.0f);
      if (k == 0 || v > top) best = k, top = v;
    }
    y[r + best] = 1.0f;
  }
  return out;
}

torch::IntArrayRef padding_of(const torch::nn::Conv2dImpl& conv) {
  return c10::get<torch::ExpandingArray<2>>(conv.options.padding());
}

// Output side of `conv` on an input side `in` (PyTorch's formula, no dilation).
int64_t conv_out(const torch::nn::Conv2dImpl& conv, int64_t in, int dim) {
  return (in + 2 * padding_of(conv)[dim] - (*conv.options.kernel_size())[dim]) / (*conv.options.stride())[dim] + 1;
}

// Multiply-accumulates of `conv` per frame with `in_channels` inputs and an out_h x out_w output (thop's count).
double conv_macs(const torch::nn::Conv2dImpl& conv, int64_t in_channels, int64_t out_h, int64_t out_w) {
  const auto& k = *conv.options.kernel_size();
  return static_cast<double>(conv.options.out_channels() * out_h * out_w * in_channels * k[0] * k[1]);
}

// A parameter or buffer of the gates (a block's policy_net, or the shared gate_fc0s / gate_fc1s), by its name in the
// backbone or below it.
bool is_gate_parameter(const std::string& key) {
  return key.find("policy_net.") != std::string::npos || key.rfind("gate_fc", 0) == 0 ||
         key.find(".gate_fc") != std::string::npos;
}

torch::Tensor indices(const std::vector<int64_t>& v, const torch::Device& device) {
  return torch::tensor(v, torch::kLong).to(device);
}

}  // namespace

GatePolicyImpl::GatePolicyImpl(torch::nn::Linear fc0, torch::nn::Linear fc1, bool shared)
    : gate_fc0(std::move(fc0)), gate_fc1(std::move(fc1)) {
  if (!shared) register_module("gate_fc0", gate_fc0);
  gate_bn = register_module("gate_bn", torch::nn::BatchNorm1d(gate_fc0->options.out_features()));
  if (!shared) register_module("gate_fc1", gate_fc1);
}

torch::Tensor GatePolicyImpl::forward(const torch::Tensor& x, int64_t segments) {
  const auto now = x.mean({2, 3});                           // (N, Ci)
  const auto before = previous_frame(now, segments);         // (N, Ci), zeros at the first frame
  // (at batch 1, N = 8 frames: the layers' weights streamed, nn::small_batch_linear)
  const auto joined = torch::cat({before, now}, 1);                                                   // (N, 2Ci)
  const auto hidden = torch::relu(gate_bn(nn::small_batch_linear(joined, gate_fc0->weight, gate_fc0->bias)));  // (N, hidden)
  const auto logits = nn::small_batch_linear(hidden, gate_fc1->weight, gate_fc1->bias).view({x.size(0), -1, 3});  // (N, G, 3)
  // As official: log-probabilities, floored.
  return gate_loops(logits) ? floored_log_probs(logits) : torch::log(torch::softmax(logits, 2).clamp_min(1e-8));
}

GateFlops gate_flops(const GateMasks& gates, double base_gflops, bool per_video) {
  torch::Tensor up, down;  // GFLOPs saved on conv1 and on conv2
  for (size_t i = 0; i < gates.masks.size(); ++i) {
    const auto& m = gates.masks[i];  // (B, T, G, 3)
    const int64_t t = m.size(1);
    const auto keep = m.select(3, 2), reuse = m.select(3, 1), skip = m.select(3, 0);  // (B, T, G)
    // conv1's channel c at frame t is needed when frame t keeps it or frame t+1 reuses it (none after the last).
    const auto next_reuse = torch::cat({reuse.narrow(1, 1, t - 1), torch::zeros_like(reuse.narrow(1, 0, 1))}, 1);
    const auto upsave = (1 - keep) * (1 - next_reuse);
    const auto u = (per_video ? upsave.mean({1, 2}) : upsave.mean()) * (gates.conv1[i] * 1e-9);
    const auto d = (per_video ? skip.mean({1, 2}) : skip.mean()) * (gates.conv2[i] * 1e-9);
    up = up.defined() ? up + u : u;
    down = down.defined() ? down + d : d;
  }
  if (!up.defined()) {
    const auto base = torch::tensor(base_gflops, torch::kDouble);
    return {base, base};
  }
  return {base_gflops - up - down, base_gflops - down};
}

torch::Tensor action_fractions(const GateMasks& gates, bool per_video) {
  torch::Tensor counts;
  int64_t total = 0;
  for (const auto& m : gates.masks) {  // (B, T, G, 3)
    const auto c = per_video ? m.sum({1, 2}) : m.sum({0, 1, 2});
    counts = counts.defined() ? counts + c : c;
    total += (per_video ? 1 : m.size(0)) * m.size(1) * m.size(2);
  }
  return counts / static_cast<double>(total);
}

AdaFuseOptions AdaFuseOptions::from_config(const Config& c) {
  const std::string arch = c.get_string("model.backbone.arch");
  if (arch.rfind("resnet", 0) != 0)
    throw Error("adafuse gates ResNet blocks, not " + arch, c.origin("model.backbone.arch"),
                "use resnet50 (official), resnet18, resnet34 or resnet10");
  const std::string flops_loss = c.get_string("model.adafuse.flops_loss");
  if (flops_loss != "real" && flops_loss != "upb")
    throw Error("model.adafuse.flops_loss must be real or upb", c.origin("model.adafuse.flops_loss"));
  const std::string test_gates = c.get_string("model.adafuse.test_gates");
  if (test_gates != "sample" && test_gates != "argmax")
    throw Error("model.adafuse.test_gates must be sample or argmax", c.origin("model.adafuse.test_gates"));
  const auto stages = c.get_ints("model.adafuse.stages");
  for (int64_t s : stages)
    if (s < 0 || s > 3) throw Error("model.adafuse.stages are residual stages 0-3 (layer1-4)", c.origin("model.adafuse.stages"));
  return AdaFuseOptions(FullFrameOptions::from_config(c))
      .stages(stages)
      .hidden(c.get_int("model.adafuse.hidden"))
      .hidden_quota(c.get_int("model.adafuse.hidden_quota"))
      .tau(c.get_float("model.adafuse.tau"))
      .flops_weight(c.get_float("model.adafuse.flops_weight"))
      .flops_loss(flops_loss)
      .argmax_at_test(test_gates == "argmax")
      .inference(parse_inference(c.get_string("model.adafuse.inference"), c.origin("model.adafuse.inference")));
}

AdaFuseImpl::AdaFuseImpl(const AdaFuseOptions& o, int64_t num_classes)
    : inference(o.inference()),
      argmax_at_test(o.argmax_at_test()),
      frames_(o.network().frames()),
      resolution_(o.network().resolution()),
      resize_(o.network().resize()),
      flops_loss_(o.flops_loss()),
      tau_(o.tau()),
      flops_weight_(o.flops_weight()),
      lr_(o.network().lr()) {
  const auto& stages = o.stages();
  const int64_t hidden = o.hidden(), quota = o.hidden_quota();
  shared_ = quota > 0;

  // The official TSN: base_model (its fc unused), dropout, new_fc; registered under the official names.
  tsn = TSN(o.network().backbone(), num_classes, o.network().dropout(), false);
  register_module("base_model", tsn->base_model);
  register_module("dropout", tsn->dropout);
  register_module("new_fc", tsn->new_fc);
  auto* resnet = tsn->base_model->as<nn::ResNetImpl>();

  // With a hidden quota the linear layers are shared by the blocks of equal input/output size (official
  // --shared_policy_net), hidden = quota / G, and registered once in base_model.gate_fc0s / gate_fc1s.
  auto fc0s = std::make_shared<torch::nn::Module>(), fc1s = std::make_shared<torch::nn::Module>();
  std::map<std::string, std::pair<torch::nn::Linear, torch::nn::Linear>> shared;
  torch::nn::Sequential* layers[] = {&resnet->layer1, &resnet->layer2, &resnet->layer3, &resnet->layer4};
  for (int64_t stage = 0; stage < 4; ++stage) {
    const bool gated = std::find(stages.begin(), stages.end(), stage) != stages.end();
    for (size_t i = 0; i < (*layers[stage])->size(); ++i) {
      const auto module = (*layers[stage])->ptr(i);
      GatedBlock b{};
      int64_t in = 0;
      if (auto* k = module->as<nn::BottleneckImpl>()) {
        b = {k->conv1.get(), k->conv2.get(), k->conv3.get(), k->bn1.get(), k->bn2.get(), k->bn3.get(),
             k->downsample ? k->downsample.get() : nullptr, &k->folded1, &k->folded2, &k->folded3, &k->folded_down,
             k->tsm_segments_, k->shift_div_, nullptr, {}};
        in = k->conv1->options.in_channels();
      } else if (auto* k = module->as<nn::BasicBlockImpl>()) {  // gate after conv1, before conv2 (3x3 both)
        b = {k->conv1.get(), k->conv2.get(), nullptr, k->bn1.get(), k->bn2.get(), nullptr,
             k->downsample ? k->downsample.get() : nullptr, &k->folded1, &k->folded2, nullptr, &k->folded_down,
             k->tsm_segments_, k->shift_div_, nullptr, {}};
        in = k->conv1->options.in_channels();
      }
      if (gated) {
        const int64_t g = b.conv1->options.out_channels();
        if (shared_) {
          const std::string key = fmt::format("{}_{}", 2 * in, 3 * g);
          if (!shared.count(key)) {
            shared.emplace(key, std::make_pair(gate_linear(2 * in, quota / g), gate_linear(quota / g, 3 * g)));
            fc0s->register_module(key, shared.at(key).first);
            fc1s->register_module(key, shared.at(key).second);
          }
          b.policy = GatePolicy(shared.at(key).first, shared.at(key).second, true);
        } else {
          b.policy = GatePolicy(gate_linear(2 * in, hidden), gate_linear(hidden, 3 * g), false);
        }
        module->register_module("policy_net", b.policy);
      }
      blocks.push_back(b);
    }
  }
  if (shared_) {
    resnet->register_module("gate_fc0s", fc0s);
    resnet->register_module("gate_fc1s", fc1s);
  }
}

torch::Tensor AdaFuseImpl::decide(const torch::Tensor& log_probs) const {
  const bool sample = is_training() || !argmax_at_test;
  if (!gate_loops(log_probs)) {
    if (sample)  // hard Gumbel-softmax: one-hot forward, soft gradient (straight-through)
      return F::gumbel_softmax(log_probs, F::GumbelSoftmaxFuncOptions().tau(tau_).hard(true).dim(-1));
    return F::one_hot(log_probs.argmax(-1), 3).to(log_probs.scalar_type());
  }
  // Without a gradient, the hard Gumbel-softmax's forward alone: the largest log_probs - log(Exp(1) draws) (tau > 0
  // and the softmax keep the order), the same draws as F::gumbel_softmax's, in a loop: its ten operators over a last
  // dimension of 3 were a tenth of the demo's AdaFuse inference.
  return one_hot_of_best(log_probs, sample ? torch::empty_like(log_probs).exponential_() : torch::Tensor());
}

torch::Tensor AdaFuseImpl::resized(const torch::Tensor& clips) const {
  TORCH_CHECK(clips.dim() == 5 && clips.size(1) == frames_, "adafuse: expected clips (B, ", frames_,
              ", 3, S, S), got ", clips.sizes());
  return resize_frames(clips.reshape({-1, clips.size(2), clips.size(3), clips.size(4)}), resolution_, resize_);
}

torch::Tensor fuse_channels(const torch::Tensor& out1, const torch::Tensor& mask, int64_t segments) {
  const auto m = mask.unsqueeze(-1).unsqueeze(-1);  // (N, G, 3, 1, 1)
  return out1 * m.select(2, 2) + previous_frame(out1, segments) * m.select(2, 1);
}

namespace {

// The block's shortcut. As the official gated blocks (ops/batenet.py) compute it: with TSM a downsampling shortcut
// reads the shifted input (the block shifts x itself before conv1), an identity one the unshifted input.
torch::Tensor shortcut(const GatedBlock& b, const torch::Tensor& xs, const torch::Tensor& x) {
  return b.downsample ? nn::downsample_shortcut(*b.downsample, *b.folded_down, xs) : x;
}

// conv2's output (N, G2, H2, W2), ReLU'd when `relu_done` -> the block's output: conv3 (bottleneck), the shortcut,
// ReLU.
torch::Tensor block_end(const GatedBlock& b, torch::Tensor out, const torch::Tensor& x, const torch::Tensor& xs,
                        bool relu_done = false) {
  if (!b.conv3) return nn::relu_owned(out + shortcut(b, xs, x));  // (out may be a view of conv2's bias: not in place)
  out = nn::conv_bn(*b.conv3, *b.bn3, *b.folded3, relu_done ? out : torch::relu(out));
  return nn::add_relu_owned(out, shortcut(b, xs, x));
}

// The masked dense block: conv1's output fused as the gates say, then the rest.
torch::Tensor dense_block(const GatedBlock& b, const torch::Tensor& x, const torch::Tensor& xs,
                          const torch::Tensor& mask, int64_t segments) {
  // BN folded into the convolutions after optimize_for_inference (nn::conv_bn), as in the dense network.
  auto out = nn::conv_bn(*b.conv1, *b.bn1, *b.folded1, xs, /*relu=*/true);  // (N, G, H1, W1)
  if (mask.defined()) out = fuse_channels(out, mask, segments);
  const bool bottleneck = b.conv3 != nullptr;  // conv2's ReLU: a bottleneck's, not a basic block's (after the sum)
  out = nn::conv_bn(*b.conv2, *b.bn2, *b.folded2, out, bottleneck);  // (N, G2, H2, W2)
  return block_end(b, out, x, xs, bottleneck);
}

SparseWeights sparse_weights(const GatedBlock& b) {
  // The backbone's folded copies where optimize_for_inference made them, else folded now.
  const nn::FoldedConv f1 = b.folded1->weight.defined() ? *b.folded1 : nn::fold(*b.conv1, *b.bn1);
  const nn::FoldedConv f2 = b.folded2->weight.defined() ? *b.folded2 : nn::fold(*b.conv2, *b.bn2);
  return {f1.weight, f1.bias, f2.weight, f2.bias, nn::arrange_for_sparse_conv(f1.weight),
          nn::arrange_for_sparse_conv(f2.weight)};
}

// What a frame's gates ask of a block: the conv1 outputs it computes (kept here or reused by the next frame) and
// the conv2 inputs it reads (kept from itself, reused from the frame before).
struct FrameNeeds {
  std::vector<int64_t> conv1, keep, reuse;
};

std::vector<FrameNeeds> frame_needs(const torch::Tensor& mask, int64_t segments) {
  const auto actions = mask.argmax(-1).to(torch::kCPU).contiguous();  // (N, G): 0 skip, 1 reuse, 2 keep
  const auto a = actions.accessor<int64_t, 2>();
  std::vector<FrameNeeds> needs(static_cast<size_t>(actions.size(0)));
  for (int64_t f = 0; f < actions.size(0); ++f) {
    const bool last = f % segments == segments - 1;
    for (int64_t c = 0; c < actions.size(1); ++c) {
      if (a[f][c] == 2 || (!last && a[f + 1][c] == 1)) needs[f].conv1.push_back(c);
      if (a[f][c] == 2) needs[f].keep.push_back(c);
      if (a[f][c] == 1) needs[f].reuse.push_back(c);
    }
  }
  return needs;
}

// Frame by frame (nn::sparse_conv2d): conv1 only for the channels a frame needs, conv2 only on the channels it does
// not skip - exactly the official count. -> conv2's output (N, G2, H2, W2), bn2 included, ReLU'd for a bottleneck
// (before its conv3); with `residual` (channels-last, a basic block), conv2's output + residual, ReLU'd.
torch::Tensor frames_convs(const GatedBlock& b, const SparseWeights& w, const torch::Tensor& xs,
                           const std::vector<FrameNeeds>& needs, int64_t segments, const torch::Tensor& residual) {
  const int64_t n = xs.size(0), g = b.conv1->options.out_channels();
  std::vector<nn::SparseConvSample> first(static_cast<size_t>(n)), second(static_cast<size_t>(n));
  for (int64_t f = 0; f < n; ++f) {
    const FrameNeeds& need = needs[static_cast<size_t>(f)];
    nn::SparseConvSample& one = first[static_cast<size_t>(f)];
    one.all_outputs = static_cast<int64_t>(need.conv1.size()) == g;
    if (!one.all_outputs) one.out = need.conv1;
    // Reused channels take the previous frame's conv1 output (zeros before the first frame, as the dense forward;
    // read all the same, as the official code counts them).
    nn::SparseConvSample& two = second[static_cast<size_t>(f)];
    two.all_inputs = false;
    const int64_t before = f % segments > 0 ? f - 1 : -1;
    for (int64_t c : need.keep) two.in_sample.push_back(f), two.in_channel.push_back(c);
    for (int64_t c : need.reuse) two.in_sample.push_back(before), two.in_channel.push_back(c);
  }
  auto side = [](const torch::nn::Conv2dImpl& conv) {  // kernel, stride, padding: square, as ResNet's
    const auto &k = *conv.options.kernel_size(), &s = *conv.options.stride();
    const auto p = padding_of(conv);
    TORCH_CHECK(k[0] == k[1] && s[0] == s[1] && p[0] == p[1] && (*conv.options.dilation())[0] == 1 &&
                    (*conv.options.dilation())[1] == 1 && conv.options.groups() == 1,
                "adafuse: frame-by-frame inference takes square, undilated, ungrouped convolutions");
    return std::array<int64_t, 3>{k[0], s[0], p[0]};
  };
  const auto [k1, s1, p1] = side(*b.conv1);
  const auto [k2, s2, p2] = side(*b.conv2);
  const auto out1 = nn::sparse_conv2d(xs.contiguous(torch::MemoryFormat::ChannelsLast), w.arranged1, w.b1, k1, s1, p1,
                                      true, first);                            // (N, G, H1, W1), ReLU'd
  // A basic block's shortcut and ReLU in conv2's kernel, while its output is in cache.
  return nn::sparse_conv2d(out1, w.arranged2, w.b2, k2, s2, p2, residual.defined() || b.conv3, second,
                           residual);  // (N, G2, H2, W2)
}

// The whole batch at once on the channels some frame needs (conv1) or does not skip (conv2): one call per
// convolution, but every frame pays for the union. -> conv2's output (N, G2, H2, W2), bn2 included.
torch::Tensor batch_convs(const GatedBlock& b, const SparseWeights& w, const torch::Tensor& xs,
                          const torch::Tensor& mask, const std::vector<FrameNeeds>& needs, int64_t segments) {
  const int64_t n = xs.size(0), g = mask.size(1);
  std::vector<bool> any1(static_cast<size_t>(g)), any2(static_cast<size_t>(g));
  for (const FrameNeeds& f : needs) {
    for (int64_t c : f.conv1) any1[c] = true;
    for (int64_t c : f.keep) any2[c] = true;
    for (int64_t c : f.reuse) any2[c] = true;
  }
  std::vector<int64_t> union1, union2;
  for (int64_t c = 0; c < g; ++c) {
    if (any1[c]) union1.push_back(c);
    if (any2[c]) union2.push_back(c);
  }
  const int64_t h1 = conv_out(*b.conv1, xs.size(2), 0), v1 = conv_out(*b.conv1, xs.size(3), 1);
  const int64_t h2 = conv_out(*b.conv2, h1, 0), v2 = conv_out(*b.conv2, v1, 1);
  const auto device = xs.device();
  auto out1 = torch::zeros({n, g, h1, v1}, xs.options());  // conv1 outputs nobody needs stay zero
  if (!union1.empty()) {
    const auto idx = indices(union1, device);
    out1.index_copy_(1, idx, torch::relu(torch::conv2d(xs, w.w1.index_select(0, idx), w.b1.index_select(0, idx),
                                                       *b.conv1->options.stride(), padding_of(*b.conv1))));
  }
  if (union2.empty()) return w.b2.view({1, -1, 1, 1}).expand({n, w.b2.size(0), h2, v2});
  const auto idx = indices(union2, device);
  return torch::conv2d(fuse_channels(out1, mask, segments).index_select(1, idx), w.w2.index_select(1, idx), w.b2,
                       *b.conv2->options.stride(), padding_of(*b.conv2));
}

// The same block computing only what the gates need (eval mode), BN folded into conv1 and conv2, frame by frame or
// as a whole batch as `how` says. Choice: Auto (and Frames) take frame by frame wherever our kernel runs (CPU,
// float, no gradient) - per multiply-accumulate it is about as fast as the dense convolution there (bench_kernels),
// so its exact savings beat the union's - and the batch way elsewhere (other devices, bf16), the same output.
torch::Tensor sparse_block(const GatedBlock& b, const torch::Tensor& x, const torch::Tensor& xs,
                           const torch::Tensor& mask, int64_t segments, Inference how) {
  const bool prepared = b.sparse.arranged1.defined() && b.sparse.arranged1.device() == x.device();
  const SparseWeights w = prepared ? b.sparse : sparse_weights(b);
  const std::vector<FrameNeeds> needs = frame_needs(mask, segments);
  // The kernel has no gradient: with one asked for, the batch way (LibTorch's convolutions) runs.
  const bool kernel = x.is_cpu() && x.scalar_type() == torch::kFloat && !torch::GradMode::is_enabled();
  if (!kernel || how == Inference::Batch) return block_end(b, batch_convs(b, w, xs, mask, needs, segments), x, xs);
  if (b.conv3) return block_end(b, frames_convs(b, w, xs, needs, segments, {}), x, xs, true);
  return frames_convs(b, w, xs, needs, segments, shortcut(b, xs, x).contiguous(torch::MemoryFormat::ChannelsLast));
}

}  // namespace

Inference parse_inference(const std::string& name, const std::string& where) {
  if (name == "dense") return Inference::Dense;
  if (name == "frames") return Inference::Frames;
  if (name == "batch") return Inference::Batch;
  if (name == "auto") return Inference::Auto;
  throw Error("model.adafuse.inference must be auto, frames, batch or dense, not '" + name + "'", where);
}

torch::Tensor gated_block(const GatedBlock& b, const torch::Tensor& x, const torch::Tensor& xs, const torch::Tensor& mask,
                          int64_t segments, Inference how) {
  return how != Inference::Dense && mask.defined() ? sparse_block(b, x, xs, mask, segments, how)
                                                   : dense_block(b, x, xs, mask, segments);
}

torch::Tensor AdaFuseImpl::frame_logits(const torch::Tensor& frames, GateMasks& gates, Inference how) {
  auto& resnet = *tsn->base_model->as<nn::ResNetImpl>();
  auto x = resnet.stem(frames);  // (N, Ci, H, W)
  const int64_t segments = frames_;
  for (GatedBlock& b : blocks) {
    // TSM shifts the block input (conv1, the policy and a downsampling shortcut read it; an identity one does not).
    const auto xs = b.tsm_segments > 0 ? nn::temporal_shift(x, b.tsm_segments, b.shift_div) : x;
    torch::Tensor mask;
    if (b.policy) {
      mask = decide(b.policy->forward(xs, segments));  // (N, G, 3)
      gates.masks.push_back(mask.view({-1, segments, mask.size(1), 3}));
      const int64_t h1 = conv_out(*b.conv1, xs.size(2), 0), v1 = conv_out(*b.conv1, xs.size(3), 1);
      gates.conv1.push_back(conv_macs(*b.conv1, xs.size(1), h1, v1));
      gates.conv2.push_back(conv_macs(*b.conv2, b.conv1->options.out_channels(), conv_out(*b.conv2, h1, 0),
                                      conv_out(*b.conv2, v1, 1)));
    }
    x = gated_block(b, x, xs, mask, segments, how);
  }
  return tsn->new_fc(tsn->dropout(resnet.pool(x)));  // (N, C)
}

void AdaFuseImpl::optimize_for_inference() {
  MethodImpl::optimize_for_inference();
  torch::NoGradGuard no_grad;
  for (GatedBlock& b : blocks)
    if (b.policy) b.sparse = sparse_weights(b);
}

double AdaFuseImpl::base_gflops(int64_t resolution) {
  auto it = base_gflops_.find(resolution);
  if (it != base_gflops_.end()) return it->second;
  const auto options = torch::TensorOptions().device(parameters()[0].device());
  const Clips clip{torch::zeros({1, frames_, 3, resolution, resolution}, options), {}};
  const bool was_training = is_training();
  eval();
  const double per_frame =
      nn::count_flops(*this, [&] { flops_forward(clip); }).gflops() / static_cast<double>(frames_);
  train(was_training);
  return base_gflops_[resolution] = per_frame;
}

void AdaFuseImpl::flops_forward(const Clips& clips) {
  // Every channel computed: the cost of the dense network with its gates, which the savings are counted from.
  torch::NoGradGuard no_grad;
  const bool argmax = argmax_at_test;
  argmax_at_test = true;  // no random draws: counting must not move the generator
  GateMasks unused;
  frame_logits(resized(clips.frames), unused, Inference::Dense);
  argmax_at_test = argmax;
}

Prediction AdaFuseImpl::predict(const Clips& clips) {
  const int64_t b = clips.frames.size(0);
  GateMasks gates;
  const auto per_frame =
      frame_logits(resized(clips.frames), gates, is_training() ? Inference::Dense : inference);  // (B*T, C)
  Prediction p;
  p.logits = per_frame.view({b, frames_, -1}).mean(1).unsqueeze(1);  // (B, 1, C): average consensus
  p.gflops = (gate_flops(gates, base_gflops(resolution_), true).real * static_cast<double>(frames_))
                 .to(torch::kDouble).expand({b}).contiguous().cpu();
  if (!gates.masks.empty()) {
    const auto fractions = action_fractions(gates, true).to(torch::kDouble).cpu();  // (B, 3) [skip, reuse, keep]
    p.video_means = {{"kept", fractions.select(1, 2)}, {"reused", fractions.select(1, 1)}, {"skipped", fractions.select(1, 0)}};
  }
  return p;
}

Losses AdaFuseImpl::loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) {
  GateMasks gates;
  const auto per_frame = frame_logits(resized(clips.frames), gates, Inference::Dense);  // (B*T, C)
  const auto logits = per_frame.view({clips.frames.size(0), frames_, -1}).mean(1);  // (B, C)
  const auto ce = F::cross_entropy(logits, target);
  const GateFlops f = gate_flops(gates, base_gflops(resolution_), false);
  // The official efficiency term: w * |GFLOPs per frame - 0| on the upper bound or the real count; from
  // train.policy_from_epoch on (official --eff_loss_after + 1: it adds the term when epoch > eff_loss_after, by
  // default -1, i.e. from the start, our 0): before the network has learned
  // anything the term alone drives the gates, and on the benchmark they all learned to skip in two epochs.
  const auto counted = (flops_loss_ == "real" ? f.real : f.upper_bound).to(ce.scalar_type());
  const double weight = context.epoch >= context.policy_from_epoch ? flops_weight_ : 0.0;
  Losses out;
  out.total = ce + weight * counted.abs();
  out.terms = {{"ce", ce.detach()}, {"gflops_term", (weight * counted.abs()).detach()}};
  out.statistics = {{"gflops", f.real.detach()}, {"gflops_upb", f.upper_bound.detach()}};
  if (!gates.masks.empty()) {
    const auto fractions = action_fractions(gates, false).detach();  // [skip, reuse, keep]
    out.statistics.push_back({"kept", fractions[2]});
    out.statistics.push_back({"reused", fractions[1]});
    out.statistics.push_back({"skipped", fractions[0]});
  }
  out.logits = logits.detach();
  return out;
}

std::vector<ParamGroup> AdaFuseImpl::param_groups() {
  // The official groups (ops/models_gate.py get_optim_policies, with --npb): weights at the base rate with weight
  // decay, biases at twice the rate without decay, batch-norm scales and shifts (the backbone's and the gates')
  // without decay. new_fc is an ordinary linear layer there: its x5 group is never filled. Our multipliers of the
  // backbone, the gates and the classifier (train.lr_local, lr_policy, lr_classifier; 1 in the paper presets) scale
  // each part's three groups.
  std::set<const c10::TensorImpl*> batch_norm;
  for (const auto& m : modules())
    if (m->as<torch::nn::BatchNorm2dImpl>() || m->as<torch::nn::BatchNorm1dImpl>())
      for (const auto& p : m->parameters()) batch_norm.insert(p.unsafeGetTensorImpl());
  using Named = std::vector<std::pair<std::string, torch::Tensor>>;
  Named backbone, policy;
  for (auto& p : prefixed_parameters("base_model", *tsn->base_model))
    (is_gate_parameter(p.first) ? policy : backbone).push_back(p);
  std::vector<ParamGroup> groups;
  for (const auto& [name, params, lr] : {std::make_tuple("backbone", backbone, lr_.local()),
                                         std::make_tuple("policy", policy, lr_.policy()),
                                         std::make_tuple("classifier", prefixed_parameters("new_fc", *tsn->new_fc),
                                                         lr_.classifier())}) {
    Named weights, biases, norms;
    for (const auto& p : params) {
      const bool bias = p.first.size() > 5 && p.first.compare(p.first.size() - 5, 5, ".bias") == 0;
      (batch_norm.count(p.second.unsafeGetTensorImpl()) ? norms : bias ? biases : weights).push_back(p);
    }
    const std::string n = name;
    groups.push_back({n, weights, lr, 1.0});
    groups.push_back({n + "_bias", biases, 2 * lr, 0.0});
    groups.push_back({n + "_bn", norms, lr, 0.0});
  }
  return groups;
}

nn::StateDict AdaFuseImpl::import_state_dict(const nn::StateDict& state) const {
  // Official: downsample0/1 for the shortcut, shared gate layers repeated under every block's policy_net, no
  // base_model.fc (replaced by dropout).
  nn::StateDict out;
  for (const auto& item : state) {
    std::string key = item.key();
    if (shared_ && key.find(".policy_net.gate_fc") != std::string::npos) continue;  // copies of gate_fc0s/gate_fc1s
    for (const char* d : {"downsample0", "downsample1"}) {
      const auto at = key.find(d);
      if (at != std::string::npos) key = key.substr(0, at) + "downsample." + d[10] + key.substr(at + 11);
    }
    out.insert(key, item.value());
  }
  for (const auto& item : tsn->unused_classifier())
    if (!out.contains(item.key())) out.insert(item.key(), item.value());
  return out;
}

nn::StateDict AdaFuseImpl::export_official_state_dict(const nn::StateDict& state) const {
  nn::StateDict out;
  const auto unused = tsn->unused_classifier();
  for (const auto& item : state) {
    if (unused.contains(item.key())) continue;
    std::string key = item.key();
    for (const char* d : {"downsample.0", "downsample.1"}) {
      const auto at = key.find(d);
      if (at != std::string::npos) key = key.substr(0, at) + "downsample" + d[11] + key.substr(at + 12);
    }
    out.insert(key, item.value());
  }
  if (shared_) {  // every block's policy_net also names the shared layers it uses
    auto* resnet = tsn->base_model->as<nn::ResNetImpl>();
    for (const auto& module : resnet->named_modules("base_model", false)) {
      auto* policy = module.value()->as<GatePolicyImpl>();
      if (!policy) continue;
      for (const auto& [name, fc] : {std::make_pair("gate_fc0", policy->gate_fc0), std::make_pair("gate_fc1", policy->gate_fc1)}) {
        out.insert(module.key() + "." + name + ".weight", fc->weight);
        out.insert(module.key() + "." + name + ".bias", fc->bias);
      }
    }
  }
  return out;
}

MethodInfo adafuse_method() {
  MethodInfo m = method_info_of<AdaFuseImpl, AdaFuseOptions>("adafuse");
  m.pretrained = {"backbone"};
  m.presets = {"sthv1_adafuse_tsn", "sthv1_adafuse_tsm", "sthv1_adafuse_tsm_last",
               "sthv2_adafuse_tsn", "sthv2_adafuse_tsm", "sthv2_adafuse_tsm_last"};
  m.statistics = {{"gflops", "GFLOPs {:.4g}"}, {"gflops_upb", ""}, {"kept", ""}, {"reused", ""}, {"skipped", "skip {:.2f}"}};
  m.dense_baseline = [](const Config& c) { return full_frame_of(c, "backbone"); };
  // Each way of running the gates (model.adafuse.inference) on its own, against the same dense baseline.
  m.bench_label = "gated channels only";
  m.baseline_label = "dense baseline";
  m.bench_variants = {{"frame by frame", {"model.adafuse.inference=frames"}, false},
                      {"batched union", {"model.adafuse.inference=batch"}, false},
                      {"gates, dense compute", {"model.adafuse.inference=dense"}, true}};
  m.flops_note = "every channel computed (gates included); what the gates save depends on the video: `adafocus eval` "
                 "counts it per video (official real and upper-bound formulas)";
  return m;
}

void AdaFuseImpl::load_pretrained(const Config& c) {
  // ImageNet weights into the backbone; the gates, which ImageNet models do not have, start as initialised.
  if (!c.get_string("model.backbone.weights").empty())
    load_backbone_weights(*tsn->base_model, c.get_string("model.backbone.weights"), is_gate_parameter);
}

}  // namespace adafocus::methods
