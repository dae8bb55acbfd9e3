// run_stage and run_recipe (pipeline.h): stages run in this process, each on the previous stage's
// output, their reports handed on in memory; finished stages of an earlier run are reused.
#include "mcompress/pipeline.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "job.h"
#include "mcompress/distill.h"
#include "mcompress/error.h"
#include "mcompress/export_job.h"
#include "mcompress/export/model_free.h"
#include "mcompress/model.h"
#include "mcompress/train.h"
#include "prune_stage.h"
#include "quantize_stage.h"

namespace mc {

namespace fs = std::filesystem;

JobResult run_quantize(const StageOptions& so, const JobIO& io, const EventSink& events);
JobResult run_prune(const StageOptions& so, const JobIO& io, const EventSink& events);
JobResult run_distill(const StageOptions& so, const JobIO& io, const EventSink& events);
JobResult run_model_free(const StageOptions& so, const JobIO& io, const EventSink& events);
// model_free_job.cpp: the options of quantize --model-free, checked.
ModelFreeOptions model_free_options(const StageOptions& so);

void check_stage(const StageOptions& so) {
  if (so.pass() == "quantize" && so.flag("model-free")) {
    model_free_options(so);
  } else if (so.pass() == "quantize" && so.has("scheme")) {
    fp_scheme_options(so);
  } else if (so.pass() == "quantize") {
    quantize_stage(so);
  } else if (so.pass() == "prune") {
    prune_stage(so);
  } else if (so.pass() == "distill") {
    const std::string init = so.text("student-init");
    if (!init.empty() && init.rfind("prune:", 0) != 0)
      so.fail("student-init", "'" + init + "' must start with prune: (e.g. prune:every=2)");
    if (so.integer("generate") < 0) so.fail("generate", "must be >= 0");
    if (!(so.real("gen-temperature") >= 0) || !(so.real("gen-top-p") > 0 && so.real("gen-top-p") <= 1))
      so.fail("gen-temperature", "must be >= 0 and --gen-top-p in (0, 1]");
    try {
      parse_distill_loss(so.text("loss"));
    } catch (const InputError& e) {
      fail("pipeline", so.where(), ": ", e.what());
    }
  }
}

JobResult run_stage(const StageOptions& so, const JobIO& io, const EventSink& events) {
  check_stage(so);
  if (so.pass() == "quantize" && so.flag("model-free")) return run_model_free(so, io, events);
  if (so.pass() == "quantize" && so.has("scheme")) return run_quantize_fp(so, io, events);
  if (so.pass() == "quantize") return run_quantize(so, io, events);
  if (so.pass() == "prune") return run_prune(so, io, events);
  if (io.dry_run) fail("pipeline", so.where(), ": --dry-run plans quantize and prune stages, not ", so.pass());
  return run_distill(so, io, events);
}

StageOptions recipe_stage_options(const RecipeStage& st, const PipelineInputs& in, const std::string& input, bool first) {
  StageOptions so(st.pass, st.options, st.where);
  auto add = [&](const char* name, const std::string& v) { so.set_default(name, v); };
  if (st.pass == "distill") {
    add("teacher", in.model);
    if (!so.has("student-init") && !so.has("student-config") && !so.has("student")) add("student", input);
    if (!so.has("data") && !so.has("generate")) add("data", in.calib);
    add("arch", in.arch);
  } else {
    add("calib", in.calib);
    if (in.calib_from_eval && !so.has("calib")) add("calib-from-eval", "");
    if (first) add("arch", in.arch);
  }
  add("eval", in.eval);
  add("tokenizer", in.tokenizer);
  add("device", in.device);
  if (!in.eval.empty()) {
    add("window", std::to_string(in.window));
    if (in.truncate) add("truncate", "");
    if (in.max_docs > 0) add("max-docs", std::to_string(in.max_docs));
  }
  if (in.seed) add("seed", std::to_string(*in.seed));
  return so;
}

namespace {

// A quantize or prune stage that cannot run without calibration data fails before the recipe starts.
void check_stage_calibration(const StageOptions& so, const std::string& model, const EventSink& events) {
  JobIO io;
  io.model = model;
  const JobRun probe(so, io, events);
  if (so.pass() == "quantize") {
    const QuantizeStage st = quantize_stage(so);
    probe.check_calibration(st.needs_calibration, st.calibration_for);
  } else if (so.pass() == "prune") {
    const PruneStage st = prune_stage(so);
    probe.check_calibration(st.needs_calibration, st.calibration_for);
  }
}

// The combined report: the first stage's baseline against the last stage's result, every stage's
// layers, steps and warnings.
Report combine(const Recipe& recipe, const std::vector<Report>& stages, const PipelineInputs& in) {
  Report rep = stages.back();
  const Report& base = stages.front();
  for (auto& m : rep.metrics)
    for (const auto& b : base.metrics)
      if (b.name == m.name) m.baseline = b.baseline;
  // Metrics measured against the stage's own input (KL, agreement) only hold for one stage.
  if (stages.size() > 1)
    rep.metrics.erase(std::remove_if(rep.metrics.begin(), rep.metrics.end(),
                                     [](const MetricRow& m) {
                                       return m.name.find("KL(") != std::string::npos ||
                                              m.name.find("same top-1") != std::string::npos ||
                                              m.name.find("before training") != std::string::npos;
                                     }),
                      rep.metrics.end());
  std::map<std::string, LayerRow> layers;
  std::vector<std::string> order;
  rep.steps.clear(), rep.warnings.clear(), rep.settings.clear(), rep.plan.clear();
  for (size_t i = 0; i < stages.size(); ++i) {
    const Report& s = stages[i];
    for (const auto& l : s.layers) {
      if (!layers.count(l.name)) order.push_back(l.name);
      layers[l.name] = l;
    }
    double secs = 0, peak = 0;
    for (const auto& x : s.steps) secs += x.seconds, peak = std::max(peak, x.peak_rss_mib);
    rep.steps.push_back({"stage " + std::to_string(i + 1) + ": " + recipe.stages[i].pass + " (" + s.method + ")", secs, peak});
    for (const auto& w : s.warnings) rep.warnings.push_back("stage " + std::to_string(i + 1) + ": " + w);
    rep.settings["stage " + std::to_string(i + 1)] = recipe.stages[i].describe();
    for (const char* k : {"calibration", "calibration data", "matmuls"})
      if (s.settings.count(k)) rep.settings["stage " + std::to_string(i + 1) + " " + k] = s.settings.at(k);
  }
  rep.layers.clear();
  for (const auto& n : order) rep.layers.push_back(layers.at(n));
  rep.baseline_bits = base.baseline_bits;
  rep.title = (recipe.name.empty() ? fs::path(recipe.path).stem().string() : recipe.name) + ": " +
              fs::path(in.model).filename().string();
  rep.method = "recipe " + (recipe.name.empty() ? recipe.path : recipe.name);
  rep.model = in.model;
  return rep;
}

}  // namespace

JobResult run_recipe(const Recipe& recipe, const PipelineInputs& in, const EventSink& events) {
  if (!fs::exists(in.model)) fail<FileError>("run", in.model, ": no such model");
  // Every stage's options are checked before the first one runs (recipes are checked when loaded;
  // the run's own inputs are added here).
  std::vector<StageOptions> checked;
  for (size_t i = 0; i < recipe.stages.size(); ++i) {
    checked.push_back(recipe_stage_options(recipe.stages[i], in, in.model, i == 0));
    check_stage(checked.back());
    if (!in.dry_run) check_stage_calibration(checked.back(), in.model, events);
  }
  if (in.dry_run) {
    events.print("recipe " + (recipe.name.empty() ? recipe.path : recipe.name) +
                 (recipe.description.empty() ? "" : " (" + recipe.description + ")") + ": " +
                 std::to_string(recipe.stages.size()) + " stage(s) on " + in.model);
    JobResult r;
    LoadOptions lo;
    lo.arch_file = in.arch, lo.device = in.device.empty() ? "cpu" : in.device;
    std::unique_ptr<Model> model;
    std::vector<std::vector<PlanRow>> plans;
    for (size_t i = 0; i < recipe.stages.size(); ++i) {
      events.print("  " + std::to_string(i + 1) + ". " + recipe.stages[i].describe());
      if (recipe.stages[i].pass == "distill") {
        const auto& so = checked[i];
        events.print(std::string("     the student replaces the model: ") +
                     (so.has("student-init")     ? "the teacher pruned (" + so.text("student-init") + ")"
                      : so.has("student-config") ? "from config " + so.text("student-config")
                                                 : "recovery fine-tuning of the previous stage's output (grids and masks kept)"));
        continue;
      }
      if (!model) model = load_model(in.model, lo);
      // Later stages are planned on the input's layers: a pruned or quantized model keeps its layers.
      plans.push_back(plan_stage(*model, in.model, checked[i]));
    }
    r.report.plan = combine_plans(plans);
    if (!r.report.plan.empty()) {
      events.print("");
      print_plan(r.report.plan, model_bytes(in.model), events);
    }
    return r;
  }
  if (in.out.empty()) fail("run", "-o DIR is required (except with --dry-run)");
  const auto t0 = std::chrono::steady_clock::now();
  const bool created = !fs::exists(in.out);
  fs::create_directories(fs::path(in.out) / "stages");
  write_file_atomic((fs::path(in.out) / "recipe.yaml").string(), recipe.text, "run");
  std::string input = in.model;
  bool chain_reused = true;
  std::vector<Report> stage_reports;
  bool labeled = false;
  for (size_t i = 0; i < recipe.stages.size(); ++i) {
    const auto& st = recipe.stages[i];
    const fs::path dir = fs::path(in.out) / "stages" / (std::to_string(i + 1) + "-" + st.pass);
    StageOptions so = recipe_stage_options(st, in, input, i == 0);
    std::vector<std::string> id_args = so.args();
    if (st.pass != "distill") id_args.insert(id_args.begin(), input);
    const nlohmann::json stage_id = {{"pass", st.pass}, {"args", id_args}};  // what the stage computes
    const fs::path done = dir / "stage.json";
    const bool reuse = chain_reused && fs::exists(done) && fs::exists(dir / "model.safetensors") &&
                       nlohmann::json::parse(read_file_text(done.string())) == stage_id;
    events.print("\n== stage " + std::to_string(i + 1) + "/" + std::to_string(recipe.stages.size()) + ": " +
                 st.describe() + (reuse ? " (done by an earlier run: reused)" : "") + " ==");
    events.emit("stage", nlohmann::json({{"stage", i + 1}, {"of", recipe.stages.size()}, {"pass", st.pass},
                                         {"reused", reuse}}).dump());
    if (reuse) {
      stage_reports.push_back(report_from_json(read_file_text((dir / "report.json").string()), (dir / "report.json").string()));
    } else {
      chain_reused = false;
      // An interrupted stage keeps what it saved: distill's training state, quantize/prune's block journal.
      const bool saved = fs::exists(dir / ".resume") || (st.pass == "distill" && fs::exists(dir / "train-state.safetensors"));
      if (fs::exists(dir) && !saved) fs::remove_all(dir);
      if (st.pass == "distill" && fs::exists(dir / "train-state.safetensors")) so.set_default("resume", "");
      JobIO io;
      io.model = st.pass == "distill" ? so.text("teacher") : input;
      io.out = dir.string();
      io.command_line = in.command_line + "  [stage " + std::to_string(i + 1) + ": " + so.describe() + "]";
      JobResult res;
      try {
        res = run_stage(so, io, events);
      } catch (const InputError&) {
        if (created && i == 0) fs::remove_all(in.out);  // bad input to the first stage: no output at all
        throw;
      }
      if (res.status != 0) return res;  // interrupted: what is done stays for the next run
      write_file_atomic(done.string(), stage_id.dump(2), "run");
      labeled = labeled || res.labeled;
      stage_reports.push_back(std::move(res.report));
    }
    input = (dir / "model.safetensors").string();
  }

  Report rep = combine(recipe, stage_reports, in);
  const fs::path final_model = fs::path(in.out) / "model.safetensors";
  copy_file_atomic(input, final_model.string(), "run");
  copy_companion_files(input, in.tokenizer, in.out);
  rep.output = final_model.string();
  if (!recipe.export_format.empty() && recipe.export_format != "safetensors") {
    // The final export: DIR/model.gguf, DIR/model.q8.bin or DIR/hf/.
    const std::string& f = recipe.export_format;
    const fs::path target = fs::path(in.out) / (f.rfind("gguf", 0) == 0 ? "model.gguf" : f == "llama2c-q8" ? "model.q8.bin" : "hf");
    ExportJob ej;
    ej.model = final_model.string(), ej.out = target.string(), ej.format = f, ej.tokenizer = in.tokenizer;
    events.print("\n== export: " + f + " ==");
    run_export(ej, events);
    rep.output = target.string();
    rep.settings["export"] = f + " -> " + target.string();
  }
  rep.settings["recipe"] = (fs::path(in.out) / "recipe.yaml").string() + " (copy of " + recipe.path + ")";
  if (!recipe.description.empty()) rep.settings["description"] = recipe.description;
  rep.size_before = model_bytes(in.model);
  rep.size_after = model_bytes(rep.output);  // the final artifact (the export when there is one)
  rep.command_line = in.command_line;
  if (in.seed) rep.seed = std::to_string(*in.seed);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rep.settings["wall time"] = fmt_num("%.1f s", total) + (chain_reused ? " (every stage reused)" : "");
  JobResult r;
  if (recipe.gate) {
    const MetricRow* m = nullptr;
    for (const auto& x : rep.metrics)
      if (x.name == recipe.gate->metric) m = &x;
    if (!m || !m->baseline || !m->compressed) {
      rep.settings["accuracy gate"] = "FAILED: metric '" + recipe.gate->metric + "' was not measured (give --eval DATA)";
      r.status = 3;
    } else {
      auto [ok, verdict] = check_gate(*recipe.gate, *m->baseline, *m->compressed, m->higher_is_better);
      rep.settings["accuracy gate"] = verdict;
      if (!ok) r.status = 3;
    }
  }
  write_report(rep, in.out);
  r.report = std::move(rep);
  r.labeled = labeled;
  return r;
}

}  // namespace mc
