// adafocus._core: the C++ library for Python (pybind11), beside Debian's python3-torch - the same LibTorch build, so
// tensors pass both ways without a copy (torch/extension.h's caster shares the storage). The public API, its
// docstrings and the conversions of JSON answers to dicts are python/adafocus/__init__.py; this file only binds.
// Every call that computes releases the GIL; a pending Ctrl-C stops long loops at their next batch
// (core/host.h); adafocus::Error arrives as FileNotFoundError (it says a file it names is missing) or ValueError.
#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <sys/stat.h>
#include <torch/extension.h>

#include <nlohmann/json.hpp>
#include <algorithm>
#include <cctype>
#include <optional>

#include "core/config.h"
#include "core/error.h"
#include "core/host.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "infer/evaluate.h"
#include "infer/predictor.h"
#include "io/frame_source.h"
#include "methods/checkpoint.h"
#include "methods/method.h"
#include "train/trainer.h"

namespace py = pybind11;
using namespace adafocus;

namespace {

// A loaded model with what its calls need besides: the checkpoint's path (errors name it) and its device.
struct Model {
  methods::LoadedModel loaded;
  std::string checkpoint;
  torch::Device device;
};

Model load(const std::string& checkpoint, const std::string& preset, const std::string& device,
           const std::vector<std::string>& overrides, const std::string& classes) {
  py::gil_scoped_release release;
  Model m{methods::load_model(checkpoint, preset, overrides, torch::Device(device)), checkpoint, torch::Device(device)};
  if (!classes.empty()) infer::set_class_names(m.loaded, classes);
  return m;
}

// The exit rule for a budget or a thresholds file (none: every exit runs), and the expected cost it was fitted for.
std::optional<std::pair<infer::ExitRule, double>> exit_rule(const Model& m, double budget, const std::string& thresholds) {
  if (budget < 0 && thresholds.empty()) return std::nullopt;
  // `thresholds`: a file of calibrate --out, or such a table's JSON text (a dict in Python)
  const infer::ExitTable table = !thresholds.empty() && thresholds[0] == '{'
                                     ? infer::ExitTable::from_json(thresholds, "thresholds")
                                     : infer::exit_table(m.loaded, thresholds, m.checkpoint);
  const infer::ExitSetting s = table.for_budget_or_all(budget);
  return std::make_pair(infer::ExitRule{table.criterion, s.thresholds}, s.gflops);
}

// predict --json's answer (with `raw`: predict --raw's), as JSON text.
std::string answer(const Model& m, const infer::VideoPrediction& p, const std::string& video, int64_t top_k, bool raw,
                   double budget, const std::optional<std::pair<infer::ExitRule, double>>& rule) {
  const size_t k = std::min(static_cast<size_t>(std::max<int64_t>(1, top_k)), p.classes.size());
  nlohmann::json out = infer::prediction_json(p, video, m.loaded.config.get_string("model.method"), k);
  if (rule) {
    out["budget"] = budget;
    out["expected_gflops"] = rule->second;
  }
  if (raw) out["raw"] = infer::raw_prediction_json(p.outputs);
  return out.dump();
}

void check_raw(bool raw, double budget, const std::string& thresholds) {
  if (raw && (budget >= 0 || !thresholds.empty()))
    throw Error("raw=True shows every exit's output: call it without a budget or thresholds");
}

std::string predict_path(Model& m, const std::string& video, double budget, const std::string& thresholds,
                         int64_t top_k, bool raw) {
  py::gil_scoped_release release;
  check_raw(raw, budget, thresholds);
  const auto rule = exit_rule(m, budget, thresholds);
  const infer::VideoPrediction p = infer::predict_video(m.loaded, video, m.device, rule ? &rule->first : nullptr);
  return answer(m, p, video, top_k, raw, budget, rule);
}

// A (T, 3, S, S) clip already normalised as the data pipeline gives it: the regions come out in its own pixels.
std::string predict_tensor(Model& m, const torch::Tensor& clip, const std::optional<torch::Tensor>& focus,
                           double budget, const std::string& thresholds, int64_t top_k, bool raw) {
  auto check = [&](const torch::Tensor& t, const char* what) {
    if (t.dim() != 4 || t.size(1) != 3 || t.size(2) != t.size(3))
      throw Error(std::string(what) + ": expected a (T, 3, S, S) tensor, found " +
                      c10::str(t.sizes()), "", "one clip, normalised as the data pipeline gives it (read_video and "
                      "VideoDataset do)");
  };
  check(clip, "clip");
  if (focus) check(*focus, "focus");
  py::gil_scoped_release release;
  check_raw(raw, budget, thresholds);
  const auto rule = exit_rule(m, budget, thresholds);
  data::Sample s;
  s.clip = clip.to(torch::kFloat);
  if (focus) s.focus = focus->to(torch::kFloat);
  const int side = static_cast<int>(clip.size(-1));
  for (int64_t i = 0; i < clip.size(0); ++i) s.frames.push_back(i);
  for (int64_t i = 0; focus && i < focus->size(0); ++i) s.focus_frames.push_back(i);
  s.crop = s.focus_crop = data::CropBox{0, 0, side, side};
  s.frame_width = s.frame_height = side;
  methods::LoadedModel view = m.loaded;  // shares the network; the clip is its own frame, not a resized one
  view.config.set("data.test_resize", "0", "a tensor clip");
  const infer::VideoPrediction p = infer::predict_sample(view, s, m.device, rule ? &rule->first : nullptr);
  return answer(m, p, "<tensor>", top_k, raw, budget, rule);
}

// Model(clip): everything the network computes, as tensors on the model's device (no copy of what it returns).
py::dict forward(Model& m, torch::Tensor clip, std::optional<torch::Tensor> focus) {
  auto batch = [](torch::Tensor t, const char* what) {
    if ((t.dim() != 4 && t.dim() != 5) || t.size(-3) != 3)
      throw Error(std::string(what) + ": expected a (T, 3, S, S) or (B, T, 3, S, S) tensor, found " +
                  c10::str(t.sizes()));
    return t.dim() == 4 ? t.unsqueeze(0) : t;
  };
  methods::Clips clips{batch(clip, "clip").to(m.device, torch::kFloat),
                       focus ? batch(*focus, "focus").to(m.device, torch::kFloat) : torch::Tensor()};
  methods::Prediction p;
  {
    py::gil_scoped_release release;
    torch::NoGradGuard no_grad;
    p = m.loaded.method->predict(clips);
  }
  py::dict out;
  out["logits"] = p.logits;  // (B, K, C): every exit, the last one final
  if (p.regions.defined()) {
    out["regions"] = p.regions;              // (B, R, 4) x, y, w, h in input pixels
    out["region_frames"] = p.region_frames;  // (B, R, F) clip positions
  }
  if (p.gflops.defined()) out["gflops"] = p.gflops;  // (B,) a cost that depends on the video (AdaFuse)
  for (const auto& [name, t] : p.outputs) out[py::str(name)] = t;
  return out;
}

std::string flops(Model& m) {
  py::gil_scoped_release release;
  const Config& c = m.loaded.config;
  const int64_t frames = c.get_int("data.segments"), focus = c.get_int("data.focus_segments"),
                size = c.get_int("data.input_size");
  torch::NoGradGuard no_grad;
  const infer::MethodFlops f = infer::method_flops(*m.loaded.method, frames, focus, size);
  return nlohmann::json{{"method", c.get_string("model.method")}, {"gflops", f.report.gflops()}, {"exits", f.exits},
                        {"frames", frames}, {"focus_frames", focus}, {"input_size", size}}
      .dump();
}

std::string calibrate(Model& m, const std::string& list, const std::string& root, const std::vector<double>& budgets,
                      const std::string& criterion, int64_t videos) {
  py::gil_scoped_release release;
  Config config = m.loaded.config;
  if (!root.empty()) config.set("data.root", root, "calibrate(root=)");
  config.set("data.train_list", list, "calibrate(list)");
  infer::EvalOptions o;
  o.device = m.device;
  o.list_key = "data.train_list";  // official: thresholds fitted on training videos
  o.max_videos = videos;
  const std::string name = criterion.empty() ? m.loaded.method->exit_criterion() : criterion;
  const infer::ExitTable table =
      infer::calibrate(*m.loaded.method, config, o, infer::parse_criterion(name), budgets);
  m.loaded.exits_json = table.to_json();  // predict(budget=...) uses them from now on
  return m.loaded.exits_json;
}

void export_official(Model& m, const std::string& path, const std::string& format) {
  if (format != "official")
    throw Error("format must be 'official', not '" + format + "'", "",
                "our own checkpoints are torch.save dicts already: torch.load(path)['state_dict']");
  py::gil_scoped_release release;
  methods::save_official_checkpoint(*m.loaded.method, path);
}

// Frames of a video file or frame folder as (T, H, W, 3) uint8 RGB, as torchvision.io.read_video gives them.
torch::Tensor read_video(const std::string& path, std::optional<std::vector<int64_t>> frames, int size) {
  py::gil_scoped_release release;
  if (size < 0) throw Error("size must be >= 0 (0: the video's own size)", path);
  std::unique_ptr<io::FrameSource> source = io::open_frames(path);
  std::vector<int64_t> indices;
  if (frames) {
    for (int64_t f : *frames)
      if (f < 0 || f >= source->num_frames())
        throw Error("frame " + std::to_string(f) + " out of range: the video has " +
                        std::to_string(source->num_frames()) + " frames", path);
    indices = *frames;
  } else {
    for (int64_t i = 0; i < source->num_frames(); ++i) indices.push_back(i);
  }
  const std::vector<io::Image> images = source->read(indices, size);
  if (images.empty()) return torch::empty({0, 0, 0, 3}, torch::kUInt8);
  const int w = images[0].width, h = images[0].height;
  torch::Tensor out = torch::empty({static_cast<int64_t>(images.size()), h, w, 3}, torch::kUInt8);
  for (size_t i = 0; i < images.size(); ++i)
    std::memcpy(out[static_cast<int64_t>(i)].data_ptr<uint8_t>(), images[i].rgb.data(), images[i].rgb.size());
  return out;
}

// The configuration a preset (file or built-in name, may be "") and key=value overrides give.
Config make_config(const std::string& preset, const std::vector<std::string>& overrides) {
  Config config = Config::defaults();
  if (!preset.empty()) config.merge_file(preset);
  for (const auto& assignment : overrides) config.set(assignment, "overrides");
  return config;
}

// A list file's clips, item by item as the C++ loader makes them: item i of epoch e draws its random choices from
// (seed, e, i, 0), the stream the loader gives position i of an unshuffled epoch.
struct Dataset {
  Config config;
  data::VideoDataset dataset;
  uint64_t seed;
  int64_t epoch = 0;

  Dataset(Config c, const data::DatasetOptions& o)
      : config(std::move(c)), dataset(o), seed(static_cast<uint64_t>(config.get_int("seed"))) {}
};

std::shared_ptr<Dataset> make_dataset(const std::string& list, const std::string& root, const std::string& preset,
                                      const std::vector<std::string>& overrides, bool train) {
  py::gil_scoped_release release;
  Config config = make_config(preset, overrides);
  config.set("data.root", root, "VideoDataset(root)");
  config.set("data.val_list", list, "VideoDataset(list_file)");
  return std::make_shared<Dataset>(config, data::DatasetOptions::from_config(config, "data.val_list", train));
}

py::dict sample_dict(data::Sample s) {
  py::dict out;
  out["clip"] = s.clip;
  if (s.focus.defined()) out["focus"] = s.focus;
  out["labels"] = s.labels;
  out["frames"] = s.frames;
  if (!s.focus_frames.empty()) out["focus_frames"] = s.focus_frames;
  return out;
}

py::dict get_item(const Dataset& d, int64_t index) {
  const int64_t n = static_cast<int64_t>(d.dataset.size());
  if (index < -n || index >= n) throw py::index_error("index " + std::to_string(index) + " out of range (" +
                                                      std::to_string(n) + " videos)");
  const size_t i = static_cast<size_t>(index < 0 ? index + n : index);
  data::Sample s;
  {
    py::gil_scoped_release release;
    Rng rng = Rng::derive(d.seed, {static_cast<uint64_t>(d.epoch), i, 0});
    s = d.dataset.get(i, rng);
  }
  return sample_dict(std::move(s));
}

// The C++ loader's batches (worker threads, prefetch) of one epoch, for a Python loop that needs no DataLoader.
struct Batches {
  std::shared_ptr<Dataset> owner;  // keeps the dataset alive while the loader reads it
  std::unique_ptr<data::Loader> loader;
};

std::unique_ptr<Batches> batches(std::shared_ptr<Dataset> d, int64_t batch_size, bool shuffle, int workers,
                                 bool drop_last) {
  data::LoaderOptions o = data::LoaderOptions::from_config(d->config, false);
  o.batch_size = batch_size;
  o.shuffle = shuffle;
  o.drop_last = drop_last;
  o.seed = d->seed;
  if (workers >= 0) o.workers = workers;
  if (o.batch_size <= 0) throw Error("batch_size must be at least 1");
  auto out = std::make_unique<Batches>();
  out->owner = d;
  out->loader = std::make_unique<data::Loader>(d->dataset, o);
  out->loader->start_epoch(d->epoch);
  return out;
}

py::dict next_batch(Batches& b) {
  std::optional<data::Batch> batch;
  {
    py::gil_scoped_release release;
    batch = b.loader->next();
  }
  if (!batch) throw py::stop_iteration();
  py::dict out;
  out["clips"] = batch->clips;    // (B, T, 3, S, S)
  if (batch->focus.defined()) out["focus"] = batch->focus;
  out["labels"] = batch->labels;  // (B, L), -1 padded
  out["target"] = batch->target;  // (B,)
  out["indices"] = batch->indices;
  return out;
}

std::string run_training(const std::string& preset, const std::string& data, const std::string& out,
                  const std::vector<std::string>& overrides, bool resume, const std::string& init,
                  const std::string& device, std::function<void(std::string)> progress, bool quiet) {
  py::gil_scoped_release release;
  train::TrainOptions o;
  o.device = torch::Device(device);
  o.init = init;
  o.quiet = quiet;
  o.run_dir = out;
  o.resume = resume;
  if (out.empty()) throw Error("out is required", "", "the run folder for checkpoints and metrics");
  Config config = Config::defaults();
  if (resume) {
    if (!preset.empty() || !overrides.empty() || !init.empty())
      throw Error("resume=True continues a run with its own config.yaml", out,
                  "drop preset, overrides and init, or start a new run in another folder");
  } else {
    config = make_config(preset, {});
    if (!data.empty()) config.set("data.root", data, "train(data)");
    for (const auto& assignment : overrides) config.set(assignment, "overrides");
  }
  if (progress)
    o.on_epoch = [&progress](const nlohmann::json& line) {
      py::gil_scoped_acquire gil;
      progress(line.dump());
    };
  const train::TrainSummary s = train::train(config, o);
  nlohmann::json summary{{"run", out},           {"epochs", s.epochs},         {"seconds", s.seconds},
                         {"metric", s.metric},    {"best_metric", s.best_metric}, {"best_epoch", s.best_epoch},
                         {"failures", nlohmann::json::array()}};
  if (s.best_epoch >= 0)
    summary["last"] = {{"top1", s.last.scores.top1}, {"map", s.last.scores.map}, {"gflops", s.last.gflops()}};
  for (const auto& f : s.failures) summary["failures"].push_back({{"path", f.path}, {"error", f.message}});
  return summary.dump();
}

bool says_missing(std::string message) {
  std::transform(message.begin(), message.end(), message.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* words : {"not found", "no such", "does not exist", "cannot open"})
    if (message.find(words) != std::string::npos) return true;
  return false;
}

bool exists(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "adafocus's C++ core; use the adafocus package, not this module";

  // As the CLI (core/host.h): the same speed for the same work. Choice: a process-wide allocator setting made by an
  // import, documented (docs/python.md); ADAFOCUS_MALLOC=system leaves glibc's defaults.
  const char* malloc_choice = std::getenv("ADAFOCUS_MALLOC");
  if (!malloc_choice || std::string(malloc_choice) != "system") keep_freed_memory();

  // Ctrl-C while C++ runs: Python only notes the signal; long loops ask here between batches.
  set_interrupt_check([] {
    if (!Py_IsInitialized()) return false;
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() == 0) return false;
    PyErr_Clear();  // raised again as KeyboardInterrupt when the call returns (the translator below)
    return true;
  });
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Interrupted&) {
      PyErr_SetNone(PyExc_KeyboardInterrupt);
    } catch (const Error& e) {
      // An error that says a file is missing, about a file (its where, maybe with :line) that does not exist.
      const std::string where = e.where().substr(0, e.where().find(':'));
      if (!where.empty() && !exists(where) && !exists(e.where()) && says_missing(e.message()))
        PyErr_SetObject(PyExc_FileNotFoundError,
                        py::make_tuple(ENOENT, std::string(e.what()), e.where()).ptr());
      else
        PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const c10::Error& e) {
      const std::string what = e.what_without_backtrace();
      PyErr_SetString(PyExc_RuntimeError, what.substr(0, what.find('\n')).c_str());
    }
  });

  py::class_<Model>(m, "Model")
      .def_property_readonly("classes", [](const Model& self) { return self.loaded.classes; })
      .def_property_readonly("method", [](const Model& self) { return self.loaded.config.get_string("model.method"); })
      .def_property_readonly("config", [](const Model& self) { return self.loaded.config.to_yaml(); })
      .def_property_readonly("exits", [](const Model& self) { return self.loaded.method->exits(); })
      .def_property_readonly("thresholds", [](const Model& self) { return self.loaded.exits_json; })
      .def_property_readonly("device", [](const Model& self) { return self.device.str(); })
      .def("predict_path", &predict_path)
      .def("predict_tensor", &predict_tensor)
      .def("forward", &forward)
      .def("flops", &flops)
      .def("calibrate", &calibrate)
      .def("export", &export_official);
  m.def("load", &load);
  m.def("read_video", &read_video);

  py::class_<Dataset, std::shared_ptr<Dataset>>(m, "Dataset")
      .def(py::init(&make_dataset))
      .def("__len__", [](const Dataset& d) { return d.dataset.size(); })
      .def("get", &get_item)
      .def_readwrite("epoch", &Dataset::epoch)
      .def_readwrite("seed", &Dataset::seed)
      .def("path", [](const Dataset& d, size_t i) { return d.dataset.resolve(d.dataset.entry(i)); })
      .def("batches", &batches);
  py::class_<Batches>(m, "Batches")
      .def("__iter__", [](Batches& b) -> Batches& { return b; })
      .def("__next__", &next_batch)
      .def("__len__", [](const Batches& b) { return b.loader->batches_per_epoch(); });

  m.def("train", &run_training);
  m.def("data_ptr", [](const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()); },
        "the address C++ sees of a tensor's data (the tests' proof that nothing was copied)");
  m.def("echo", [](const torch::Tensor& t) { return t; }, "returns the tensor it is given, through C++");
}
