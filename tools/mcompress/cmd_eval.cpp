// mcompress eval MODEL --data DATA: perplexity / mean NLL / bits per byte of a language model on text or
// token files, top-1/top-5 accuracy of a classifier on MNIST or a tensor file; KL and agreement against
// a --reference model.
#include <ATen/core/Tensor.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "mcompress/datasets.h"
#include "mcompress/error.h"
#include "mcompress/eval.h"
#include "mcompress/lora.h"
#include "mcompress/events.h"
#include "mcompress/model.h"
#include "mcompress/tokenizer.h"
#include "model_files.h"

namespace mcli {

namespace {

namespace fs = std::filesystem;

bool has_narrow_params(const mc::Model& m) {
  for (const auto& [k, t] : m.params())
    if (t.defined() && (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf)) return true;
  return false;
}

// The plan line (what runs, the estimate), then on a terminal one line rewritten in place, else a line per
// pass and at most one per 10 s; "progress" events with --log-json; nothing with --json or -q.
std::function<void(const mc::LmEvalProgress&)> eval_progress_printer(const mc::EventSink& events, bool json) {
  if (json && !events.json) return {};
  const bool tty = ::isatty(1) != 0;
  auto last = std::make_shared<double>(-1e9);
  return [events, tty, last](const mc::LmEvalProgress& p) {
    if (events.json) {
      events.emit("progress", nlohmann::json({{"method", "eval"}, {"phase", p.stage}, {"pass", p.pass},
                                              {"passes", p.passes}, {"block", p.block}, {"blocks", p.blocks},
                                              {"tokens", p.tokens}, {"tokens_total", p.tokens_total},
                                              {"tokens_per_s", p.tokens_per_s}, {"elapsed_s", p.elapsed_s},
                                              {"eta_s", p.eta_s}, {"message", p.message}}).dump());
      return;
    }
    if (!events.text()) return;
    if (p.stage == "plan") {
      std::printf("eval: %s\n", p.message.c_str());
    } else if (p.stage != "done") {
      const bool due = tty || p.stage == "head" || p.elapsed_s - *last >= 10.0;
      if (!due) return;
      *last = p.elapsed_s;
      std::printf(tty ? "\reval pass %lld/%lld block %lld/%lld  %.0f tokens/s  %s elapsed, ETA %s   "
                      : "eval pass %lld/%lld block %lld/%lld  %.0f tokens/s  %s elapsed, ETA %s\n",
                  (long long)p.pass, (long long)p.passes, (long long)p.block, (long long)p.blocks, p.tokens_per_s,
                  mc::eta_text(p.elapsed_s).c_str(), mc::eta_text(p.eta_s).c_str());
    }
    std::fflush(stdout);
  };
}


}  // namespace

int cmd_eval(const std::vector<std::string>& args, mc::EventSink& events) {
  po::options_description desc("eval options");
  std::string model_path, data, tokenizer, arch, reference, separator, device, adapter;
  int64_t window = 128, max_docs = 0, batch = 0, max_tokens = 0, pass_mb = 1024;
  bool truncate = false, json = false, u16 = false, u32 = false;
  std::string compute = "f32", save_topk, kl_base;
  int64_t topk = 32;
  desc.add_options()
      ("model", po::value<std::string>(&model_path)->required(),
       "llama2.c checkpoint, Hugging Face directory, mcompress checkpoint, or classifier weights (with --arch)")
      ("data", po::value<std::string>(&data)->required(),
       "text file (documents split on the separator), token file, MNIST directory, or tensor file (inputs/labels)")
      ("tokenizer", po::value<std::string>(&tokenizer), "tokenizer.bin / tokenizer.json (default: one beside the model)")
      ("arch", po::value<std::string>(&arch), "classifier architecture YAML (when the checkpoint has none inside)")
      ("window", po::value<int64_t>(&window)->default_value(128), "tokens per scoring window")
      ("truncate", po::bool_switch(&truncate), "score only each document's first window")
      ("separator", po::value<std::string>(&separator)->default_value("<|endoftext|>"),
       "document separator of text files (\"\" = blank lines)")
      ("reference", po::value<std::string>(&reference), "baseline model: adds KL(reference || model) and top-1 agreement")
      ("adapter", po::value<std::string>(&adapter),
       "PEFT LoRA adapter directory (adapter_model.safetensors + adapter_config.json, e.g. quantize --eora's "
       "DIR/eora) merged into the model's weights before evaluating")
      ("save-topk", po::value<std::string>(&save_topk),
       "LM: write this model's top-k log-probabilities per predicted token (a baseline for --kl-base)")
      ("topk", po::value<int64_t>(&topk)->default_value(32), "k of --save-topk")
      ("kl-base", po::value<std::string>(&kl_base),
       "LM: KL and top-1 agreement against a file written by --save-topk (without loading the baseline model)")
      ("max-docs", po::value<int64_t>(&max_docs)->default_value(0), "evaluate at most N documents / examples (0 = all)")
      ("max-tokens", po::value<int64_t>(&max_tokens)->default_value(0),
       "LM: stop after N predicted tokens, windows taken in document order (0 = all; as llama-perplexity's --chunks)")
      ("pass-mb", po::value<int64_t>(&pass_mb)->default_value(1024),
       "LM: activation memory of one pass; windows go through the model block by block, as many per pass as fit")
      ("batch-size", po::value<int64_t>(&batch)->default_value(0), "windows (LM) or examples per forward pass (0 = auto)")
      ("tokens-u16", po::bool_switch(&u16), "DATA is a flat uint16 token file")
      ("tokens-u32", po::bool_switch(&u32), "DATA is a flat uint32 token file")
      ("device", po::value<std::string>(&device)->default_value("cpu"), "cpu or cuda")
      ("compute", po::value<std::string>(&compute)->default_value("f32"),
       "f32, or bf16: linear layers in bf16 (AVX512-BF16 / CUDA; ~2x faster here, each input and output rounded "
       "to bf16: mean NLL within ~1e-3 relative of f32 on the tests' models)")
      ("json", po::bool_switch(&json), "print JSON");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  CommonOptions common;
  const std::string usage =
      "MODEL --data DATA [--tokenizer T] [--arch A] [--window 128] [--truncate] [--separator S] "
      "[--adapter LORA_DIR] [--reference BASELINE | --kl-base TOPK] [--save-topk FILE [--topk 32]] [--max-docs N] [--max-tokens N] [--pass-mb MB] [--compute f32|bf16] [--json] [--device cpu|cuda] [--threads N]";
  if (!parse_command_line("eval", usage, args, desc, pos, vm, common, events)) return 0;
  if (u16 && u32) mc::fail("cli", "--tokens-u16 and --tokens-u32 exclude each other");
  if (max_docs < 0 || batch < 0 || max_tokens < 0) mc::fail("cli", "--max-docs, --max-tokens and --batch-size must be >= 0");
  if (pass_mb < 1) mc::fail("cli", "--pass-mb must be >= 1");
  if (compute != "f32" && compute != "bf16") mc::fail("cli", "--compute must be f32 or bf16, not '", compute, "'");

  mc::LoadOptions lo;
  lo.arch_file = arch;
  lo.device = device;
  lo.keep_dtype = true;  // bf16/f16 weights stay as stored (mapped), widened per layer while it runs
  auto model = mc::load_model(model_path, lo);
  const int64_t adapted = adapter.empty() ? 0 : mc::apply_lora_adapter(*model, adapter);
  std::unique_ptr<mc::Model> ref;
  if (!reference.empty()) ref = mc::load_model(reference, lo);
  model->set_compute_bf16(compute == "bf16");
  if (ref) ref->set_compute_bf16(compute == "bf16");

  nlohmann::json j;
  // --json: the result as one JSON document; --log-json: as a "result" event (the Python bindings).
  auto print_result = [&](const nlohmann::json& res) {
    if (events.json) events.emit("result", res.dump());
    else std::cout << res.dump(2) << "\n";
  };
  j["model"] = model_path;
  j["arch"] = model->arch();
  const uint64_t nparams = count_parameters(*model);
  j["parameters"] = nparams;
  j["data"] = data;
  if (!reference.empty()) j["reference"] = reference;
  if (!adapter.empty()) j["adapter"] = {{"path", adapter}, {"layers", adapted}};

  EvalDataOptions dopts{data, tokenizer, separator, u16, u32};
  EvalData ed = load_eval_data(*model, model_path, dopts);
  if (ed.labeled) {
    const mc::LabeledData& d = ed.examples;
    mc::ClassifierEvalOptions co;
    co.max_examples = max_docs;
    if (batch > 0) co.batch_size = batch;
    auto r = mc::evaluate_classifier(*model, d, co, ref.get());
    if (json || events.json) {
      j["result"] = r;
      print_result(j);
      return 0;
    }
    std::cout << "model       " << model_path << " (" << model->arch() << ", " << with_commas(nparams)
              << " parameters)\n"
              << "data        " << data << "\n"
              << "protocol    " << r.protocol << "\n"
              << "top-1       " << fmt("%.2f%%", 100 * r.top1) << "\n"
              << "top-5       " << fmt("%.2f%%", 100 * r.top5) << "\n"
              << "mean NLL    " << fmt("%.4f", r.mean_nll) << " nats/example\n";
    if (r.has_reference)
      std::cout << "vs ref      KL " << fmt("%.5f", r.mean_kl) << " nats/example, top-1 agreement "
                << fmt("%.2f%%", 100 * r.top1_agreement) << "\n";
    std::cout << "time        " << fmt("%.2f s", r.seconds) << "\n";
    return 0;
  }

  const std::string tok_path = ed.tokenizer_path;
  const mc::LmCorpus& corpus = ed.corpus;
  mc::LmEvalOptions eo;
  eo.window = window;
  eo.truncate = truncate;
  eo.max_docs = max_docs;
  if (batch > 0) eo.batch_size = batch;
  eo.max_tokens = max_tokens;
  eo.save_topk = save_topk, eo.kl_base = kl_base, eo.topk = topk;
  eo.pass_budget_mb = pass_mb;
  eo.page_out = has_narrow_params(*model) || (ref && has_narrow_params(*ref));
  eo.progress = eval_progress_printer(events, json);
  eo.measure_throughput = true;
  auto r = mc::evaluate_lm(*model, corpus, eo, ref.get());
  events.end_progress();
  if (!tok_path.empty()) j["tokenizer"] = tok_path;
  if (!kl_base.empty()) j["kl_base"] = kl_base;
  if (json || events.json) {
    j["result"] = r;
    print_result(j);
    return 0;
  }
  std::cout << "model       " << model_path << " (" << model->arch() << ", " << with_commas(nparams)
            << " parameters)\n"
            << "data        " << data << " (" << r.documents << " documents, " << r.windows << " windows)\n"
            << "protocol    " << r.protocol << "\n"
            << "predicted   " << with_commas(uint64_t(r.predicted_tokens)) << " tokens, "
            << with_commas(uint64_t(r.bytes)) << " bytes\n"
            << "mean NLL    " << fmt("%.4f", r.mean_nll) << " nats/token\n"
            << "perplexity  " << fmt("%.3f", r.perplexity) << "\n"
            << "bits/byte   " << (r.bits_per_byte >= 0 ? fmt("%.4f", r.bits_per_byte) : "n/a (no tokenizer)") << "\n";
  if (r.has_reference)
    std::cout << "vs ref      KL " << fmt("%.5f", r.mean_kl) << " nats/token, top-1 agreement "
              << fmt("%.2f%%", 100 * r.top1_agreement) << "\n";
  std::cout << "time        " << fmt("%.2f s", r.seconds) << " ("
            << fmt("%.0f", double(r.predicted_tokens) / std::max(r.seconds, 1e-9)) << " tokens/s)\n";
  if (r.matmul_gflops > 0)
    std::cout << "throughput  forward " << fmt("%.1f", r.forward_gflops) << " GFLOP/s = "
              << fmt("%.2f", r.forward_gflops / r.matmul_gflops) << "x at::matmul on the same layer shapes"
              << (compute == "bf16" ? " in bf16 (" : " (")
              << fmt("%.1f", r.matmul_gflops) << " GFLOP/s), " << r.passes << (r.passes == 1 ? " pass" : " passes")
              << "\n";
  return 0;
}

}  // namespace mcli
