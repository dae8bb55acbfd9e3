// The method table (methods.h): every name the CLI and recipes accept is in it once, an unknown name is
// one InputError listing the allowed ones, and the needs-calibration flags are what quantize_model and
// prune_model actually demand.
#include <ATen/ATen.h>

#include <set>

#include "mcompress/error.h"
#include "mcompress/methods.h"
#include "mcompress/model.h"
#include "mcompress/prune/prune.h"
#include "mcompress/ptq.h"
#include "test_utils.h"
#include "tiny_llama.h"

using namespace mc;

TEST_CASE("method table: names, kinds, labels and the functions that run each method", "[methods]") {
  std::vector<std::string> q, p;
  for (const MethodInfo* m : methods_of(MethodKind::Quantize)) q.push_back(m->name);
  for (const MethodInfo* m : methods_of(MethodKind::Prune)) p.push_back(m->name);
  CHECK(q == std::vector<std::string>{"rtn", "hqq", "imatrix", "gptq", "awq", "autoround", "smoothquant"});
  CHECK(p == std::vector<std::string>{"magnitude", "wanda", "sparsegpt"});
  CHECK(all_methods().size() == q.size() + p.size());
  for (const MethodInfo& m : all_methods()) {
    CAPTURE(m.name);
    CHECK(find_method(m.kind, m.name) == &m);
    CHECK(std::string(m.description).size() > 10);
    CHECK(std::string(m.report_label).size() > 0);
    CHECK((m.quantize_layer != nullptr) == (m.kind == MethodKind::Quantize));
    CHECK((m.prune_layer != nullptr) == (m.kind == MethodKind::Prune));
    CHECK((m.group_scales != nullptr) == (m.without_scales != nullptr));
  }
  // The labels report titles have always used.
  CHECK(std::string(find_method(MethodKind::Quantize, "gptq")->report_label) == "GPTQ");
  CHECK(std::string(find_method(MethodKind::Quantize, "smoothquant")->report_label) == "SmoothQuant");
  CHECK(std::string(find_method(MethodKind::Quantize, "rtn")->report_label) == "RTN");
  CHECK(std::string(find_method(MethodKind::Quantize, "hqq")->report_label) == "HQQ");
  CHECK(find_method(MethodKind::Quantize, "hqq")->float_zeros);
  CHECK_FALSE(find_method(MethodKind::Quantize, "hqq")->needs_calibration);
  CHECK(std::string(find_method(MethodKind::Prune, "sparsegpt")->report_label) == "sparsegpt");
  CHECK(find_method(MethodKind::Quantize, "awq")->group_scales != nullptr);
  CHECK(find_method(MethodKind::Quantize, "autoround")->tune_block != nullptr);
  CHECK_FALSE(find_method(MethodKind::Quantize, "gptq")->tune_block);
  CHECK_FALSE(find_method(MethodKind::Quantize, "awq")->scales_after_norm_only);
  CHECK(find_method(MethodKind::Quantize, "smoothquant")->scales_after_norm_only);
  CHECK(find_method(MethodKind::Quantize, "smoothquant")->quantizes_activations);
  CHECK(find_method(MethodKind::Prune, "magnitude")->global_distribution);
  CHECK_FALSE(find_method(MethodKind::Prune, "wanda")->global_distribution);
}

TEST_CASE("find_method: an unknown name is an InputError listing the allowed names", "[methods][errors]") {
  CHECK_THROWS_AS(find_method(MethodKind::Quantize, "gtpq"), InputError);
  CHECK_THROWS_WITH(find_method(MethodKind::Quantize, "gtpq"),
                    "[quantize] --method 'gtpq' is not available (allowed: rtn, hqq, imatrix, gptq, awq, autoround, smoothquant)");
  CHECK_THROWS_WITH(find_method(MethodKind::Prune, "gptq"),
                    "[prune] --method 'gptq' is not available (allowed: magnitude, wanda, sparsegpt)");
  CHECK_THROWS_AS(find_method(MethodKind::Prune, ""), InputError);
  CHECK_THROWS_AS(find_method(MethodKind::Quantize, "GPTQ"), InputError);  // names are exact
  CHECK(method_names(MethodKind::Prune) == "magnitude, wanda, sparsegpt");
}

TEST_CASE("needs_calibration: exactly the methods quantize_model / prune_model refuse to run without data",
          "[methods]") {
  std::set<std::string> need;
  for (const MethodInfo& m : all_methods())
    if (m.needs_calibration) need.insert(m.name);
  CHECK(need == std::set<std::string>{"imatrix", "gptq", "awq", "autoround", "smoothquant", "wanda", "sparsegpt"});
  for (const MethodInfo* m : methods_of(MethodKind::Quantize)) {
    CAPTURE(m->name);
    auto model = mctest::tiny_llama(71);
    PtqOptions o;
    o.method = m->name;
    o.spec.symmetric = !m->float_zeros;  // hqq: asymmetric grids only
    if (m->needs_calibration)
      CHECK_THROWS_WITH(quantize_model(*model, at::Tensor(), o), Catch::Contains("needs calibration data"));
    else
      CHECK(quantize_model(*model, at::Tensor(), o).quantized.size() == 14);
  }
  for (const MethodInfo* m : methods_of(MethodKind::Prune)) {
    CAPTURE(m->name);
    auto model = mctest::tiny_llama(72);
    PruneOptions o;
    o.method = m->name;
    if (m->needs_calibration)
      CHECK_THROWS_WITH(prune_model(*model, at::Tensor(), o), Catch::Contains("needs calibration data"));
    else
      CHECK(prune_model(*model, at::Tensor(), o).pruned.size() == 14);
  }
}
