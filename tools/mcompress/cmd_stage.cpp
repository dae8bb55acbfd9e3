// mcompress quantize | prune | distill: the option table of the stage (stage_options.h) as command-line
// options, one library job (pipeline.h: run_stage), and the summary printed from its report.
//   mcompress quantize --method gptq --bits 4 --group-size 32 --calib DATA MODEL -o OUT [--eval DATA]
//   mcompress prune --method sparsegpt --pattern 2:4 --calib DATA MODEL -o OUT [--eval DATA]
//   mcompress distill --teacher T --student-init prune:every=2 --generate N --steps K -o OUT
// quantize and prune take --dry-run: the plan (layers, what happens to each, estimated sizes) from the
// same selection code the job runs, without calibrating or writing anything.
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "cli.h"
#include "mcompress/error.h"
#include "mcompress/job_data.h"
#include "mcompress/pipeline.h"
#include "model_files.h"

namespace mcli {

namespace {

// quantize --model-free: the quantized tensors with their weight errors, then sizes and bits per weight.
void print_model_free_summary(const mc::Report& rep, const std::string& out) {
  size_t w = 6;
  for (const auto& l : rep.layers) w = std::max(w, l.name.size());
  std::printf("\n%-*s %-14s %9s %12s %12s\n", int(w), "tensor", "shape", "bits/w", "rel. error", "max abs err");
  double bits = 0, params = 0;
  for (const auto& l : rep.layers) {
    std::printf("%-*s %-14s %9.3f %12.3e %12.3e\n", int(w), l.name.c_str(), l.shape.c_str(), l.bits_per_weight,
                l.rel_weight_error.value_or(0), l.max_abs_error.value_or(0));
    bits += l.bits_per_weight * double(l.params), params += double(l.params);
  }
  std::printf("\n%zu tensors quantized (%s), %s copied unchanged\n", rep.layers.size(),
              rep.layers.empty() ? "" : rep.layers.front().scheme.c_str(), rep.settings.at("copied unchanged").c_str());
  if (params > 0)
    std::printf("bits per quantized weight: %.3f -> %.3f\n", rep.baseline_bits, bits / params);
  std::printf("file size: %s -> %s (%.2fx smaller)\n", human_bytes(rep.size_before).c_str(),
              human_bytes(rep.size_after).c_str(), rep.size_after ? double(rep.size_before) / double(rep.size_after) : 0.0);
  for (const auto& s : rep.steps)
    if (s.peak_rss_mib > 0) std::printf("peak memory: %.0f MiB\n", s.peak_rss_mib);
  for (const auto& x : rep.warnings) std::printf("warning: %s\n", x.c_str());
  std::printf("output: %s (report.md, report.json)\n", out.c_str());
}

int run_stage_command(const std::string& pass, const std::string& usage, const std::vector<std::string>& args,
                      mc::EventSink& events) {
  po::options_description desc(pass + " options");
  mc::JobIO io;
  const bool has_model = pass != "distill";
  if (has_model) desc.add_options()("model", po::value<std::string>(&io.model)->required(), "the model (any format load_model reads)");
  desc.add_options()("output,o", po::value<std::string>(&io.out), "output directory: model.safetensors + report.{json,md,html}");
  if (has_model)
    desc.add_options()("dry-run", po::bool_switch(&io.dry_run),
                       "print the plan (each layer, what happens to it, estimated size) and stop");
  add_stage_options(desc, pass);
  po::positional_options_description pos;
  if (has_model) pos.add("model", 1);
  po::variables_map vm;
  CommonOptions common;
  if (!parse_command_line(pass, usage, args, desc, pos, vm, common, events)) return 0;
  if (io.out.empty() && !io.dry_run) mc::fail("cli", "mcompress ", pass, ": -o OUT is required (usage: mcompress ", pass, " ", usage, ")");
  const mc::StageOptions so(pass, given_stage_options(vm, pass), pass);
  io.command_line = "mcompress " + pass;
  for (const auto& a : args) io.command_line += " " + a;
  if (!has_model) io.model = so.text("teacher");
  const mc::JobResult res = mc::run_stage(so, io, events);
  const mc::Report& rep = res.report;
  if (io.dry_run) {
    events.print(rep.title + ": plan");
    mc::print_plan(rep.plan, mc::model_bytes(io.model), events);
    return 0;
  }
  if (res.status != 0 || events.quiet) return res.status;
  if (pass == "quantize" && so.flag("model-free")) {
    print_model_free_summary(rep, io.out);
  } else if (pass == "quantize") {
    print_summary(rep, res.labeled, io.out, "bits per quantized weight");
  } else if (pass == "prune") {
    if (rep.method == "structured")
      std::printf("\n%s: parameters %s, forward speedup %s\n", rep.title.c_str(), rep.settings.at("parameters").c_str(),
                  rep.settings.at("forward speedup").c_str());
    print_summary(rep, res.labeled, io.out, rep.method == "structured" ? "" : "stored bits per pruned weight");
  } else {
    for (const char* k : {"gap to the teacher closed", "speed"})
      if (rep.settings.count(k)) std::printf("%s%s: %s\n", k[0] == 'g' ? "\n" : "", k, rep.settings.at(k).c_str());
    print_summary(rep, res.labeled, io.out, "", "teacher", "student");
  }
  return 0;
}

}  // namespace

int cmd_quantize(const std::vector<std::string>& args, mc::EventSink& events) {
  return run_stage_command("quantize",
                           "--method rtn|hqq|imatrix|gptq|awq|autoround|smoothquant --bits B (--group-size G | --per-channel) "
                           "[--sym|--asym] [--calib DATA | --calib-from-eval] [--target-bpw 3.5] MODEL -o OUT "
                           "[--eval DATA] [--dry-run]\n   or: mcompress quantize --model-free --bits B [--group-size G] "
                           "[--targets P,..] [--ignore P,..] CHECKPOINT.safetensors|HF_DIR -o OUT"
                           "\n   or: mcompress quantize --scheme fp8|fp8-channel|fp8-block|mxfp4|nvfp4 [--model-free] "
                           "MODEL -o OUT [--eval DATA]",
                           args, events);
}

int cmd_prune(const std::vector<std::string>& args, mc::EventSink& events) {
  return run_stage_command("prune",
                           "--method sparsegpt|wanda|magnitude (--sparsity 0.5 | --pattern 2:4) [--bits 4] "
                           "--calib DATA MODEL -o OUT [--eval DATA] [--dry-run]",
                           args, events);
}

int cmd_distill(const std::vector<std::string>& args, mc::EventSink& events) {
  return run_stage_command("distill",
                           "--teacher T (--student-config S | --student-init prune:SPEC | --student C) "
                           "(--data D | --generate N) --steps K -o OUT [options]",
                           args, events);
}

}  // namespace mcli
