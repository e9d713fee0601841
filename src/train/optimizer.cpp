#include "train/optimizer.h"

#include <cmath>

#include "core/error.h"

namespace adafocus::train {

OptimizerOptions OptimizerOptions::from_config(const Config& config) {
  OptimizerOptions o;
  o.kind = config.get_string("train.optimizer");
  o.momentum = config.get_float("train.momentum");
  o.weight_decay = config.get_float("train.weight_decay");
  return o;
}

Optimizer::Optimizer(std::vector<methods::ParamGroup> groups, OptimizerOptions options)
    : groups_(std::move(groups)), options_(std::move(options)) {
  if (options_.kind != "sgd" && options_.kind != "adam")
    throw Error("train.optimizer must be sgd or adam, not '" + options_.kind + "'");
}

void Optimizer::zero_grad() {
  for (auto& g : groups_)
    for (auto& [name, p] : g.params)
      if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
}

void Optimizer::step(double lr) {
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) {
    const double group_lr = lr * g.lr_mult, decay = options_.weight_decay * g.decay_mult;
    for (auto& [name, p] : g.params) {
      if (!p.grad().defined()) continue;
      torch::Tensor grad = p.grad();
      if (decay != 0) grad = grad.add(p, decay);
      if (options_.kind == "sgd") {
        if (options_.momentum != 0) {
          auto it = state_.find(name + ".momentum_buffer");
          if (it == state_.end())
            it = state_.emplace(name + ".momentum_buffer", grad.clone()).first;  // first step: the gradient
          else
            it->second.mul_(options_.momentum).add_(grad);
          grad = it->second;
        }
        p.add_(grad, -group_lr);
        continue;
      }
      // Adam
      auto& m = state_[name + ".exp_avg"];
      auto& v = state_[name + ".exp_avg_sq"];
      auto& t = state_[name + ".step"];
      if (!m.defined()) {
        m = torch::zeros_like(p);
        v = torch::zeros_like(p);
        t = torch::zeros({}, torch::kDouble);
      }
      t += 1;
      const double step = t.item<double>();
      m.mul_(options_.beta1).add_(grad, 1 - options_.beta1);
      v.mul_(options_.beta2).addcmul_(grad, grad, 1 - options_.beta2);
      const double bias1 = 1 - std::pow(options_.beta1, step), bias2 = 1 - std::pow(options_.beta2, step);
      const auto denom = (v.sqrt() / std::sqrt(bias2)).add_(options_.eps);
      p.addcdiv_(m, denom, -group_lr / bias1);
    }
  }
}

double Optimizer::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  double total = 0;
  for (auto& g : groups_)
    for (auto& [name, p] : g.params)
      if (p.grad().defined()) total += p.grad().pow(2).sum().item<double>();
  total = std::sqrt(total);
  const double scale = max_norm / (total + 1e-6);
  if (scale < 1)
    for (auto& g : groups_)
      for (auto& [name, p] : g.params)
        if (p.grad().defined()) p.mutable_grad().mul_(scale);
  return total;
}

torch::OrderedDict<std::string, torch::Tensor> Optimizer::state() const {
  torch::OrderedDict<std::string, torch::Tensor> out;
  for (const auto& [name, t] : state_) out.insert(name, t);
  return out;
}

void Optimizer::load_state(const torch::OrderedDict<std::string, torch::Tensor>& state) {
  std::map<std::string, torch::Tensor> params;
  for (auto& g : groups_)
    for (auto& [name, p] : g.params) params[name] = p;
  state_.clear();
  for (const auto& item : state) {
    const std::string& key = item.key();
    const std::string param = key.substr(0, key.rfind('.'));
    auto it = params.find(param);
    if (it == params.end())
      throw Error("optimizer state for unknown parameter '" + param + "'", "", "the checkpoint is of another model");
    const bool scalar = key.size() > 5 && key.compare(key.size() - 5, 5, ".step") == 0;
    if (!scalar && !item.value().sizes().equals(it->second.sizes()))
      throw Error("optimizer state '" + key + "' does not match its parameter's shape");
    state_[key] = item.value().to(scalar ? torch::TensorOptions(torch::kDouble) : it->second.options()).clone();
  }
}

double learning_rate(const std::string& schedule, double lr, int64_t epoch, int64_t step, int64_t steps,
                     int64_t epochs, double warmup, const std::vector<int64_t>& lr_steps) {
  constexpr double kPi = 3.14159265358979323846;
  if (schedule == "constant") return lr;
  if (schedule == "step") {
    for (int64_t at : lr_steps)
      if (epoch >= at) lr *= 0.1;
    return lr;
  }
  if (schedule == "cosine") return 0.5 * lr * (1 + std::cos(kPi * static_cast<double>(epoch) / epochs));
  if (schedule == "onecycle") {
    const double start = lr / 25, end = start / 1e4, total = static_cast<double>(epochs * steps);
    const double s = static_cast<double>(epoch * steps + step), warm_end = warmup * total - 1;
    auto anneal = [&](double from, double to, double pct) { return to + (from - to) / 2 * (std::cos(kPi * pct) + 1); };
    if (s <= warm_end) return anneal(start, lr, s / warm_end);
    return anneal(lr, end, (s - warm_end) / (total - 1 - warm_end));
  }
  throw Error("train.schedule must be cosine, onecycle, step or constant, not '" + schedule + "'");
}

}  // namespace adafocus::train
