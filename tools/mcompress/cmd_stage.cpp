// mcompress quantize | prune | distill: the option table of the stage (stage_options.h) as command-line
// options, one library job (pipeline.h: run_stage), and the summary printed from its report.
//   mcompress quantize --method gptq --bits 4 --group-size 32 --calib DATA MODEL -o OUT [--eval DATA]
//   mcompress prune --method sparsegpt --pattern 2:4 --calib DATA MODEL -o OUT [--eval DATA]
//   mcompress distill --teacher T --student-init prune:every=2 --generate N --steps K -o OUT
// quantize and prune take --dry-run: the plan (layers, what happens to each, estimated sizes) from the
// same selection code the job runs, without calibrating or writing anything.
#include <cstdio>
#include <filesystem>

#include "cli.h"
#include "mcompress/error.h"
#include "mcompress/job_data.h"
#include "mcompress/pipeline.h"
#include "model_files.h"

namespace mcli {

namespace {

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
  if (pass == "quantize") {
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
                           "--method rtn|imatrix|gptq|awq|smoothquant --bits B (--group-size G | --per-channel) "
                           "[--sym|--asym] [--calib DATA | --calib-from-eval] [--target-bpw 3.5] MODEL -o OUT "
                           "[--eval DATA] [--dry-run]",
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
