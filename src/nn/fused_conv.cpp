#include "nn/fused_conv.h"

#include <ATen/autocast_mode.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <map>
#include <mutex>

namespace adafocus::nn {

bool onednn_avx512() {
  static const bool avx512 = dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core;
  return avx512;
}

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Type = memory::data_type;

const dnnl::engine& cpu() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& this_thread_stream() {  // a stream is not for concurrent use; primitives are
  thread_local dnnl::stream stream(cpu());
  return stream;
}

thread_local bool chains_on = true;

// oneDNN's JIT kernels work on blocks of 16 channels with AVX-512 and 8 with AVX2: given the other width, they
// convert the maps or fall back to slower kernels (nChw8c on an AVX-512 CPU made the chain slower than LibTorch's
// layers).
Tag block_tag() { return onednn_avx512() ? Tag::nChw16c : Tag::nChw8c; }

FoldedConv float_weights(const FoldedConv& c) {
  return {c.weight.to(torch::kFloat), c.bias.to(torch::kFloat).contiguous()};
}

// A float weight (Cout, Cin / g, k, k) as it lies in memory (plain or channels-last), in oneDNN's (g, Cout / g,
// Cin / g, k, k) when grouped.
memory::desc plain_weights(const torch::Tensor& w, int64_t g) {
  const auto d = w.sizes().vec(), s = w.strides().vec();
  if (g == 1) return {d, Type::f32, s};
  return {{g, d[0] / g, d[1], d[2], d[3]}, Type::f32, {d[0] / g * s[0], s[0], s[1], s[2], s[3]}};
}

}  // namespace

struct ConvChain::Impl {
  std::vector<ChainLayer> layers;  // weights float
  bool channels_last = false;

  // One layer at one input size: its primitive with weights and biases bound, its output's layout.
  struct Step {
    dnnl::primitive primitive;
    std::unordered_map<int, memory> bound;
    memory::desc src, dst;  // src: the layout oneDNN chose where it was asked to (Tag::any)
    int residual_arg = 0;  // DNNL_ARG_ATTR_MULTIPLE_POST_OP(i) | DNNL_ARG_SRC_1, or 0
  };
  using Plan = std::vector<Step>;  // empty: a layer has no fast implementation here (the caller uses LibTorch's)

  std::mutex mutex;
  std::map<std::vector<int64_t>, std::shared_ptr<const Plan>> plans;  // by input (N, H, W, bf16)
  std::vector<std::pair<const void*, memory>> packed;  // each weight in the layout a primitive asked for, shared

  memory pack(const torch::Tensor& w, int64_t groups, const memory::desc& wanted) {
    for (const auto& [from, m] : packed)
      if (from == w.data_ptr() && m.get_desc() == wanted) return m;
    memory from(plain_weights(w, groups), cpu(), w.data_ptr()), to(wanted, cpu());
    dnnl::reorder(from, to).execute(this_thread_stream(), from, to);
    this_thread_stream().wait();
    packed.emplace_back(w.data_ptr(), to);
    return to;
  }

  // type: of the maps and weights (f32, or bf16 under autocast); biases and accumulation stay f32. dst: the output's
  // layout (Tag::any: oneDNN's choice).
  std::optional<Step> step(const memory::desc& src, const ChainLayer& l, Type type, Tag dst) {
    const auto& w = l.conv.weight;
    const int64_t cout = w.size(0), k = w.size(2), pad = (k - 1) / 2, s = l.stride, g = l.groups;
    const memory::dims in = src.dims();
    const memory::dims conv_out{in[0], cout, (in[2] + 2 * pad - k) / s + 1, (in[3] + 2 * pad - k) / s + 1};
    memory::dims out = conv_out;
    const memory::dims weight_dims = g == 1 ? memory::dims{cout, w.size(1), k, k}
                                            : memory::dims{g, cout / g, w.size(1), k, k};
    dnnl::post_ops ops;
    if (l.relu6) ops.append_eltwise(1.f, dnnl::algorithm::eltwise_clip, 0.f, 6.f);
    if (l.depthwise) {
      ops.append_dw(type, Type::f32, type, 3, l.depthwise_stride, 1, 0, {});
      ops.append_eltwise(1.f, dnnl::algorithm::eltwise_clip, 0.f, 6.f);
      out[2] = (out[2] - 1) / l.depthwise_stride + 1;  // 3x3, padding 1
      out[3] = (out[3] - 1) / l.depthwise_stride + 1;
    }
    Step st;
    st.dst = memory::desc(out, type, dst);
    if (l.residual >= 1) {
      st.residual_arg = DNNL_ARG_ATTR_MULTIPLE_POST_OP(ops.len()) | DNNL_ARG_SRC_1;
      ops.append_binary(dnnl::algorithm::binary_add, st.dst);
    }
    if (l.relu) ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    const memory::desc bias_desc({cout}, Type::f32, Tag::a);
    const dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                            src, memory::desc(weight_dims, type, Tag::any), bias_desc,
                                            memory::desc(conv_out, type, dst), {s, s}, {pad, pad}, {pad, pad});
    dnnl::convolution_forward::primitive_desc pd;
    try {
      pd = dnnl::convolution_forward::primitive_desc(d, attr, cpu());
    } catch (const dnnl::error&) {
      return std::nullopt;
    }
    // ref_fused_convolution runs the JIT convolution and the JIT depthwise one after the other: as fast as unfused.
    const std::string impl = pd.impl_info_str();
    if (impl.rfind("ref", 0) == 0 && impl.rfind("ref_fused", 0) != 0) return std::nullopt;
    st.primitive = dnnl::convolution_forward(pd);
    st.src = pd.src_desc();
    st.dst = pd.dst_desc();
    st.bound[DNNL_ARG_WEIGHTS] = pack(w, g, pd.weights_desc());
    st.bound[DNNL_ARG_BIAS] = memory(bias_desc, cpu(), l.conv.bias.data_ptr());
    if (l.depthwise) {
      const int dw = DNNL_ARG_ATTR_POST_OP_DW;
      st.bound[dw | DNNL_ARG_WEIGHTS] =
          pack(l.depthwise->weight, cout, pd.query_md(dnnl::query::exec_arg_md, dw | DNNL_ARG_WEIGHTS));
      st.bound[dw | DNNL_ARG_BIAS] = memory(bias_desc, cpu(), l.depthwise->bias.data_ptr());
    }
    return st;
  }

  // The first layer reads the input as LibTorch holds it (NCHW; nhwc when channels_last), except in bf16 when
  // blocked (with 3 channels, blocked bf16 has only the reference implementation): a copy in the layout oneDNN
  // picks. Channels-last falls back to oneDNN's layouts where nhwc has only the reference implementation.
  Plan build(const memory::dims& input, Type type) {
    Plan plan;
    memory::desc src(input, type, channels_last ? Tag::nhwc : type == Type::f32 ? Tag::nchw : Tag::any);
    for (const ChainLayer& l : layers) {
      auto st = step(src, l, type, channels_last ? Tag::nhwc : block_tag());
      if (!st && channels_last && l.residual < 1)
        st = step(plan.empty() ? memory::desc(input, type, Tag::any) : src, l, type, Tag::any);
      if (!st) return {};
      src = st->dst;
      plan.push_back(*st);
    }
    return plan;
  }
};

ConvChain::ConvChain(const std::vector<ChainLayer>& layers, bool channels_last) : impl_(std::make_shared<Impl>()) {
  impl_->channels_last = channels_last;
  for (size_t i = 0; i < layers.size(); ++i) {
    ChainLayer l = layers[i];
    TORCH_CHECK(l.conv.weight.defined() && l.conv.weight.dim() == 4, "ConvChain: layer ", i, " is no 2-d convolution");
    TORCH_CHECK(l.residual < static_cast<int64_t>(i) && l.residual != 0, "ConvChain: layer ", i, " adds layer ",
                l.residual, "'s input");
    l.conv = float_weights(l.conv);
    if (l.depthwise) {
      TORCH_CHECK(!channels_last, "ConvChain: layer ", i, ": no depthwise post-op in channels-last");
      TORCH_CHECK(l.depthwise->weight.size(0) == l.conv.weight.size(0) && l.depthwise->weight.size(2) == 3,
                  "ConvChain: layer ", i, "'s depthwise convolution is not 3x3 over its channels");
      l.depthwise = float_weights(*l.depthwise);
    }
    impl_->layers.push_back(l);
  }
}

bool ConvChain::runs(const torch::Tensor& x) {
  return onednn_inference(x, true) && x.dim() == 4 && folding_enabled() && chains_on;
}

ChainOffGuard::ChainOffGuard() : previous_(chains_on) { chains_on = false; }
ChainOffGuard::~ChainOffGuard() { chains_on = previous_; }

torch::Tensor ConvChain::operator()(const torch::Tensor& x) const {
  Impl& m = *impl_;
  TORCH_CHECK(runs(x) && x.size(1) == m.layers[0].conv.weight.size(1) * m.layers[0].groups, "ConvChain: input ",
              x.sizes(), " for weights ", m.layers[0].conv.weight.sizes());
  const auto in = m.channels_last ? x.contiguous(torch::MemoryFormat::ChannelsLast) : x.contiguous();  // (N, Cin, H, W)
  // Under bf16 autocast the chain computes in bf16 and returns bf16, as autocast's convolutions would.
  const bool bf16 = at::autocast::is_cpu_enabled();
  const Type type = bf16 ? Type::bf16 : Type::f32;
  std::shared_ptr<const Impl::Plan> plan;
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    auto& slot = m.plans[{in.size(0), in.size(2), in.size(3), bf16}];
    if (!slot) slot = std::make_shared<const Impl::Plan>(m.build(in.sizes().vec(), type));
    plan = slot;
  }
  if (plan->empty()) return {};
  // Every layer's input (the chain's own, then each output in blocked layout, in buffers LibTorch allocates); kept
  // until the end, where a later layer may add one.
  std::vector<torch::Tensor> buffers;
  auto buffer = [&](const memory::desc& d) {
    buffers.push_back(torch::empty({static_cast<int64_t>(d.get_size())}, in.options().dtype(torch::kByte)));
    return memory(d, cpu(), buffers.back().data_ptr());
  };
  // The input as it is, or converted into the layout and type the first layer reads.
  memory given({in.sizes().vec(), in.scalar_type() == torch::kBFloat16 ? Type::bf16 : Type::f32,
                m.channels_last ? Tag::nhwc : Tag::nchw},
               cpu(), in.data_ptr());
  std::vector<memory> inputs{given};
  if (given.get_desc() != plan->front().src) {
    inputs[0] = buffer(plan->front().src);
    dnnl::reorder(given, inputs[0]).execute(this_thread_stream(), given, inputs[0]);
  }
  const memory::dims dims = plan->back().dst.dims();
  auto out = torch::empty(dims, in.options()
                                     .dtype(bf16 ? torch::kBFloat16 : torch::kFloat)
                                     .memory_format(torch::MemoryFormat::ChannelsLast));  // (N, Cout, H', W')
  memory to({dims, type, Tag::nhwc}, cpu(), out.data_ptr());
  for (size_t i = 0; i < plan->size(); ++i) {
    const Impl::Step& st = (*plan)[i];
    const bool last = i + 1 == plan->size();
    inputs.push_back(last && st.dst == to.get_desc() ? to : buffer(st.dst));  // the last in place where it can
    auto args = st.bound;
    args[DNNL_ARG_SRC] = inputs[i];
    args[DNNL_ARG_DST] = inputs[i + 1];
    if (st.residual_arg) args[st.residual_arg] = inputs[static_cast<size_t>(m.layers[i].residual)];
    st.primitive.execute(this_thread_stream(), args);
  }
  if (inputs.back().get_data_handle() != to.get_data_handle())
    dnnl::reorder(inputs.back(), to).execute(this_thread_stream(), inputs.back(), to);
  this_thread_stream().wait();
  return out;
}

}  // namespace adafocus::nn
