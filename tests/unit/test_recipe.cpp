// Recipes: parsing into CLI arguments, the errors that name file and stage, and the accuracy gate.
#include "../test_utils.h"
#include "mcompress/error.h"
#include "mcompress/recipe.h"

TEST_CASE("a recipe becomes the stages' command-line arguments", "[recipe]") {
  const auto r = mc::parse_recipe(R"(
name: two
description: prune then quantize
seed: 3
stages:
  - prune: {method: sparsegpt, pattern: "2:4"}
  - quantize:
      method: gptq
      bits: 4
      group_size: 32
      keep-sparsity: true
      act-order: false
      targets: ["layers.*", "re:.*w2"]
      overrides:
        - {match: "layers.0.*", bits: 8, per-channel: true}
        - {match: ["a.*", "b.*"], bits: 3}
gate: {metric: bits per byte, max-relative-drop: 0.05}
)", "x.yaml");
  CHECK(r.name == "two");
  CHECK(r.seed == 3u);
  REQUIRE(r.stages.size() == 2);
  CHECK(r.stages[0].args() == std::vector<std::string>{"--method", "sparsegpt", "--pattern", "2:4"});
  CHECK(r.stages[1].args() ==
        std::vector<std::string>{"--method", "gptq", "--bits", "4", "--group-size", "32", "--keep-sparsity",
                                 "--targets", "layers.*,re:.*w2", "--override", "layers.0.*:bits=8,per-channel",
                                 "--override", "a.*:bits=3", "--override", "b.*:bits=3"});
  REQUIRE(r.gate);
  CHECK(r.gate->relative);
  CHECK(r.gate->max_drop == 0.05);
  CHECK(r.gate->describe() == "bits per byte may worsen by at most 5%");
}

TEST_CASE("recipe errors name the file and the stage", "[recipe]") {
  CHECK_THROWS_WITH(mc::parse_recipe("stages:\n  - compress: {bits: 4}\n", "r.yaml"),
                    Catch::Contains("r.yaml: stage 1 (compress): unknown pass 'compress'"));
  CHECK_THROWS_WITH(mc::parse_recipe("stage:\n  - quantize: {}\n", "r.yaml"), Catch::Contains("unknown key 'stage'"));
  CHECK_THROWS_WITH(mc::parse_recipe("stages: []\n", "r.yaml"), Catch::Contains("non-empty list"));
  CHECK_THROWS_WITH(mc::parse_recipe("stages:\n  - quantize: {output: x}\n", "r.yaml"),
                    Catch::Contains("stage 1 (quantize): option 'output' is set by mcompress run"));
  CHECK_THROWS_WITH(mc::parse_recipe("stages:\n  - prune: {overrides: []}\n", "r.yaml"),
                    Catch::Contains("'overrides' applies to quantize stages"));
  CHECK_THROWS_WITH(mc::parse_recipe("stages:\n  - quantize: {overrides: [{match: x, colour: 3}]}\n", "r.yaml"),
                    Catch::Contains("override key 'colour' is unknown"));
  CHECK_THROWS_WITH(mc::parse_recipe("stages:\n  - quantize: {}\ngate: {metric: m, max-relative-drop: 1, "
                                     "max-absolute-drop: 1}\n", "r.yaml"),
                    Catch::Contains("exactly one of"));
  CHECK_THROWS_WITH(mc::parse_recipe("stages:\n  - quantize: {}\nexport: onnx\n", "r.yaml"),
                    Catch::Contains("export 'onnx' is not available"));
  CHECK_THROWS_WITH(mc::parse_recipe("stages: [\n", "r.yaml"), Catch::Contains("r.yaml: not valid YAML"));
  CHECK_THROWS_AS(mc::load_recipe("/nonexistent/recipe.yaml"), mc::InputError);
}

TEST_CASE("accuracy gate: relative and absolute drops in the worse direction", "[recipe]") {
  mc::RecipeGate rel{"perplexity", 0.10, true}, abs{"top-1 accuracy", 0.01, false};
  CHECK(mc::check_gate(rel, 10.0, 10.9, false).first);   // 9% worse
  auto [ok, why] = mc::check_gate(rel, 10.0, 11.5, false);  // 15% worse
  CHECK_FALSE(ok);
  CHECK(why == "FAILED: perplexity 10 -> 11.5 (worse by 15%; allowed 10%, missed by 5 points)");
  CHECK(mc::check_gate(rel, 10.0, 9.0, false).first);   // better
  CHECK(mc::check_gate(abs, 0.98, 0.975, true).first);  // 0.005 lower
  CHECK_FALSE(mc::check_gate(abs, 0.98, 0.95, true).first);
  CHECK(mc::check_gate(abs, 0.98, 0.99, true).first);
}

TEST_CASE("every recipe in recipes/ parses", "[recipe]") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(MC_SOURCE_DIR) / "recipes";
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".yaml") {
      INFO(e.path());
      const auto r = mc::load_recipe(e.path().string());
      CHECK_FALSE(r.name.empty());
      CHECK_FALSE(r.description.empty());
      ++n;
    }
  CHECK(n >= 7);
}
