#include <gtest/gtest.h>

#include "core/config.h"
#include "core/error.h"
#include "test_util.h"

namespace adafocus {
namespace {

const char* kSchema = R"(
model:
  arch: resnet50
  width_mult: 1.0
  num_classes: 200
  pretrained: true
  weights: ""
train:
  scales: [1, 0.875, 0.75, 0.66]
  input_order: [7, 0, 15]
  methods: [adafocus_v2, random_patch]
)";

using test::error_of;

TEST(Config, DefaultsFixTypes) {
  Config c = Config::from_yaml(kSchema, "schema");
  EXPECT_EQ(c.type("model.arch"), Config::Type::String);
  EXPECT_EQ(c.type("model.width_mult"), Config::Type::Float);
  EXPECT_EQ(c.type("model.num_classes"), Config::Type::Int);
  EXPECT_EQ(c.type("model.pretrained"), Config::Type::Bool);
  EXPECT_EQ(c.type("train.scales"), Config::Type::FloatList);
  EXPECT_EQ(c.type("train.input_order"), Config::Type::IntList);
  EXPECT_EQ(c.type("train.methods"), Config::Type::StringList);
  EXPECT_EQ(c.get_int("model.num_classes"), 200);
  EXPECT_EQ(c.get_floats("train.scales"), (std::vector<double>{1, 0.875, 0.75, 0.66}));
  EXPECT_EQ(c.origin("model.arch"), "default");
}

TEST(Config, BuiltInDefaultsLoad) {
  Config c = Config::defaults();
  EXPECT_EQ(c.get_string("model.backbone.arch"), "resnet50");
  EXPECT_EQ(c.get_int("data.input_size"), 224);
}

TEST(Config, OverridesParseByType) {
  Config c = Config::from_yaml(kSchema, "schema");
  c.set("model.width_mult=0.5");
  c.set("model.num_classes=10");
  c.set("model.pretrained=false");
  c.set("model.arch=mobilenet_v2");
  c.set("train.scales=[1, 0.5]");
  c.set("train.input_order=[3,0,7]");
  c.set("model.width_mult=2");  // an integer is a valid number
  EXPECT_DOUBLE_EQ(c.get_float("model.width_mult"), 2.0);
  EXPECT_EQ(c.get_int("model.num_classes"), 10);
  EXPECT_FALSE(c.get_bool("model.pretrained"));
  EXPECT_EQ(c.get_string("model.arch"), "mobilenet_v2");
  EXPECT_EQ(c.get_floats("train.scales"), (std::vector<double>{1, 0.5}));
  EXPECT_EQ(c.get_ints("train.input_order"), (std::vector<int64_t>{3, 0, 7}));
  EXPECT_EQ(c.origin("model.arch"), "command line");
}

TEST(Config, UnknownKeyNamesClosestValidKey) {
  Config c = Config::from_yaml(kSchema, "schema");
  std::string e = error_of([&] { c.set("model.widht_mult=0.5"); });
  EXPECT_NE(e.find("unknown key 'model.widht_mult'"), std::string::npos) << e;
  EXPECT_NE(e.find("command line"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'model.width_mult'"), std::string::npos) << e;
  // A key written without its section is matched by its last component.
  e = error_of([&] { c.set("num_classes=3"); });
  EXPECT_NE(e.find("did you mean 'model.num_classes'"), std::string::npos) << e;
}

TEST(Config, WrongTypeNamesKeyAndExpectedType) {
  Config c = Config::from_yaml(kSchema, "schema");
  std::string e = error_of([&] { c.set("model.num_classes=1.5"); });
  EXPECT_NE(e.find("'model.num_classes' must be an integer, got '1.5'"), std::string::npos) << e;
  e = error_of([&] { c.set("model.pretrained=maybe"); });
  EXPECT_NE(e.find("must be a bool"), std::string::npos) << e;
  e = error_of([&] { c.set("train.input_order=[1, x]"); });
  EXPECT_NE(e.find("must be a list of integers"), std::string::npos) << e;
  e = error_of([&] { c.set("model=3"); });
  EXPECT_NE(e.find("'model' is a section"), std::string::npos) << e;
  e = error_of([&] { c.set("model.arch"); });
  EXPECT_NE(e.find("expected key=value"), std::string::npos) << e;
  // A failed assignment leaves the value as it was.
  EXPECT_EQ(c.get_int("model.num_classes"), 200);
}

TEST(Config, FileErrorsNameFileAndLine) {
  test::TempDir dir;
  test::write_bytes(dir.path("bad.yaml"), "model:\n  arch: resnet18\n  num_clases: 5\n");
  Config c = Config::from_yaml(kSchema, "schema");
  std::string e = error_of([&] { c.merge_file(dir.path("bad.yaml")); });
  EXPECT_NE(e.find(dir.path("bad.yaml") + ":3"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown key 'model.num_clases'"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'model.num_classes'"), std::string::npos) << e;

  test::write_bytes(dir.path("type.yaml"), "model:\n  width_mult: wide\n");
  e = error_of([&] { c.merge_file(dir.path("type.yaml")); });
  EXPECT_NE(e.find(dir.path("type.yaml") + ":2"), std::string::npos) << e;
  EXPECT_NE(e.find("must be a number"), std::string::npos) << e;

  test::write_bytes(dir.path("syntax.yaml"), "model:\n  arch: [unclosed\n");
  e = error_of([&] { c.merge_file(dir.path("syntax.yaml")); });
  EXPECT_NE(e.find("invalid YAML"), std::string::npos) << e;

  e = error_of([&] { c.merge_file(dir.path("absent.yaml")); });
  EXPECT_NE(e.find("not found"), std::string::npos) << e;
}

TEST(Config, PresetsInheritThroughBase) {
  test::TempDir dir;
  test::write_bytes(dir.path("base.yaml"), "model:\n  arch: resnet18\n  num_classes: 5\n");
  test::write_bytes(dir.path("child.yaml"), "base: base.yaml\nmodel:\n  num_classes: 7\n");
  Config c = Config::from_yaml(kSchema, "schema");
  c.merge_file(dir.path("child.yaml"));
  EXPECT_EQ(c.get_string("model.arch"), "resnet18");
  EXPECT_EQ(c.get_int("model.num_classes"), 7);
  EXPECT_EQ(c.origin("model.arch"), dir.path("base.yaml") + ":2");

  test::write_bytes(dir.path("a.yaml"), "base: b.yaml\n");
  test::write_bytes(dir.path("b.yaml"), "base: a.yaml\n");
  std::string e = error_of([&] { c.merge_file(dir.path("a.yaml")); });
  EXPECT_NE(e.find("cycle"), std::string::npos) << e;
}

TEST(Config, ResolvedYamlReadsBackToTheSameValues) {
  Config c = Config::from_yaml(kSchema, "schema");
  c.set("model.width_mult=0.75");
  c.set("model.arch=resnet18");
  c.set("train.scales=[1, 0.5]");
  c.set("train.methods=[a, 'b c']");
  c.set("model.weights=");
  test::TempDir dir;
  c.save(dir.path("resolved.yaml"));
  Config back = Config::from_yaml(kSchema, "schema");
  back.merge_file(dir.path("resolved.yaml"));
  for (const auto& key : c.keys()) EXPECT_EQ(back.origin(key).rfind(dir.path("resolved.yaml"), 0), 0u) << key;
  EXPECT_EQ(back.to_yaml(), c.to_yaml());
  EXPECT_DOUBLE_EQ(back.get_float("model.width_mult"), 0.75);
  EXPECT_EQ(back.get_strings("train.methods"), (std::vector<std::string>{"a", "b c"}));
  EXPECT_EQ(back.get_string("model.weights"), "");
  EXPECT_EQ(back.type("model.width_mult"), Config::Type::Float);
}

TEST(Config, WholeNumberFloatsStayFloatsInYaml) {
  Config c = Config::from_yaml(kSchema, "schema");
  c.set("model.width_mult=1");
  EXPECT_NE(c.to_yaml().find("width_mult: 1.0"), std::string::npos) << c.to_yaml();
}

}  // namespace
}  // namespace adafocus
