#include "nn/flop_counter.h"

#include <ATen/record_function.h>

#include <unordered_map>

namespace adafocus::nn {

namespace {

enum class OpKind { Conv, ConvTranspose, Linear, MatMul, AddMM, BatchNorm, Rnn, RnnCell };

const std::unordered_map<std::string, OpKind>& counted_ops() {
  static const std::unordered_map<std::string, OpKind> ops{
      {"aten::conv1d", OpKind::Conv},          {"aten::conv2d", OpKind::Conv},
      {"aten::conv3d", OpKind::Conv},          {"aten::convolution", OpKind::Conv},
      {"aten::_convolution", OpKind::Conv},    {"aten::mkldnn_convolution", OpKind::Conv},
      {"aten::conv_transpose1d", OpKind::ConvTranspose},
      {"aten::conv_transpose2d", OpKind::ConvTranspose}, {"aten::conv_transpose3d", OpKind::ConvTranspose},
      {"aten::linear", OpKind::Linear},        {"aten::matmul", OpKind::MatMul},
      {"aten::mm", OpKind::MatMul},            {"aten::bmm", OpKind::MatMul},
      {"aten::addmm", OpKind::AddMM},          {"aten::batch_norm", OpKind::BatchNorm},
      {"aten::gru", OpKind::Rnn},              {"aten::lstm", OpKind::Rnn},
      {"aten::rnn_tanh", OpKind::Rnn},         {"aten::rnn_relu", OpKind::Rnn},
      {"aten::gru_cell", OpKind::RnnCell},     {"aten::lstm_cell", OpKind::RnnCell},
      {"aten::rnn_tanh_cell", OpKind::RnnCell}, {"aten::rnn_relu_cell", OpKind::RnnCell}};
  return ops;
}

const char* op_label(OpKind kind) {
  switch (kind) {
    case OpKind::Conv: return "conv";
    case OpKind::ConvTranspose: return "conv_transpose";
    case OpKind::Linear: return "linear";
    case OpKind::MatMul:
    case OpKind::AddMM: return "matmul";
    case OpKind::BatchNorm: return "batch_norm";
    case OpKind::Rnn: return "rnn";
    case OpKind::RnnCell: return "rnn_cell";
  }
  return "?";
}

struct Counter {
  std::unordered_map<const void*, std::string> names;  // parameter data pointer -> module path
  FlopsReport report;
  int depth = 0;  // counted ops call each other (conv2d -> convolution -> ...): count the outermost only
};
thread_local Counter* active = nullptr;

// What the start callback learns from the inputs (valid only then: the kernel consumes its argument stack).
struct OpContext : at::ObserverContext {
  bool outermost = false;
  LayerFlops layer;        // name, op, input shape, and MACs known from the inputs
  int64_t per_output = 0;  // MACs per output element, for ops whose output size is known only at the end
};

const at::Tensor* tensor_arg(c10::ArrayRef<const c10::IValue> inputs, size_t i) {
  return i < inputs.size() && inputs[i].isTensor() && inputs[i].toTensor().defined() ? &inputs[i].toTensor()
                                                                                       : nullptr;
}

std::string layer_name(const at::Tensor* weight) {
  if (!weight) return "";
  auto it = active->names.find(weight->data_ptr());
  return it == active->names.end() ? "" : it->second;
}

void describe(OpKind kind, c10::ArrayRef<const c10::IValue> inputs, OpContext& ctx) {
  const at::Tensor* input = tensor_arg(inputs, 0);
  const at::Tensor* named_by = nullptr;
  int64_t& macs = ctx.layer.macs;
  switch (kind) {
    case OpKind::Conv: {  // output elements x (C_in / groups x kernel); weight (C_out, C_in/g, k...)
      named_by = tensor_arg(inputs, 1);
      if (named_by) ctx.per_output = named_by->numel() / named_by->size(0);
      break;
    }
    case OpKind::ConvTranspose: {  // input elements x (C_out / groups x kernel); weight (C_in, C_out/g, k...)
      named_by = tensor_arg(inputs, 1);
      if (named_by && input) macs = input->numel() * (named_by->numel() / named_by->size(0));
      break;
    }
    case OpKind::Linear: {  // one MAC per input element per output feature; weight (out, in); bias not counted
      named_by = tensor_arg(inputs, 1);
      if (named_by && input) macs = input->numel() * named_by->size(0);
      break;
    }
    case OpKind::MatMul:
    case OpKind::AddMM: {  // output elements x inner dimension
      const size_t a = kind == OpKind::AddMM ? 1 : 0;
      named_by = tensor_arg(inputs, a + 1);
      if (tensor_arg(inputs, a) && tensor_arg(inputs, a)->dim() > 0) ctx.per_output = tensor_arg(inputs, a)->size(-1);
      break;
    }
    case OpKind::BatchNorm: {  // one per channel per sample (the papers' convention)
      named_by = tensor_arg(inputs, 1) ? tensor_arg(inputs, 1) : tensor_arg(inputs, 3);
      if (input && input->dim() >= 2) macs = input->size(0) * input->size(1);
      break;
    }
    case OpKind::Rnn: {  // every position of the sequence runs every layer's w_ih and w_hh
      if (inputs.size() > 2 && inputs[2].isTensorList()) {
        const std::vector<at::Tensor> params = inputs[2].toTensorList().vec();
        int64_t weights = 0;
        for (const auto& w : params)
          if (w.dim() == 2) weights += w.numel();  // biases are not MACs
        if (input && input->dim() >= 2) macs = input->numel() / input->size(-1) * weights;
        if (!params.empty()) ctx.layer.name = layer_name(&params[0]);
      }
      break;
    }
    case OpKind::RnnCell: {
      const at::Tensor* w_ih = tensor_arg(inputs, 2);
      const at::Tensor* w_hh = tensor_arg(inputs, 3);
      named_by = w_ih;
      if (input && w_ih && w_hh) macs = input->numel() / input->size(-1) * (w_ih->numel() + w_hh->numel());
      break;
    }
  }
  if (ctx.layer.name.empty()) ctx.layer.name = layer_name(named_by);
  if (input) ctx.layer.input_shape = input->sizes().vec();
  ctx.layer.op = op_label(kind);
}

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  if (!active) return nullptr;
  auto it = counted_ops().find(fn.name());
  if (it == counted_ops().end()) return nullptr;
  auto ctx = std::make_unique<OpContext>();
  ctx->outermost = active->depth++ == 0;
  if (ctx->outermost) {
    describe(it->second, fn.inputs(), *ctx);
    if (ctx->layer.name.empty()) ctx->layer.name = fn.name();
  }
  return ctx;
}

void on_end(const at::RecordFunction& fn, at::ObserverContext* base) {
  auto* ctx = static_cast<OpContext*>(base);
  if (!active || !ctx) return;
  active->depth--;
  if (!ctx->outermost) return;
  if (!fn.outputs().empty() && fn.outputs()[0].isTensor()) {
    const at::Tensor& output = fn.outputs()[0].toTensor();
    ctx->layer.output_shape = output.sizes().vec();
    ctx->layer.macs += ctx->per_output * output.numel();
  }
  active->report.total += ctx->layer.macs;
  active->report.layers.push_back(std::move(ctx->layer));
}

}  // namespace

bool counting_flops() { return active != nullptr; }

void count_kernel(const std::string& op, const std::vector<int64_t>& output_shape, int64_t macs) {
  if (!active) return;
  active->report.total += macs;
  active->report.layers.push_back({op, op, {}, output_shape, macs});
}

FlopsReport count_flops(const torch::nn::Module& module, const std::function<void()>& forward) {
  UnfoldedGuard unfolded;  // BN counted as the papers count it, also on a model optimised for inference
  Counter counter;
  for (const auto& p : module.named_parameters()) {
    const std::string& key = p.key();
    const size_t dot = key.rfind('.');
    counter.names[p.value().data_ptr()] = dot == std::string::npos ? key : key.substr(0, dot);
  }
  for (const auto& b : module.named_buffers()) {
    const std::string& key = b.key();
    const size_t dot = key.rfind('.');
    counter.names.emplace(b.value().data_ptr(), dot == std::string::npos ? key : key.substr(0, dot));
  }

  struct Registration {  // removes the callback even when forward throws
    Registration()
        : handle(at::addThreadLocalCallback(
              at::RecordFunctionCallback(&on_start, &on_end).needsInputs(true).needsOutputs(true))) {}
    ~Registration() {
      at::removeCallback(handle);
      active = nullptr;
    }
    at::CallbackHandle handle;
  } registration;
  active = &counter;
  forward();
  return std::move(counter.report);
}

FlopsReport backbone_flops(BackboneImpl& backbone, int64_t height, int64_t width, int64_t frames) {
  const bool was_training = backbone.is_training();
  backbone.eval();
  torch::NoGradGuard no_grad;
  const auto device = backbone.parameters().empty() ? torch::kCPU : backbone.parameters()[0].device();
  const auto input = torch::zeros({frames, 3, height, width}, torch::TensorOptions().device(device));
  FlopsReport report = count_flops(backbone, [&] { backbone.pool(backbone.feature_map(input)); });
  backbone.train(was_training);
  report.total /= frames;
  for (auto& layer : report.layers) layer.macs /= frames;
  return report;
}

}  // namespace adafocus::nn
