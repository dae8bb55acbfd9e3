// The distill stage (pipeline.h): teacher-student distillation for language models and classifiers,
// and recovery fine-tuning of a compressed model (its sparsity masks and quantization grids kept,
// re-packed at the end).
#include <ATen/ATen.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "job.h"
#include "mcompress/checkpoint.h"
#include "mcompress/distill.h"
#include "mcompress/error.h"
#include "mcompress/generate.h"
#include "mcompress/model.h"
#include "mcompress/models/classifier.h"
#include "mcompress/models/llama.h"
#include "mcompress/prune/structured.h"
#include "mcompress/quant/fake_quant.h"
#include "mcompress/quant/packed.h"
#include "mcompress/report.h"
#include "mcompress/rng.h"
#include "mcompress/tokenizer.h"
#include "mcompress/train.h"

namespace mc {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::atomic<bool> g_interrupt{false};
extern "C" void on_signal(int) { g_interrupt.store(true); }

DistillData to_distill_data(const EvalData& ed) {
  DistillData d;
  if (ed.labeled) {
    Shape shape = ed.examples.example_shape;
    std::vector<int64_t> s = {ed.examples.count};
    s.insert(s.end(), shape.begin(), shape.end());
    d.inputs = at::from_blob(const_cast<float*>(ed.examples.inputs.data()), s, at::kFloat).clone();
    d.labels = at::from_blob(const_cast<int64_t*>(ed.examples.labels.data()), {ed.examples.count}, at::kLong).clone();
  } else {
    for (const auto& doc : ed.corpus.docs) d.tokens.insert(d.tokens.end(), doc.begin(), doc.end());
  }
  return d;
}


// The metric distillation reports on: bits per byte for language models (when token bytes are known),
// else the report's primary metric (top-1 accuracy for classifiers).
std::optional<double> headline(const std::vector<MetricRow>& rows, bool compressed) {
  const MetricRow* pick = nullptr;
  for (const auto& r : rows)
    if (r.name == "bits per byte" || (!pick && r.is_primary)) pick = &r;
  if (!pick) return std::nullopt;
  return compressed ? pick->compressed : pick->baseline;
}

}  // namespace

JobResult run_distill(const StageOptions& so, const JobIO& io, const EventSink& events) {
  const std::string teacher_path = so.text("teacher"), student_config = so.text("student-config"),
                    student_init = so.text("student-init"), student_path = so.text("student"), data = so.text("data"),
                    eval_data = so.text("eval"), out = io.out, tokenizer = so.text("tokenizer"), arch = so.text("arch"),
                    device = so.text("device"), loss_spec = so.text("loss"), layer_map_spec = so.text("layer-map"),
                    data_range = so.text("data-range"), eval_range = so.text("eval-range");
  const int64_t generate = so.integer("generate"), gen_length = so.integer("gen-length"),
                calib_samples = so.integer("calib-samples"), window = so.integer("window"),
                max_docs = so.integer("max-docs");
  const double gen_temperature = so.real("gen-temperature"), gen_top_p = so.real("gen-top-p");
  const bool truncate = so.flag("truncate"), tokens_u16 = so.flag("tokens-u16"), tokens_u32 = so.flag("tokens-u32");
  TrainOptions o;
  o.steps = so.integer("steps"), o.batch = so.integer("batch"), o.accumulate = so.integer("accumulate");
  o.seq_len = so.integer("seq-len"), o.lr = so.real("lr"), o.min_lr = so.real("min-lr");
  o.warmup = so.integer("warmup"), o.weight_decay = so.real("weight-decay"), o.grad_clip = so.real("grad-clip");
  o.eval_every = so.integer("eval-every"), o.checkpoint_every = so.integer("checkpoint-every");
  o.resume = so.flag("resume"), o.seed = so.unsigned_integer("seed");
  if (teacher_path.empty()) so.fail("teacher", "is required (the teacher model)");
  if (out.empty()) fail("distill", "-o OUT is required");
  // ---- option checks (nothing is read or written before these pass) ----
  const int sources = !student_config.empty() + !student_init.empty() + !student_path.empty();
  if (sources != 1) fail("distill", "give exactly one of --student-config, --student-init, --student");
  if (data.empty() && generate <= 0) fail("distill", "no training data: give --data D and/or --generate N");
  if (generate < 0) fail("distill", "--generate must be >= 0");
  if (o.min_lr < 0) o.min_lr = o.lr / 10;
  validate(o);
  if (!(gen_temperature >= 0) || !(gen_top_p > 0 && gen_top_p <= 1))
    fail("distill", "--gen-temperature must be >= 0 and --gen-top-p in (0, 1]");
  if (!student_init.empty() && student_init.rfind("prune:", 0) != 0)
    fail("distill", "--student-init '", student_init, "' must start with prune: (e.g. prune:every=2)");
  const DistillLoss loss = parse_distill_loss(loss_spec);
  const std::string state_path = (fs::path(out) / "train-state.safetensors").string();
  o.checkpoint_path = state_path;
  if (fs::exists(state_path) && !o.resume)
    fail("distill", out, " holds a training checkpoint: pass --resume to continue it, or choose another -o");
  if (fs::exists(out) && !fs::is_directory(out)) fail("distill", out, " exists and is not a directory");

    Report rep;
  rep.model = teacher_path;
  rep.method = student_path.empty() ? "distill" : "recovery fine-tuning";
  rep.command_line = io.command_line;
  rep.seed = std::to_string(o.seed);

  auto t = Clock::now();
  LoadOptions lo;
  lo.arch_file = arch;
  lo.device = device;
  auto teacher = load_model(teacher_path, lo);
  rep.steps.push_back({"load teacher", since(t), take_peak_rss_mib()});
  const bool lm = teacher->is_language_model();
  EvalDataOptions dopt{data, tokenizer, "<|endoftext|>", tokens_u16, tokens_u32};
  EvalData train_ed, eval_ed;
  if (!data.empty()) {
    train_ed = load_eval_data(*teacher, teacher_path, dopt);
    slice_eval_data(train_ed, data_range, "--data-range");
  } else if (!data_range.empty()) {
    fail("distill", "--data-range needs --data");
  }
  const bool have_eval = !eval_data.empty();
  if (have_eval) {
    dopt.data = eval_data;
    dopt.tokens_u16 = dopt.tokens_u32 = false;  // those name --data's width; token files say it by extension
    eval_ed = load_eval_data(*teacher, teacher_path, dopt);
    slice_eval_data(eval_ed, eval_range, "--eval-range");
  }
  if (!lm && data.empty()) fail("distill", "a classifier's --generate mixes training inputs: give --data too");
  DistillData train_data = data.empty() ? DistillData{} : to_distill_data(train_ed);
  DistillData valid_data = have_eval ? to_distill_data(eval_ed) : DistillData{};
  std::unique_ptr<Tokenizer> tok;
  if (lm) {
    const std::string tp = tokenizer.empty() ? find_tokenizer(teacher_path) : tokenizer;
    if (!tp.empty()) tok = load_tokenizer(tp);
    if (tok && tok->text_vocab_size() > teacher->vocab_size())  // a padded embedding (more rows) is fine
      fail("distill", tp, ": tokenizer has ", tok->text_vocab_size(), " tokens, the teacher only ", teacher->vocab_size());
  }

  // ---- teacher-generated data (kept in memory until every check has passed) ----
  const std::string gen_path = (fs::path(out) / (lm ? "generated.u32" : "generated.safetensors")).string();
  DistillData generated;
  std::string gen_note;
  if (generate > 0) {
    t = Clock::now();
    if (lm) {
      if (o.resume && fs::exists(gen_path)) {
        generated.tokens = read_token_file(gen_path, 4);
        gen_note = "reused " + gen_path;
      } else {
        SampleBatchOptions so;
        so.sequences = generate;
        so.length = std::min<int64_t>(gen_length > 0 ? gen_length : o.seq_len + 1, teacher->max_seq_len());
        so.batch = 64;
        so.temperature = gen_temperature, so.top_p = gen_top_p, so.seed = o.seed;
        so.start_id = tok ? tok->bos_id() : 1;
        if (tok && tok->eos_id() >= 0) so.stop_ids.push_back(tok->eos_id());
        so.stop_ids.push_back(so.start_id);  // llama2.c stories: BOS starts the next story
        const bool tty = ::isatty(STDOUT_FILENO);
        auto seqs = sample_sequences(*teacher, so, [&](int64_t done, int64_t total) {
          events.emit("generate", nlohmann::json({{"done", done}, {"total", total}}).dump());
          if (!events.text()) return;
          const double s = since(t);
          std::string line = "generating " + std::to_string(done) + "/" + std::to_string(total) +
                             " sequences from the teacher  ETA " + eta_text(s / done * (total - done));
          if (tty) std::cout << "\r" << line << std::flush;
          else if (done == total || done % (so.batch * 8) == 0) std::cout << line << "\n" << std::flush;
        });
        if (events.text() && ::isatty(STDOUT_FILENO)) std::cout << "\n";
        for (const auto& s : seqs) generated.tokens.insert(generated.tokens.end(), s.begin(), s.end());
        gen_note = std::to_string(generate) + " sequences of up to " + std::to_string(so.length) +
                   " tokens sampled from the teacher (temperature " + fmt_num("%g", gen_temperature) + ", top-p " +
                   fmt_num("%g", gen_top_p) + ", seed " + std::to_string(o.seed) + "): " +
                   commas(generated.tokens.size()) + " tokens";
      }
    } else {
      generated = mixup_inputs(train_data, generate, o.seed);
      gen_note = std::to_string(generate) + " mixup inputs of the training examples, labeled by the teacher only";
    }
    rep.steps.push_back({"generate training data", since(t), take_peak_rss_mib()});
  }
  DistillData train_all = train_data;
  if (lm) {
    train_all.tokens.insert(train_all.tokens.end(), generated.tokens.begin(), generated.tokens.end());
  } else if (generated.labeled()) {
    train_all.inputs = at::cat({train_data.inputs, generated.inputs});
    train_all.labels = at::cat({train_data.labels, generated.labels});
  }

  // ---- the student ----
  t = Clock::now();
  std::unique_ptr<Model> student;
  DistillOptions dopts;
  std::string student_desc;
  bool packed_student = false;
  std::map<std::string, std::string> student_extra_meta;
  if (!student_config.empty()) {
    student = student_from_config(*teacher, student_config, o.seed);
    student_desc = "from config " + student_config + " (random init, seed " + std::to_string(o.seed) + ")";
  } else if (!student_init.empty()) {
    const std::string spec = student_init.substr(6);
    const int64_t n_calib = std::max<int64_t>(1, calib_samples);
    if (lm) {
      StructuredOptions so = parse_structured_options(spec);
      check_structured(*teacher, so);
      SplitMix64 rng{o.seed ^ 0xca11b};
      at::Tensor calib = sample_windows(train_all.tokens, n_calib, o.seq_len, rng).narrow(1, 0, o.seq_len);
      auto r = prune_structured(*teacher, calib, so);
      student = make_structured_model(r);
      student_desc = "teacher pruned: " + describe(so);
      for (const auto& line : r.removed) rep.settings["student: removed"] += (rep.settings["student: removed"].empty() ? "" : "; ") + line;
    } else {
      auto* ct = dynamic_cast<ClassifierModel*>(teacher.get());
      if (!ct) fail("distill", "--student-init for classifiers needs a classifier teacher");
      ClassifierPruneOptions co = parse_classifier_prune_options(spec);
      check_classifier_prune(*ct, co);
      const int64_t n = std::min<int64_t>(n_calib * 8, train_data.inputs.size(0));
      auto r = prune_classifier_channels(*ct, train_data.inputs.narrow(0, 0, n), co);
      student = make_pruned_classifier(r);
      student_desc = "teacher pruned: " + describe(co);
      for (const auto& line : r.removed) rep.settings["student: removed"] += (rep.settings["student: removed"].empty() ? "" : "; ") + line;
    }
  } else {
    // Its own architecture when the file carries one (mcompress output), else --arch.
    LoadOptions slo = lo;
    slo.arch_file.clear();
    try {
      student = load_model(student_path, slo);
    } catch (const InputError&) {
      if (arch.empty()) throw;
      student = load_model(student_path, lo);
    }
    auto reader = open_checkpoint(student_path);
    dopts.frozen = read_frozen_grids(*reader);
    auto act = reader->metadata().find(kActivationMetadataKey);  // W8A8: activations stay quantized
    if (act != reader->metadata().end()) student_extra_meta[act->first] = act->second;
    auto rot = reader->metadata().find(kRotationMetadataKey);  // --rotate hadamard-online: R4 stays online
    if (rot != reader->metadata().end()) student_extra_meta[rot->first] = rot->second;
    packed_student = !dopts.frozen.empty();
    for (auto& [k, g] : dopts.frozen) g.to(student->device());
    int64_t nq = 0, ns = 0;
    for (const auto& [k, g] : dopts.frozen) nq += g.quant.has_value(), ns += g.sparse.has_value();
    if (!packed_student) {
      // A dense checkpoint: keep the zeros of pruned weights as the mask (nothing else is frozen).
      student_desc = "compressed model " + student_path + " (dense: zeros kept as the sparsity mask)";
    } else {
      student_desc = "compressed model " + student_path + " (" + std::to_string(nq) + " quantized, " +
                     std::to_string(ns) + " sparse weights kept on their grid and mask)";
    }
  }
  if (student->device() != teacher->device()) student->to(teacher->device());
  rep.steps.push_back({"build student", since(t), take_peak_rss_mib()});
  if (!student_path.empty() && !packed_student) {
    // Dense compressed file: weights with exact zeros keep them (a bitmask frozen grid without quantization).
    for (const auto& L : student->layers()) {
      if (L.kind != LayerKind::Linear && L.kind != LayerKind::Conv2d) continue;
      const at::Tensor& w = student->param(L.weight);
      if (w.eq(0).sum().item<int64_t>() * 10 < w.numel()) continue;  // under 10% zeros: not pruned
      FrozenGrid g;
      g.key = L.weight;
      g.weight_shape = std::vector<int64_t>(w.sizes().begin(), w.sizes().end());
      g.mask = w.reshape({w.size(0), -1}).ne(0);
      dopts.frozen[L.weight] = g;
    }
  }
  dopts.loss = loss;
  dopts.train = o;
  if (loss.hidden > 0 || loss.attention > 0 || !layer_map_spec.empty())
    dopts.layer_map = parse_layer_map(layer_map_spec, student->num_blocks(), teacher->num_blocks());
  check_distill(*teacher, *student, dopts);
  if (lm && o.seq_len > student->max_seq_len())
    fail("distill", "--seq-len ", o.seq_len, " exceeds the student's context ", student->max_seq_len());

  // What this run is, for resume: another configuration's checkpoint is refused.
  auto& id = dopts.train.identity;
  id["teacher"] = fs::absolute(teacher_path).string();
  id["student"] = !student_config.empty() ? "config " + fs::absolute(student_config).string()
                  : !student_init.empty() ? student_init : "compressed " + fs::absolute(student_path).string();
  id["loss"] = loss.describe();
  id["layer_map"] = describe(dopts.layer_map);
  id["data"] = data.empty() ? "" : fs::absolute(data).string() + " [" + data_range + "]";
  id["generate"] = std::to_string(generate) + "/" + std::to_string(gen_length) + "/" + fmt_num("%g", gen_temperature) +
                   "/" + fmt_num("%g", gen_top_p);
  dopts.train.interrupt = &g_interrupt;
  check_resume(dopts.train);

  // ---- from here on the output directory is written ----
  fs::create_directories(out);
  if (generate > 0 && lm && !(o.resume && fs::exists(gen_path))) {
    const std::vector<uint32_t> u(generated.tokens.begin(), generated.tokens.end());
    write_file_atomic(gen_path, std::string(reinterpret_cast<const char*>(u.data()), u.size() * 4), "distill");
    gen_note += " (saved as " + gen_path + ")";
  }

  // ---- baseline evaluations ----
  LmEvalOptions eo;
  eo.window = window, eo.truncate = truncate, eo.max_docs = max_docs;
  std::vector<MetricRow> before_rows;
  if (have_eval) {
    t = Clock::now();
    evaluate_into(*teacher, nullptr, eval_ed, eo, false, rep.metrics, rep.eval_protocol);
    std::string proto;
    evaluate_into(*student, nullptr, eval_ed, eo, true, before_rows, proto);
    rep.steps.push_back({"evaluate teacher and student before training", since(t), take_peak_rss_mib()});
  }
  const uint64_t tp = count_parameters(*teacher), sp = count_parameters(*student);
  if (events.text()) {
    std::printf("teacher %s: %s parameters; student %s: %s parameters (%.1f%%)\n", teacher_path.c_str(),
                commas(tp).c_str(), student_desc.c_str(), commas(sp).c_str(), 100.0 * double(sp) / double(tp));
    if (!gen_note.empty()) std::printf("training data: %s\n", gen_note.c_str());
    if (auto b = headline(before_rows, true); b && have_eval)
      std::printf("before training: student %.4f, teacher %.4f (%s)\n", *b, *headline(rep.metrics, false),
                  lm ? "bits per byte" : "top-1");
    std::printf("loss %s, %lld steps x %lld %s\n", loss.describe().c_str(), static_cast<long long>(o.steps),
                static_cast<long long>(o.batch * o.accumulate), lm ? ("sequences of " + std::to_string(o.seq_len) + " tokens").c_str() : "examples");
  }

  // ---- training ----
  auto progress = events.train_progress();

  g_interrupt.store(false);
  auto old_int = std::signal(SIGINT, on_signal);
  auto old_term = std::signal(SIGTERM, on_signal);
  t = Clock::now();
  TrainResult tr;
  try {
    tr = distill(*teacher, *student, train_all, valid_data, dopts, progress);
  } catch (...) {
    std::signal(SIGINT, old_int), std::signal(SIGTERM, old_term);
    throw;
  }
  std::signal(SIGINT, old_int), std::signal(SIGTERM, old_term);
  if (tr.interrupted) {
    if (!events.quiet || events.json) std::printf("\ninterrupted after step %lld of %lld: state saved in %s; continue with the same command and --resume\n",
                static_cast<long long>(tr.steps), static_cast<long long>(o.steps), state_path.c_str());
    JobResult r;
    r.status = 130;
    r.report = rep;
    return r;
  }
  rep.steps.push_back({"train " + std::to_string(o.steps - tr.resumed_from) + " steps", since(t), take_peak_rss_mib()});

  // ---- write the student ----
  t = Clock::now();
  const std::string out_model = (fs::path(out) / "model.safetensors").string();
  if (packed_student) {
    PackedCheckpointWriter writer(out_model);
    for (const auto& [k, v] : student->params())
      if (!dopts.frozen.count(k)) writer.add_dense(k, v);
    for (const auto& [k, g] : dopts.frozen) add_like(writer, student->param(k), g);
    auto meta = student->config_metadata();
    meta.insert(student_extra_meta.begin(), student_extra_meta.end());
    writer.finish(meta);
  } else {
    save_model(*student, out_model, student_extra_meta);
  }
  rep.output = out_model;
  rep.steps.push_back({"write student", since(t), take_peak_rss_mib()});
  rep.size_before = model_bytes(teacher_path);
  rep.size_after = fs::file_size(out_model);

  // ---- report ----
  rep.title = fs::path(teacher_path).filename().string() + " -> student: " + rep.method;
  rep.settings["student"] = student_desc;
  rep.settings["parameters"] = commas(tp) + " teacher, " + commas(sp) + " student (" +
                               fmt_num("%.1f%%", 100.0 * double(sp) / double(tp)) + ")";
  rep.settings["loss"] = loss.describe();
  if (!dopts.layer_map.empty()) rep.settings["layer map (student:teacher)"] = describe(dopts.layer_map);
  rep.settings["training"] = std::to_string(o.steps) + " steps x " + std::to_string(o.batch * o.accumulate) +
                             (lm ? " x " + std::to_string(o.seq_len) + " tokens" : " examples") + ", AdamW lr " +
                             fmt_num("%g", o.lr) + " -> " + fmt_num("%g", o.min_lr) + " (cosine, " +
                             std::to_string(o.warmup) + " warm-up), weight decay " + fmt_num("%g", o.weight_decay) +
                             ", clip " + fmt_num("%g", o.grad_clip) + ", seed " + std::to_string(o.seed);
  rep.settings["training data"] = (data.empty() ? std::string() : data + (data_range.empty() ? "" : " [" + data_range + "]")) +
                                  (gen_note.empty() ? "" : (data.empty() ? "" : " + ") + gen_note);
  if (have_eval) rep.settings["held-out data"] = eval_data + (eval_range.empty() ? "" : " [" + eval_range + "]");
  rep.settings["throughput"] = fmt_num("%.0f", tr.items_per_s) + (lm ? " tokens/s" : " examples/s") + " (" +
                               fmt_num("%.1f", tr.seconds) + " s" + (tr.resumed_from ? ", resumed at step " + std::to_string(tr.resumed_from) : "") + ")";
  if (!tr.history.empty()) {
    std::string h;
    for (const auto& p : tr.history)
      h += (h.empty() ? "" : ", ") + std::to_string(p.step) + ": " + fmt_num("%.4f", p.valid_loss);
    rep.settings["held-out loss by step (nats)"] = h;
  }
  if (have_eval) {
    student.reset();
    t = Clock::now();
    LoadOptions slo = lo;
    slo.arch_file.clear();  // the student's file carries its own architecture
    auto reloaded = load_model(out_model, slo);
    evaluate_into(*reloaded, teacher.get(), eval_ed, eo, true, rep.metrics, rep.eval_protocol);
    rep.steps.push_back({"evaluate student (reloaded from the file)", since(t), take_peak_rss_mib()});
    // Speed: the same evaluation alone (no reference model) for both, warm, one after the other.
    std::vector<MetricRow> scratch;
    std::string proto;
    t = Clock::now();
    evaluate_into(*teacher, nullptr, eval_ed, eo, false, scratch, proto);
    const double teacher_s = since(t);
    t = Clock::now();
    evaluate_into(*reloaded, nullptr, eval_ed, eo, true, scratch, proto);
    const double student_s = since(t);
    rep.settings["speed"] = fmt_num("%.2fx", teacher_s / std::max(student_s, 1e-9)) +
                            " the teacher's (held-out evaluation: teacher " + fmt_num("%.2f", teacher_s) +
                            " s, student " + fmt_num("%.2f", student_s) + " s)";
    for (const auto& r : before_rows) {
      if (r.name != "bits per byte" && r.name != "top-1 accuracy") continue;
      MetricRow row = r;
      row.name = r.name + " (student before training)";
      row.is_primary = false;
      for (const auto& m : rep.metrics)
        if (m.name == r.name) row.baseline = m.baseline;
      rep.metrics.push_back(row);
    }
    auto b = headline(before_rows, true), a = headline(rep.metrics, true), tv = headline(rep.metrics, false);
    if (a && b && tv && std::fabs(*b - *tv) > 1e-12)
      rep.settings["gap to the teacher closed"] = fmt_num("%.1f%%", 100.0 * (*b - *a) / (*b - *tv)) + " (" +
                                                   fmt_num("%.4f", *b) + " -> " + fmt_num("%.4f", *a) + ", teacher " +
                                                   fmt_num("%.4f", *tv) + ")";
  }
  write_report(rep, out);
  JobResult r;
  r.report = rep;
  r.labeled = eval_ed.labeled;
  return r;
}

}  // namespace mc
