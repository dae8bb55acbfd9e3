// mcompress run RECIPE --model M [--calib C] [--eval E] -o DIR [--dry-run]
// Runs a recipe's stages in order (recipe.h), each through its subcommand (quantize, prune, distill) on
// the previous stage's output, in DIR/stages/N-pass/. A stage whose output exists from an earlier run
// with the same arguments is reused, so an interrupted pipeline continues where it stopped (distill
// stages resume their training state). Writes DIR/model.safetensors, DIR/recipe.yaml (the recipe as
// used) and DIR/report.*; the accuracy gate, when missed, makes the report say FAILED and exits 3.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "model_files.h"
#include "mcompress/checkpoint.h"
#include "mcompress/dtype.h"
#include "mcompress/error.h"
#include "mcompress/ptq.h"
#include "mcompress/recipe.h"
#include "mcompress/report.h"

namespace fs = std::filesystem;

namespace mcli {

namespace {

using json = nlohmann::json;

// The plan without loading weights: per stage, which of the checkpoint's matrices it touches and their
// stored size before/after (quantize: bits + fp16 scales per group; prune: kept fraction; distill:
// the student replaces the model).
void print_plan(const mc::Recipe& r, const std::string& model_path) {
  std::printf("recipe %s%s: %zu stage(s) on %s\n", r.name.empty() ? r.path.c_str() : r.name.c_str(),
              r.description.empty() ? "" : (" (" + r.description + ")").c_str(), r.stages.size(), model_path.c_str());
  std::vector<mc::TensorInfo> tensors;
  try {
    tensors = mc::open_checkpoint(model_path)->tensors();
  } catch (const mc::InputError& e) {
    std::printf("  (no per-layer plan: %s)\n", e.what());
  }
  struct Row {
    std::string name;
    int64_t params;
    double value_bits;       // per stored value
    double keep = 1.0;       // fraction of values stored (pruning)
    double index_bits = 0;   // per weight: the sparse layout's mask or positions
    std::string what;
    double bits() const { return keep * value_bits + index_bits; }
  };
  std::vector<Row> rows;
  double before = 0;
  for (const auto& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    before += double(t.nbytes) * 8;
    const bool matrix = t.shape.size() == 2 && t.name.size() > 7 && t.name.substr(t.name.size() - 7) == ".weight" &&
                        t.name.find("embed") == std::string::npos && t.name != "output.weight" &&
                        t.name != "lm_head.weight";
    if (matrix) {
      Row row;
      row.name = t.name.substr(0, t.name.size() - 7);
      row.params = n;
      row.value_bits = double(t.nbytes) * 8 / double(n);
      rows.push_back(row);
    }
  }
  auto num = [](const std::string& v, double dflt) { return v.empty() ? dflt : std::stod(v); };
  for (size_t i = 0; i < r.stages.size(); ++i) {
    const auto& st = r.stages[i];
    std::printf("  %zu. %s\n", i + 1, st.describe().c_str());
    if (st.pass == "distill") {
      std::printf("     the student replaces the model: %s\n",
                  st.has("student-init") ? ("the teacher pruned (" + st.get("student-init") + ")").c_str()
                  : st.has("student-config") ? ("from config " + st.get("student-config")).c_str()
                                             : "recovery fine-tuning of the previous stage's output (grids and masks kept)");
      continue;
    }
    if (st.has("structured")) {
      std::printf("     structured pruning (%s): matrices shrink by what calibration ranks lowest\n",
                  st.get("structured").c_str());
      continue;
    }
    const auto targets = split_list(st.get("targets")), ignore = split_list(st.get("ignore"));
    for (auto& row : rows) {
      if ((!targets.empty() && !mc::matches_any(targets, row.name)) || mc::matches_any(ignore, row.name)) continue;
      auto append = [&](const std::string& w) { row.what = row.what.empty() || row.what == "kept" ? w : row.what + "; " + w; };
      if (st.pass == "quantize") {
        double bits = num(st.get("bits"), st.get("method") == "smoothquant" ? 8 : 4);
        double group = st.has("per-channel") ? 0 : num(st.get("group-size"), st.get("method") == "smoothquant" ? 0 : 32);
        std::string extra;
        for (const auto& [k, v] : st.options)
          if (k == "override" && mc::matches_any({v.substr(0, v.rfind(':'))}, row.name)) {
            extra = " (override)";
            for (const auto& item : split_list(v.substr(v.rfind(':') + 1))) {
              if (item.rfind("bits=", 0) == 0) bits = std::stod(item.substr(5));
              if (item.rfind("group-size=", 0) == 0) group = std::stod(item.substr(11));
              if (item == "per-channel") group = 0;
            }
            break;
          }
        std::string what = "int" + fmt("%g", bits);
        if (st.has("target-bpw") && extra.empty()) {
          bits = std::stod(st.get("target-bpw"));
          what = "mixed ~" + fmt("%g", bits) + " bits (" + st.get("bits-candidates") + ", by sensitivity)";
        }
        row.value_bits = bits + 16.0 / (group > 0 ? group : row.params);
        append(what + (group > 0 ? " g" + fmt("%g", group) : " per-channel") + extra + " " + st.get("method"));
      } else {
        const std::string pat = st.get("pattern");
        double keep = 1.0 - num(st.get("sparsity"), 0.5);
        if (!pat.empty()) keep = 1.0 - std::stod(pat.substr(0, pat.find(':'))) / std::stod(pat.substr(pat.find(':') + 1));
        // Sparse layout: the kept values (fp16, or codes + fp16 scales) plus a mask bit per weight
        // (unstructured) or a position per kept value (N:M: 2 bits for m = 4).
        row.keep = keep;
        row.value_bits = st.has("bits") ? num(st.get("bits"), 4) + 16.0 / num(st.get("group-size"), 32) : 16.0;
        row.index_bits = pat.empty() ? 1.0 : keep * 2.0;
        append(std::string("pruned ") + (pat.empty() ? fmt("%g%%", 100 * (1 - keep)) : pat) + " " + st.get("method"));
      }
    }
  }
  if (!rows.empty()) {
    std::printf("\n  %-40s %10s %14s  %s\n", "layer", "params", "bits/weight", "what happens");
    double after = before;
    for (const auto& row : rows) {
      std::printf("  %-40s %10lld %14s  %s\n", row.name.c_str(), static_cast<long long>(row.params),
                  fmt("%.2f", row.bits()).c_str(), row.what.c_str());
    }
    double orig_matrix_bits = 0, new_matrix_bits = 0;
    for (const auto& t : tensors)
      for (const auto& row : rows)
        if (t.name == row.name + ".weight") orig_matrix_bits += double(t.nbytes) * 8, new_matrix_bits += row.bits() * double(row.params);
    after = before - orig_matrix_bits + new_matrix_bits;
    std::printf("\n  estimated size: %s -> %s (%.2fx smaller; the model's other tensors kept as stored)\n",
                human_bytes(uint64_t(before / 8)).c_str(), human_bytes(uint64_t(after / 8)).c_str(), before / after);
  }
}


}  // namespace

int cmd_run(const std::vector<std::string>& args) {
  po::options_description desc("run options");
  std::string recipe_path, model, calib, eval, tokenizer, arch, device, out;
  int64_t window = 128, max_docs = 0;
  bool truncate = false, dry_run = false;
  uint64_t seed = 0;
  desc.add_options()
      ("recipe", po::value<std::string>(&recipe_path)->required(), "recipe YAML (recipes/*.yaml)")
      ("model", po::value<std::string>(&model)->required(), "model to compress")
      ("calib", po::value<std::string>(&calib), "calibration data (distill stages: training data)")
      ("eval", po::value<std::string>(&eval), "held-out data: every stage and the final report are evaluated on it")
      ("tokenizer", po::value<std::string>(&tokenizer), "tokenizer (default: the one beside the model)")
      ("arch", po::value<std::string>(&arch), "classifier architecture YAML")
      ("window", po::value<int64_t>(&window)->default_value(128), "tokens per evaluation window")
      ("truncate", po::bool_switch(&truncate), "score only each document's first window")
      ("max-docs", po::value<int64_t>(&max_docs)->default_value(0), "evaluate at most N documents")
      ("seed", po::value<uint64_t>(&seed), "seed of every stage (default: the recipe's, else each pass's own)")
      ("device", po::value<std::string>(&device), "cpu or cuda")
      ("output,o", po::value<std::string>(&out), "output directory (not needed with --dry-run)")
      ("dry-run", po::bool_switch(&dry_run), "print the plan (layers, what happens to each, sizes) and stop");
  po::positional_options_description pos;
  pos.add("recipe", 1);
  po::variables_map vm;
  CommonOptions common;
  if (!parse_command_line("run", "RECIPE --model M [--calib C] [--eval E] -o DIR [--dry-run]", args, desc, pos, vm,
                          common))
    return 0;
  const mc::Recipe recipe = mc::load_recipe(recipe_path);
  if (!fs::exists(model)) mc::fail<mc::FileError>("run", model, ": no such model");
  if (dry_run) {
    print_plan(recipe, model);
    return 0;
  }
  const std::optional<uint64_t> run_seed = vm.count("seed") ? std::optional<uint64_t>(seed) : recipe.seed;
  if (out.empty()) mc::fail("run", "-o DIR is required (except with --dry-run)");
  if (tokenizer.empty()) tokenizer = find_tokenizer(model);  // stage outputs have none beside them
  const auto t0 = std::chrono::steady_clock::now();
  const bool created = !fs::exists(out);
  fs::create_directories(fs::path(out) / "stages");
  write_file_atomic((fs::path(out) / "recipe.yaml").string(), recipe.text, "run");
  std::string input = model;
  bool chain_reused = true;
  std::vector<mc::Report> stage_reports;
  mc::Report rep;
  for (size_t i = 0; i < recipe.stages.size(); ++i) {
    const auto& st = recipe.stages[i];
    const fs::path dir = fs::path(out) / "stages" / (std::to_string(i + 1) + "-" + st.pass);
    std::vector<std::string> a = st.args();
    auto add = [&](const char* opt, const std::string& v) {
      if (!v.empty() && !st.has(opt + 2)) a.insert(a.end(), {opt, v});
    };
    if (st.pass == "distill") {
      a.insert(a.end(), {"--teacher", model});
      if (!st.has("student-init") && !st.has("student-config") && !st.has("student")) a.insert(a.end(), {"--student", input});
      if (!st.has("data") && !st.has("generate")) add("--data", calib);
      add("--arch", arch);
    } else {
      a.insert(a.begin(), input);
      add("--calib", calib);
      if (i == 0) add("--arch", arch);
    }
    add("--eval", eval);
    add("--tokenizer", tokenizer);
    add("--device", device);
    if (!eval.empty()) {
      add("--window", std::to_string(window));
      if (truncate && !st.has("truncate")) a.push_back("--truncate");
      if (max_docs > 0) add("--max-docs", std::to_string(max_docs));
    }
    if (run_seed) add("--seed", std::to_string(*run_seed));
    const json stage_id = {{"pass", st.pass}, {"args", a}};  // what the stage computes (not how it prints)
    if (common.quiet) a.push_back("-q");
    const fs::path done = dir / "stage.json";
    const bool reuse = chain_reused && fs::exists(done) && fs::exists(dir / "model.safetensors") &&
                       json::parse(read_file_text(done.string())) == stage_id;
    if (!common.quiet)
      std::printf("\n== stage %zu/%zu: %s%s ==\n", i + 1, recipe.stages.size(), st.describe().c_str(),
                  reuse ? " (done by an earlier run: reused)" : "");
    std::fflush(stdout);
    if (!reuse) {
      chain_reused = false;
      // An interrupted stage keeps what it saved: distill's training state, quantize/prune's block journal.
      const bool saved = fs::exists(dir / ".resume") || (st.pass == "distill" && fs::exists(dir / "train-state.safetensors"));
      if (fs::exists(dir) && !saved) fs::remove_all(dir);
      if (st.pass == "distill" && fs::exists(dir / "train-state.safetensors")) a.push_back("--resume");
      a.insert(a.end(), {"-o", dir.string()});
      int rc = 0;
      try {
        if (st.pass == "quantize") rc = cmd_quantize(a);
        else if (st.pass == "prune") rc = cmd_prune(a);
        else rc = cmd_distill(a);
      } catch (const mc::InputError&) {
        if (created && i == 0) fs::remove_all(out);  // bad input to the first stage: no output at all
        throw;
      }
      if (rc != 0) return rc;  // interrupted (130) or failed: what is done stays for the next run
      write_file_atomic(done.string(), stage_id.dump(2), "run");
    }
    input = (dir / "model.safetensors").string();
    stage_reports.push_back(mc::report_from_json(read_file_text((dir / "report.json").string()), (dir / "report.json").string()));
  }

  // The combined report: the first stage's baseline against the last stage's result.
  rep = stage_reports.back();
  const mc::Report& base = stage_reports.front();
  for (auto& m : rep.metrics)
    for (const auto& b : base.metrics)
      if (b.name == m.name) m.baseline = b.baseline;
  // Metrics measured against the stage's own input (KL, agreement) only hold for one stage.
  if (stage_reports.size() > 1)
    rep.metrics.erase(std::remove_if(rep.metrics.begin(), rep.metrics.end(),
                                     [](const mc::MetricRow& m) {
                                       return m.name.find("KL(") != std::string::npos ||
                                              m.name.find("same top-1") != std::string::npos ||
                                              m.name.find("before training") != std::string::npos;
                                     }),
                      rep.metrics.end());
  std::map<std::string, mc::LayerRow> layers;
  std::vector<std::string> order;
  rep.steps.clear();
  rep.warnings.clear();
  rep.settings.clear();
  for (size_t i = 0; i < stage_reports.size(); ++i) {
    const mc::Report& s = stage_reports[i];
    for (const auto& l : s.layers) {
      if (!layers.count(l.name)) order.push_back(l.name);
      layers[l.name] = l;
    }
    double secs = 0, peak = 0;
    for (const auto& x : s.steps) secs += x.seconds, peak = std::max(peak, x.peak_rss_mib);
    rep.steps.push_back({"stage " + std::to_string(i + 1) + ": " + recipe.stages[i].pass + " (" + s.method + ")", secs, peak});
    for (const auto& w : s.warnings) rep.warnings.push_back("stage " + std::to_string(i + 1) + ": " + w);
    rep.settings["stage " + std::to_string(i + 1)] = recipe.stages[i].describe();
  }
  rep.layers.clear();
  for (const auto& n : order) rep.layers.push_back(layers.at(n));
  rep.title = (recipe.name.empty() ? fs::path(recipe_path).stem().string() : recipe.name) + ": " +
              fs::path(model).filename().string();
  rep.method = "recipe " + (recipe.name.empty() ? recipe_path : recipe.name);
  rep.model = model;
  const fs::path final_model = fs::path(out) / "model.safetensors";
  fs::copy_file(input, final_model, fs::copy_options::overwrite_existing);
  rep.output = final_model.string();
  if (!recipe.export_format.empty() && recipe.export_format != "safetensors") {
    // The final export (mcompress export): DIR/model.gguf, DIR/model.q8.bin or DIR/hf/.
    const std::string& f = recipe.export_format;
    const fs::path target = fs::path(out) / (f.rfind("gguf", 0) == 0 ? "model.gguf"
                                             : f == "llama2c-q8"      ? "model.q8.bin"
                                                                      : "hf");
    std::vector<std::string> ea = {final_model.string(), "--format", f, "-o", target.string()};
    if (!tokenizer.empty()) ea.insert(ea.end(), {"--tokenizer", tokenizer});
    if (common.quiet) ea.push_back("-q");
    if (!common.quiet) std::printf("\n== export: %s ==\n", f.c_str());
    if (int erc = cmd_export(ea); erc != 0) return erc;
    rep.output = target.string();
    rep.settings["export"] = f + " -> " + target.string();
  }
  rep.settings["recipe"] = (fs::path(out) / "recipe.yaml").string() + " (copy of " + recipe_path + ")";
  if (!recipe.description.empty()) rep.settings["description"] = recipe.description;
  rep.size_before = model_bytes(model);
  rep.size_after = model_bytes(rep.output);  // the final artifact (the export when there is one)
  rep.command_line = "mcompress run";
  for (const auto& x : args) rep.command_line += " " + x;
  if (run_seed) rep.seed = std::to_string(*run_seed);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rep.settings["wall time"] = fmt("%.1f s", total) + (chain_reused ? " (every stage reused)" : "");
  int rc = 0;
  if (recipe.gate) {
    const mc::MetricRow* m = nullptr;
    for (const auto& x : rep.metrics)
      if (x.name == recipe.gate->metric) m = &x;
    if (!m || !m->baseline || !m->compressed) {
      rep.settings["accuracy gate"] = "FAILED: metric '" + recipe.gate->metric + "' was not measured (give --eval DATA)";
      rc = 3;
    } else {
      auto [ok, verdict] = mc::check_gate(*recipe.gate, *m->baseline, *m->compressed, m->higher_is_better);
      rep.settings["accuracy gate"] = verdict;
      if (!ok) rc = 3;
    }
  }
  mc::write_report(rep, out);
  if (!common.quiet) {
    std::printf("\n== recipe %s: %zu stage(s) ==\n", recipe.name.c_str(), recipe.stages.size());
    print_summary(rep, false, out, "stored bits per weight");
    if (recipe.gate) std::printf("accuracy gate: %s\n", rep.settings["accuracy gate"].c_str());
  }
  if (rc == 3) std::fprintf(stderr, "mcompress: accuracy gate %s\n", rep.settings["accuracy gate"].c_str());
  return rc;
}

}  // namespace mcli
