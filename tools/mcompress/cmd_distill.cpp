// mcompress distill --teacher T (--student-config S | --student-init prune:SPEC | --student COMPRESSED)
//                   (--data D | --generate N) --steps K -o OUT [--eval DATA] [--resume]
// Teacher-student distillation for language models and classifiers, and recovery fine-tuning of a
// compressed model (its sparsity masks and quantization grids kept, re-packed at the end).
#include <ATen/ATen.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <unistd.h>

#include "cli.h"
#include <nlohmann/json.hpp>
#include "model_files.h"
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
#include "mcompress/tokenizer.h"

namespace fs = std::filesystem;

namespace mcli {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::atomic<bool> g_interrupt{false};
extern "C" void on_signal(int) { g_interrupt.store(true); }

// "A:B" over n items -> [a, b); "" -> [0, n). InputError for a bad or empty range.
std::pair<int64_t, int64_t> parse_range(const std::string& spec, int64_t n, const char* opt) {
  if (spec.empty()) return {0, n};
  const size_t c = spec.find(':');
  int64_t a = 0, b = n;
  try {
    if (c == std::string::npos) throw std::invalid_argument("no colon");
    if (c > 0) a = std::stoll(spec.substr(0, c));
    if (c + 1 < spec.size()) b = std::stoll(spec.substr(c + 1));
  } catch (const std::exception&) {
    mc::fail("distill", opt, " '", spec, "' is not START:END (e.g. 0:8000)");
  }
  if (a < 0 || b > n || a >= b)
    mc::fail("distill", opt, " ", spec, " is empty or outside the data's ", n, " items");
  return {a, b};
}

// Keeps items [a, b) of the data (documents of a corpus, examples of a labeled set).
void slice(EvalData& ed, const std::string& spec, const char* opt) {
  if (ed.labeled) {
    const int64_t n = ed.examples.count;
    auto [a, b] = parse_range(spec, n, opt);
    const int64_t per = n ? int64_t(ed.examples.inputs.size()) / n : 0;
    ed.examples.inputs = std::vector<float>(ed.examples.inputs.begin() + a * per, ed.examples.inputs.begin() + b * per);
    ed.examples.labels = std::vector<int64_t>(ed.examples.labels.begin() + a, ed.examples.labels.begin() + b);
    ed.examples.count = b - a;
  } else {
    auto& c = ed.corpus;
    auto [a, b] = parse_range(spec, int64_t(c.docs.size()), opt);
    c.docs = std::vector<std::vector<int32_t>>(c.docs.begin() + a, c.docs.begin() + b);
    if (!c.bytes.empty()) c.bytes = std::vector<std::vector<int32_t>>(c.bytes.begin() + a, c.bytes.begin() + b);
  }
}

mc::DistillData to_distill_data(const EvalData& ed) {
  mc::DistillData d;
  if (ed.labeled) {
    mc::Shape shape = ed.examples.example_shape;
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
std::optional<double> headline(const std::vector<mc::MetricRow>& rows, bool compressed) {
  const mc::MetricRow* pick = nullptr;
  for (const auto& r : rows)
    if (r.name == "bits per byte" || (!pick && r.is_primary)) pick = &r;
  if (!pick) return std::nullopt;
  return compressed ? pick->compressed : pick->baseline;
}

}  // namespace

int cmd_distill(const std::vector<std::string>& args) {
  po::options_description desc("distill options");
  std::string teacher_path, student_config, student_init, student_path, data, eval_data, out, tokenizer, arch,
      device, loss_spec, layer_map_spec, data_range, eval_range;
  int64_t generate = 0, gen_length = 0, calib_samples = 64, window = 128, max_docs = 0;
  double gen_temperature = 1.0, gen_top_p = 1.0;
  bool truncate = false, tokens_u16 = false, tokens_u32 = false;
  mc::TrainOptions o;
  desc.add_options()
      ("teacher", po::value<std::string>(&teacher_path)->required(), "teacher model")
      ("student-config", po::value<std::string>(&student_config), "student from a config (YAML/JSON; a classifier: an architecture YAML), random init")
      ("student-init", po::value<std::string>(&student_init), "student pruned from the teacher: prune:every=2,ffn=0.5,heads=0.5 (LM) or prune:hidden=100 (classifier)")
      ("student", po::value<std::string>(&student_path), "a compressed model to recover (its masks and quantization grids are kept)")
      ("data", po::value<std::string>(&data), "training data: text, token file (.u16/.u32), MNIST directory or tensor file")
      ("data-range", po::value<std::string>(&data_range), "use documents/examples START:END of --data")
      ("generate", po::value<int64_t>(&generate)->default_value(0), "sample N sequences from the teacher (LM) or N mixup inputs (classifier) as training data")
      ("gen-length", po::value<int64_t>(&gen_length)->default_value(0), "tokens per generated sequence (0: seq-len + 1)")
      ("gen-temperature", po::value<double>(&gen_temperature)->default_value(1.0), "sampling temperature of generated data")
      ("gen-top-p", po::value<double>(&gen_top_p)->default_value(1.0), "nucleus of generated data (1: the full distribution)")
      ("eval", po::value<std::string>(&eval_data), "held-out data: evaluated during training and for the report")
      ("eval-range", po::value<std::string>(&eval_range), "use documents/examples START:END of --eval")
      ("output,o", po::value<std::string>(&out)->required(), "output directory (model.safetensors, report, train-state)")
      ("loss", po::value<std::string>(&loss_spec)->default_value("kl=1,T=2"), "weighted terms: kl, reverse_kl, jsd (beta), ce, hidden, attention; T temperature")
      ("layer-map", po::value<std::string>(&layer_map_spec), "student:teacher block pairs for hidden/attention terms (default: uniform)")
      ("steps", po::value<int64_t>(&o.steps)->default_value(1000), "optimizer steps")
      ("batch", po::value<int64_t>(&o.batch)->default_value(16), "sequences (examples) per micro-batch")
      ("accumulate", po::value<int64_t>(&o.accumulate)->default_value(1), "micro-batches per step")
      ("seq-len", po::value<int64_t>(&o.seq_len)->default_value(128), "tokens per training sequence")
      ("lr", po::value<double>(&o.lr)->default_value(1e-3), "peak learning rate")
      ("min-lr", po::value<double>(&o.min_lr)->default_value(-1), "final learning rate (default lr/10)")
      ("warmup", po::value<int64_t>(&o.warmup)->default_value(50), "linear warm-up steps")
      ("weight-decay", po::value<double>(&o.weight_decay)->default_value(0.0), "AdamW decoupled weight decay (never on frozen-grid weights)")
      ("grad-clip", po::value<double>(&o.grad_clip)->default_value(1.0), "global gradient norm clip (0: off)")
      ("eval-every", po::value<int64_t>(&o.eval_every)->default_value(200), "steps between held-out evaluations")
      ("checkpoint-every", po::value<int64_t>(&o.checkpoint_every)->default_value(200), "steps between training checkpoints")
      ("resume", po::bool_switch(&o.resume), "continue from OUT/train-state.safetensors")
      ("seed", po::value<uint64_t>(&o.seed)->default_value(1), "seed of init, sampling and data order")
      ("calib-samples", po::value<int64_t>(&calib_samples)->default_value(64), "--student-init: sequences/examples ranking what is pruned")
      ("tokenizer", po::value<std::string>(&tokenizer), "tokenizer (default: the one beside the teacher)")
      ("tokens-u16", po::bool_switch(&tokens_u16), "--data is a token file of uint16 ids (else by extension .u16/.u32)")
      ("tokens-u32", po::bool_switch(&tokens_u32), "--data is a token file of uint32 ids")
      ("arch", po::value<std::string>(&arch), "classifier architecture YAML of the teacher")
      ("window", po::value<int64_t>(&window)->default_value(128), "report: tokens per evaluation window")
      ("truncate", po::bool_switch(&truncate), "report: score only each document's first window")
      ("max-docs", po::value<int64_t>(&max_docs)->default_value(0), "report: evaluate at most N documents (0: all)")
      ("device", po::value<std::string>(&device)->default_value("cpu"), "cpu or cuda");
  po::positional_options_description pos;
  po::variables_map vm;
  CommonOptions common;
  if (!parse_command_line("distill",
                          "--teacher T (--student-config S | --student-init prune:SPEC | --student C) "
                          "(--data D | --generate N) --steps K -o OUT [options]",
                          args, desc, pos, vm, common))
    return 0;

  // ---- option checks (nothing is read or written before these pass) ----
  const int sources = !student_config.empty() + !student_init.empty() + !student_path.empty();
  if (sources != 1) mc::fail("distill", "give exactly one of --student-config, --student-init, --student");
  if (data.empty() && generate <= 0) mc::fail("distill", "no training data: give --data D and/or --generate N");
  if (generate < 0) mc::fail("distill", "--generate must be >= 0");
  if (o.min_lr < 0) o.min_lr = o.lr / 10;
  mc::validate(o);
  if (!(gen_temperature >= 0) || !(gen_top_p > 0 && gen_top_p <= 1))
    mc::fail("distill", "--gen-temperature must be >= 0 and --gen-top-p in (0, 1]");
  if (!student_init.empty() && student_init.rfind("prune:", 0) != 0)
    mc::fail("distill", "--student-init '", student_init, "' must start with prune: (e.g. prune:every=2)");
  const mc::DistillLoss loss = mc::parse_distill_loss(loss_spec);
  const std::string state_path = (fs::path(out) / "train-state.safetensors").string();
  o.checkpoint_path = state_path;
  if (fs::exists(state_path) && !o.resume)
    mc::fail("distill", out, " holds a training checkpoint: pass --resume to continue it, or choose another -o");
  if (fs::exists(out) && !fs::is_directory(out)) mc::fail("distill", out, " exists and is not a directory");

  std::string cmdline = "mcompress distill";
  for (const auto& a : args) cmdline += " " + a;
  mc::Report rep;
  rep.model = teacher_path;
  rep.method = student_path.empty() ? "distill" : "recovery fine-tuning";
  rep.command_line = cmdline;
  rep.seed = std::to_string(o.seed);

  auto t = Clock::now();
  mc::LoadOptions lo;
  lo.arch_file = arch;
  lo.device = device;
  auto teacher = mc::load_model(teacher_path, lo);
  rep.steps.push_back({"load teacher", since(t), mc::take_peak_rss_mib()});
  const bool lm = teacher->is_language_model();
  EvalDataOptions dopt{data, tokenizer, "<|endoftext|>", tokens_u16, tokens_u32};
  EvalData train_ed, eval_ed;
  if (!data.empty()) {
    train_ed = load_eval_data(*teacher, teacher_path, dopt);
    slice(train_ed, data_range, "--data-range");
  } else if (!data_range.empty()) {
    mc::fail("distill", "--data-range needs --data");
  }
  const bool have_eval = !eval_data.empty();
  if (have_eval) {
    dopt.data = eval_data;
    dopt.tokens_u16 = dopt.tokens_u32 = false;  // those name --data's width; token files say it by extension
    eval_ed = load_eval_data(*teacher, teacher_path, dopt);
    slice(eval_ed, eval_range, "--eval-range");
  }
  if (!lm && data.empty()) mc::fail("distill", "a classifier's --generate mixes training inputs: give --data too");
  mc::DistillData train_data = data.empty() ? mc::DistillData{} : to_distill_data(train_ed);
  mc::DistillData valid_data = have_eval ? to_distill_data(eval_ed) : mc::DistillData{};
  std::unique_ptr<mc::Tokenizer> tok;
  if (lm) {
    const std::string tp = tokenizer.empty() ? find_tokenizer(teacher_path) : tokenizer;
    if (!tp.empty()) tok = mc::load_tokenizer(tp);
    if (tok && tok->vocab_size() != teacher->vocab_size())
      mc::fail("distill", tp, ": tokenizer has ", tok->vocab_size(), " tokens, the teacher ", teacher->vocab_size());
  }

  // ---- teacher-generated data (kept in memory until every check has passed) ----
  const std::string gen_path = (fs::path(out) / (lm ? "generated.u32" : "generated.safetensors")).string();
  mc::DistillData generated;
  std::string gen_note;
  if (generate > 0) {
    t = Clock::now();
    if (lm) {
      if (o.resume && fs::exists(gen_path)) {
        generated.tokens = mc::read_token_file(gen_path, 4);
        gen_note = "reused " + gen_path;
      } else {
        mc::SampleBatchOptions so;
        so.sequences = generate;
        so.length = std::min<int64_t>(gen_length > 0 ? gen_length : o.seq_len + 1, teacher->max_seq_len());
        so.batch = 64;
        so.temperature = gen_temperature, so.top_p = gen_top_p, so.seed = o.seed;
        so.start_id = tok ? tok->bos_id() : 1;
        if (tok && tok->eos_id() >= 0) so.stop_ids.push_back(tok->eos_id());
        so.stop_ids.push_back(so.start_id);  // llama2.c stories: BOS starts the next story
        const bool tty = ::isatty(STDOUT_FILENO);
        auto seqs = mc::sample_sequences(*teacher, so, [&](int64_t done, int64_t total) {
          if (log_json()) log_event("generate", nlohmann::json({{"done", done}, {"total", total}}).dump());
          if (common.quiet) return;
          const double s = since(t);
          std::string line = "generating " + std::to_string(done) + "/" + std::to_string(total) +
                             " sequences from the teacher  ETA " + eta_text(s / done * (total - done));
          if (tty) std::cout << "\r" << line << std::flush;
          else if (done == total || done % (so.batch * 8) == 0) std::cout << line << "\n" << std::flush;
        });
        if (!common.quiet && ::isatty(STDOUT_FILENO)) std::cout << "\n";
        for (const auto& s : seqs) generated.tokens.insert(generated.tokens.end(), s.begin(), s.end());
        gen_note = std::to_string(generate) + " sequences of up to " + std::to_string(so.length) +
                   " tokens sampled from the teacher (temperature " + fmt("%g", gen_temperature) + ", top-p " +
                   fmt("%g", gen_top_p) + ", seed " + std::to_string(o.seed) + "): " +
                   with_commas(generated.tokens.size()) + " tokens";
      }
    } else {
      generated = mc::mixup_inputs(train_data, generate, o.seed);
      gen_note = std::to_string(generate) + " mixup inputs of the training examples, labeled by the teacher only";
    }
    rep.steps.push_back({"generate training data", since(t), mc::take_peak_rss_mib()});
  }
  mc::DistillData train_all = train_data;
  if (lm) {
    train_all.tokens.insert(train_all.tokens.end(), generated.tokens.begin(), generated.tokens.end());
  } else if (generated.labeled()) {
    train_all.inputs = at::cat({train_data.inputs, generated.inputs});
    train_all.labels = at::cat({train_data.labels, generated.labels});
  }

  // ---- the student ----
  t = Clock::now();
  std::unique_ptr<mc::Model> student;
  mc::DistillOptions dopts;
  std::string student_desc;
  bool packed_student = false;
  std::map<std::string, std::string> student_extra_meta;
  if (!student_config.empty()) {
    student = mc::student_from_config(*teacher, student_config, o.seed);
    student_desc = "from config " + student_config + " (random init, seed " + std::to_string(o.seed) + ")";
  } else if (!student_init.empty()) {
    const std::string spec = student_init.substr(6);
    const int64_t n_calib = std::max<int64_t>(1, calib_samples);
    if (lm) {
      mc::StructuredOptions so = mc::parse_structured_options(spec);
      mc::check_structured(*teacher, so);
      mc::SplitMix64 rng{o.seed ^ 0xca11b};
      at::Tensor calib = mc::sample_windows(train_all.tokens, n_calib, o.seq_len, rng).narrow(1, 0, o.seq_len);
      auto r = mc::prune_structured(*teacher, calib, so);
      student = mc::make_structured_model(r);
      student_desc = "teacher pruned: " + mc::describe(so);
      for (const auto& line : r.removed) rep.settings["student: removed"] += (rep.settings["student: removed"].empty() ? "" : "; ") + line;
    } else {
      auto* ct = dynamic_cast<mc::ClassifierModel*>(teacher.get());
      if (!ct) mc::fail("distill", "--student-init for classifiers needs a classifier teacher");
      mc::ClassifierPruneOptions co = mc::parse_classifier_prune_options(spec);
      mc::check_classifier_prune(*ct, co);
      const int64_t n = std::min<int64_t>(n_calib * 8, train_data.inputs.size(0));
      auto r = mc::prune_classifier_channels(*ct, train_data.inputs.narrow(0, 0, n), co);
      student = mc::make_pruned_classifier(r);
      student_desc = "teacher pruned: " + mc::describe(co);
      for (const auto& line : r.removed) rep.settings["student: removed"] += (rep.settings["student: removed"].empty() ? "" : "; ") + line;
    }
  } else {
    // Its own architecture when the file carries one (mcompress output), else --arch.
    mc::LoadOptions slo = lo;
    slo.arch_file.clear();
    try {
      student = mc::load_model(student_path, slo);
    } catch (const mc::InputError&) {
      if (arch.empty()) throw;
      student = mc::load_model(student_path, lo);
    }
    auto reader = mc::open_checkpoint(student_path);
    dopts.frozen = mc::read_frozen_grids(*reader);
    auto act = reader->metadata().find(mc::kActivationMetadataKey);  // W8A8: activations stay quantized
    if (act != reader->metadata().end()) student_extra_meta[act->first] = act->second;
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
  rep.steps.push_back({"build student", since(t), mc::take_peak_rss_mib()});
  if (!student_path.empty() && !packed_student) {
    // Dense compressed file: weights with exact zeros keep them (a bitmask frozen grid without quantization).
    for (const auto& L : student->layers()) {
      if (L.kind != mc::LayerKind::Linear && L.kind != mc::LayerKind::Conv2d) continue;
      const at::Tensor& w = student->param(L.weight);
      if (w.eq(0).sum().item<int64_t>() * 10 < w.numel()) continue;  // under 10% zeros: not pruned
      mc::FrozenGrid g;
      g.key = L.weight;
      g.weight_shape = std::vector<int64_t>(w.sizes().begin(), w.sizes().end());
      g.mask = w.reshape({w.size(0), -1}).ne(0);
      dopts.frozen[L.weight] = g;
    }
  }
  dopts.loss = loss;
  dopts.train = o;
  if (loss.hidden > 0 || loss.attention > 0 || !layer_map_spec.empty())
    dopts.layer_map = mc::parse_layer_map(layer_map_spec, student->num_blocks(), teacher->num_blocks());
  mc::check_distill(*teacher, *student, dopts);
  if (lm && o.seq_len > student->max_seq_len())
    mc::fail("distill", "--seq-len ", o.seq_len, " exceeds the student's context ", student->max_seq_len());

  // What this run is, for resume: another configuration's checkpoint is refused.
  auto& id = dopts.train.identity;
  id["teacher"] = fs::absolute(teacher_path).string();
  id["student"] = !student_config.empty() ? "config " + fs::absolute(student_config).string()
                  : !student_init.empty() ? student_init : "compressed " + fs::absolute(student_path).string();
  id["loss"] = loss.describe();
  id["layer_map"] = mc::describe(dopts.layer_map);
  id["data"] = data.empty() ? "" : fs::absolute(data).string() + " [" + data_range + "]";
  id["generate"] = std::to_string(generate) + "/" + std::to_string(gen_length) + "/" + fmt("%g", gen_temperature) +
                   "/" + fmt("%g", gen_top_p);
  dopts.train.interrupt = &g_interrupt;
  mc::check_resume(dopts.train);

  // ---- from here on the output directory is written ----
  fs::create_directories(out);
  if (generate > 0 && lm && !(o.resume && fs::exists(gen_path))) {
    const std::vector<uint32_t> u(generated.tokens.begin(), generated.tokens.end());
    write_file_atomic(gen_path, std::string(reinterpret_cast<const char*>(u.data()), u.size() * 4), "distill");
    gen_note += " (saved as " + gen_path + ")";
  }

  // ---- baseline evaluations ----
  mc::LmEvalOptions eo;
  eo.window = window, eo.truncate = truncate, eo.max_docs = max_docs;
  std::vector<mc::MetricRow> before_rows;
  if (have_eval) {
    t = Clock::now();
    evaluate_into(*teacher, nullptr, eval_ed, eo, false, rep.metrics, rep.eval_protocol);
    std::string proto;
    evaluate_into(*student, nullptr, eval_ed, eo, true, before_rows, proto);
    rep.steps.push_back({"evaluate teacher and student before training", since(t), mc::take_peak_rss_mib()});
  }
  const uint64_t tp = count_parameters(*teacher), sp = count_parameters(*student);
  if (!common.quiet) {
    std::printf("teacher %s: %s parameters; student %s: %s parameters (%.1f%%)\n", teacher_path.c_str(),
                with_commas(tp).c_str(), student_desc.c_str(), with_commas(sp).c_str(), 100.0 * double(sp) / double(tp));
    if (!gen_note.empty()) std::printf("training data: %s\n", gen_note.c_str());
    if (auto b = headline(before_rows, true); b && have_eval)
      std::printf("before training: student %.4f, teacher %.4f (%s)\n", *b, *headline(rep.metrics, false),
                  lm ? "bits per byte" : "top-1");
    std::printf("loss %s, %lld steps x %lld %s\n", loss.describe().c_str(), static_cast<long long>(o.steps),
                static_cast<long long>(o.batch * o.accumulate), lm ? ("sequences of " + std::to_string(o.seq_len) + " tokens").c_str() : "examples");
  }

  // ---- training ----
  auto progress = train_progress(common.quiet);

  g_interrupt.store(false);
  auto old_int = std::signal(SIGINT, on_signal);
  auto old_term = std::signal(SIGTERM, on_signal);
  t = Clock::now();
  mc::TrainResult tr;
  try {
    tr = mc::distill(*teacher, *student, train_all, valid_data, dopts, progress);
  } catch (...) {
    std::signal(SIGINT, old_int), std::signal(SIGTERM, old_term);
    throw;
  }
  std::signal(SIGINT, old_int), std::signal(SIGTERM, old_term);
  if (tr.interrupted) {
    std::printf("\ninterrupted after step %lld of %lld: state saved in %s; continue with the same command and --resume\n",
                static_cast<long long>(tr.steps), static_cast<long long>(o.steps), state_path.c_str());
    return 130;
  }
  rep.steps.push_back({"train " + std::to_string(o.steps - tr.resumed_from) + " steps", since(t), mc::take_peak_rss_mib()});

  // ---- write the student ----
  t = Clock::now();
  const std::string out_model = (fs::path(out) / "model.safetensors").string();
  if (packed_student) {
    mc::PackedCheckpointWriter writer(out_model);
    for (const auto& [k, v] : student->params())
      if (!dopts.frozen.count(k)) writer.add_dense(k, v);
    for (const auto& [k, g] : dopts.frozen) mc::add_like(writer, student->param(k), g);
    auto meta = student->config_metadata();
    meta.insert(student_extra_meta.begin(), student_extra_meta.end());
    writer.finish(meta);
  } else {
    mc::save_model(*student, out_model, student_extra_meta);
  }
  rep.output = out_model;
  rep.steps.push_back({"write student", since(t), mc::take_peak_rss_mib()});
  rep.size_before = model_bytes(teacher_path);
  rep.size_after = fs::file_size(out_model);

  // ---- report ----
  rep.title = fs::path(teacher_path).filename().string() + " -> student: " + rep.method;
  rep.settings["student"] = student_desc;
  rep.settings["parameters"] = with_commas(tp) + " teacher, " + with_commas(sp) + " student (" +
                               fmt("%.1f%%", 100.0 * double(sp) / double(tp)) + ")";
  rep.settings["loss"] = loss.describe();
  if (!dopts.layer_map.empty()) rep.settings["layer map (student:teacher)"] = mc::describe(dopts.layer_map);
  rep.settings["training"] = std::to_string(o.steps) + " steps x " + std::to_string(o.batch * o.accumulate) +
                             (lm ? " x " + std::to_string(o.seq_len) + " tokens" : " examples") + ", AdamW lr " +
                             fmt("%g", o.lr) + " -> " + fmt("%g", o.min_lr) + " (cosine, " +
                             std::to_string(o.warmup) + " warm-up), weight decay " + fmt("%g", o.weight_decay) +
                             ", clip " + fmt("%g", o.grad_clip) + ", seed " + std::to_string(o.seed);
  rep.settings["training data"] = (data.empty() ? std::string() : data + (data_range.empty() ? "" : " [" + data_range + "]")) +
                                  (gen_note.empty() ? "" : (data.empty() ? "" : " + ") + gen_note);
  if (have_eval) rep.settings["held-out data"] = eval_data + (eval_range.empty() ? "" : " [" + eval_range + "]");
  rep.settings["throughput"] = fmt("%.0f", tr.items_per_s) + (lm ? " tokens/s" : " examples/s") + " (" +
                               fmt("%.1f", tr.seconds) + " s" + (tr.resumed_from ? ", resumed at step " + std::to_string(tr.resumed_from) : "") + ")";
  if (!tr.history.empty()) {
    std::string h;
    for (const auto& p : tr.history)
      h += (h.empty() ? "" : ", ") + std::to_string(p.step) + ": " + fmt("%.4f", p.valid_loss);
    rep.settings["held-out loss by step (nats)"] = h;
  }
  if (have_eval) {
    student.reset();
    t = Clock::now();
    mc::LoadOptions slo = lo;
    slo.arch_file.clear();  // the student's file carries its own architecture
    auto reloaded = mc::load_model(out_model, slo);
    evaluate_into(*reloaded, teacher.get(), eval_ed, eo, true, rep.metrics, rep.eval_protocol);
    rep.steps.push_back({"evaluate student (reloaded from the file)", since(t), mc::take_peak_rss_mib()});
    // Speed: the same evaluation alone (no reference model) for both, warm, one after the other.
    std::vector<mc::MetricRow> scratch;
    std::string proto;
    t = Clock::now();
    evaluate_into(*teacher, nullptr, eval_ed, eo, false, scratch, proto);
    const double teacher_s = since(t);
    t = Clock::now();
    evaluate_into(*reloaded, nullptr, eval_ed, eo, true, scratch, proto);
    const double student_s = since(t);
    rep.settings["speed"] = fmt("%.2fx", teacher_s / std::max(student_s, 1e-9)) +
                            " the teacher's (held-out evaluation: teacher " + fmt("%.2f", teacher_s) +
                            " s, student " + fmt("%.2f", student_s) + " s)";
    for (const auto& r : before_rows) {
      if (r.name != "bits per byte" && r.name != "top-1 accuracy") continue;
      mc::MetricRow row = r;
      row.name = r.name + " (student before training)";
      row.is_primary = false;
      for (const auto& m : rep.metrics)
        if (m.name == r.name) row.baseline = m.baseline;
      rep.metrics.push_back(row);
    }
    auto b = headline(before_rows, true), a = headline(rep.metrics, true), tv = headline(rep.metrics, false);
    if (a && b && tv && std::fabs(*b - *tv) > 1e-12)
      rep.settings["gap to the teacher closed"] = fmt("%.1f%%", 100.0 * (*b - *a) / (*b - *tv)) + " (" +
                                                   fmt("%.4f", *b) + " -> " + fmt("%.4f", *a) + ", teacher " +
                                                   fmt("%.4f", *tv) + ")";
  }
  mc::write_report(rep, out);
  if (!common.quiet) {
    if (rep.settings.count("gap to the teacher closed"))
      std::printf("\ngap to the teacher closed: %s\n", rep.settings["gap to the teacher closed"].c_str());
    if (rep.settings.count("speed")) std::printf("speed: %s\n", rep.settings["speed"].c_str());
    print_summary(rep, eval_ed.labeled, out, "", "teacher", "student");
  }
  return 0;
}

}  // namespace mcli
