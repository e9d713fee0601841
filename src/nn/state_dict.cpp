#include "nn/state_dict.h"

#include <fmt/format.h>

#include "core/error.h"

namespace adafocus::nn {

namespace {
std::string shape(const torch::Tensor& t) { return fmt::format("({})", fmt::join(t.sizes(), ", ")); }
}  // namespace

StateDict state_dict(const torch::nn::Module& module) {
  StateDict out;
  for (const auto& item : module.named_modules()) {
    const std::string prefix = item.key().empty() ? "" : item.key() + ".";
    for (const auto& p : item.value()->named_parameters(/*recurse=*/false)) out.insert(prefix + p.key(), p.value());
    for (const auto& b : item.value()->named_buffers(/*recurse=*/false)) out.insert(prefix + b.key(), b.value());
  }
  return out;
}

StateDict strip_module_prefix(const StateDict& state) {
  const std::string prefix = "module.";
  StateDict out;
  for (const auto& item : state) {
    const std::string& key = item.key();
    out.insert(key.rfind(prefix, 0) == 0 ? key.substr(prefix.size()) : key, item.value());
  }
  return out;
}

void load_state_dict(torch::nn::Module& module, const StateDict& raw, const std::string& source) {
  const StateDict state = strip_module_prefix(raw);
  StateDict expected = state_dict(module);
  // Each kind of problem listed separately (a few of each), so a wholly different model shows both sides.
  std::vector<std::string> unexpected, missing, mismatched;
  for (const auto& item : state) {
    const torch::Tensor* target = expected.find(item.key());
    if (!target)
      unexpected.push_back("unexpected key '" + item.key() + "' " + shape(item.value()));
    else if (!target->sizes().equals(item.value().sizes()))
      mismatched.push_back(fmt::format("'{}' has shape {} in the file but {} in the model", item.key(),
                                       shape(item.value()), shape(*target)));
  }
  for (const auto& item : expected)
    if (!state.contains(item.key())) missing.push_back("missing key '" + item.key() + "' " + shape(item.value()));

  const size_t count = unexpected.size() + missing.size() + mismatched.size();
  if (count > 0) {
    constexpr size_t kShown = 6;
    std::string message = fmt::format("weights do not fit the model ({} problems):", count);
    for (const auto* kind : {&mismatched, &missing, &unexpected}) {
      for (size_t i = 0; i < std::min(kind->size(), kShown); ++i) message += "\n  " + (*kind)[i];
      if (kind->size() > kShown) message += fmt::format("\n  ... and {} more like this", kind->size() - kShown);
    }
    throw Error(message, source,
                "check the architecture options (arch, width, number of classes) against the ones the weights were "
                "trained with");
  }
  torch::NoGradGuard no_grad;
  for (const auto& item : state) expected[item.key()].copy_(item.value());
}

}  // namespace adafocus::nn
