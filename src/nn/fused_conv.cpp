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

memory::desc blocked(const memory::dims& dims, Type type) { return {dims, type, block_tag()}; }

FoldedConv contiguous_float(const FoldedConv& c) {
  return {c.weight.to(torch::kFloat).contiguous(), c.bias.to(torch::kFloat).contiguous()};
}

}  // namespace

struct ConvChain::Impl {
  std::vector<ChainLayer> layers;  // weights contiguous float (NCHW)

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

  memory pack(const torch::Tensor& w, const memory::desc& plain, const memory::desc& wanted) {
    for (const auto& [from, m] : packed)
      if (from == w.data_ptr() && m.get_desc() == wanted) return m;
    memory from(plain, cpu(), w.data_ptr()), to(wanted, cpu());
    dnnl::reorder(from, to).execute(this_thread_stream(), from, to);
    this_thread_stream().wait();
    packed.emplace_back(w.data_ptr(), to);
    return to;
  }

  // type: of the maps and weights (f32, or bf16 under autocast); biases and accumulation stay f32.
  std::optional<Step> step(const memory::desc& src, const ChainLayer& l, Type type) {
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
    st.dst = blocked(out, type);
    if (l.residual >= 1) {
      st.residual_arg = DNNL_ARG_ATTR_MULTIPLE_POST_OP(ops.len()) | DNNL_ARG_SRC_1;
      ops.append_binary(dnnl::algorithm::binary_add, st.dst);
    }
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    const memory::desc bias_desc({cout}, Type::f32, Tag::a);
    const dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                            src, memory::desc(weight_dims, type, Tag::any), bias_desc,
                                            blocked(conv_out, type), {s, s}, {pad, pad}, {pad, pad});
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
    st.bound[DNNL_ARG_WEIGHTS] =
        pack(w, memory::desc(weight_dims, Type::f32, g == 1 ? Tag::oihw : Tag::goihw), pd.weights_desc());
    st.bound[DNNL_ARG_BIAS] = memory(bias_desc, cpu(), l.conv.bias.data_ptr());
    if (l.depthwise) {
      const int dw = DNNL_ARG_ATTR_POST_OP_DW;
      st.bound[dw | DNNL_ARG_WEIGHTS] = pack(l.depthwise->weight, memory::desc({cout, 1, 1, 3, 3}, Type::f32, Tag::goihw),
                                             pd.query_md(dnnl::query::exec_arg_md, dw | DNNL_ARG_WEIGHTS));
      st.bound[dw | DNNL_ARG_BIAS] = memory(bias_desc, cpu(), l.depthwise->bias.data_ptr());
    }
    return st;
  }

  // f32: the first layer reads the network's input as LibTorch holds it (NCHW); bf16: a copy of it in the layout
  // oneDNN picks (with 3 channels, blocked bf16 has only the reference implementation).
  Plan build(const memory::dims& input, Type type) {
    Plan plan;
    memory::desc src(input, type, type == Type::f32 ? Tag::nchw : Tag::any);
    for (const ChainLayer& l : layers) {
      auto st = step(src, l, type);
      if (!st) return {};
      src = st->dst;
      plan.push_back(*st);
    }
    return plan;
  }
};

ConvChain::ConvChain(const std::vector<ChainLayer>& layers) : impl_(std::make_shared<Impl>()) {
  for (size_t i = 0; i < layers.size(); ++i) {
    ChainLayer l = layers[i];
    TORCH_CHECK(l.conv.weight.defined() && l.conv.weight.dim() == 4, "ConvChain: layer ", i, " is no 2-d convolution");
    TORCH_CHECK(l.residual < static_cast<int64_t>(i) && l.residual != 0, "ConvChain: layer ", i, " adds layer ",
                l.residual, "'s input");
    l.conv = contiguous_float(l.conv);
    if (l.depthwise) {
      TORCH_CHECK(l.depthwise->weight.size(0) == l.conv.weight.size(0) && l.depthwise->weight.size(2) == 3,
                  "ConvChain: layer ", i, "'s depthwise convolution is not 3x3 over its channels");
      l.depthwise = contiguous_float(*l.depthwise);
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
  const auto in = x.contiguous();  // (N, Cin, H, W)
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
  memory plain({in.sizes().vec(), Type::f32, Tag::nchw}, cpu(), in.data_ptr());
  std::vector<memory> inputs{plain};
  if (bf16) {
    inputs[0] = buffer(plan->front().src);
    dnnl::reorder(plain, inputs[0]).execute(this_thread_stream(), plain, inputs[0]);
  }
  for (size_t i = 0; i < plan->size(); ++i) {
    const Impl::Step& st = (*plan)[i];
    inputs.push_back(buffer(st.dst));
    auto args = st.bound;
    args[DNNL_ARG_SRC] = inputs[i];
    args[DNNL_ARG_DST] = inputs[i + 1];
    if (st.residual_arg) args[st.residual_arg] = inputs[static_cast<size_t>(m.layers[i].residual)];
    st.primitive.execute(this_thread_stream(), args);
  }
  const memory::dims dims = plan->back().dst.dims();
  auto out = torch::empty(dims, in.options()
                                     .dtype(bf16 ? torch::kBFloat16 : torch::kFloat)
                                     .memory_format(torch::MemoryFormat::ChannelsLast));  // (N, Cout, H', W')
  memory to({dims, type, Tag::nhwc}, cpu(), out.data_ptr());
  dnnl::reorder(inputs.back(), to).execute(this_thread_stream(), inputs.back(), to);
  this_thread_stream().wait();
  return out;
}

}  // namespace adafocus::nn
