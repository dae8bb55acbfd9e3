// mcompress export --format gguf:TYPE|hf-gptq|compressed-tensors|llama2c-q8 IN -o OUT [--tokenizer T]
//                  [--eval DATA]
// Writes a model (ours, usually quantized by `mcompress quantize`) in a format other runtimes load, through
// the library's export stage (export_job.h).
#include "cli.h"
#include "mcompress/export_job.h"

namespace mcli {

int cmd_export(const std::vector<std::string>& args, mc::EventSink& events) {
  po::options_description desc("export options");
  mc::ExportJob job;
  desc.add_options()
      ("model", po::value<std::string>(&job.model)->required(), "model to export (a packed checkpoint keeps its exact codes)")
      ("output,o", po::value<std::string>(&job.out)->required(), "output file (gguf, llama2c-q8) or directory (hf-gptq, compressed-tensors)")
      ("format", po::value<std::string>(&job.format)->required(), mc::kExportFormats)
      ("tokenizer", po::value<std::string>(&job.tokenizer), "gguf: tokenizer.bin / tokenizer.json (default: beside the model)")
      ("name", po::value<std::string>(&job.name), "gguf: general.name (default: the model file's stem)")
      ("imatrix", po::value<std::string>(&job.imatrix),
       "gguf: llama.cpp imatrix file (GGUF or legacy .dat): each column's importance weights the fit of Q2_K, Q3_K, "
       "IQ4_NL, IQ4_XS, Q4_K, Q5_K; every block weight needs its entry of its width, output/embedding may lack one")
      ("eval", po::value<std::string>(&job.eval), "evaluate the input and the exported file (read back) on this data")
      ("window", po::value<int64_t>(&job.window)->default_value(128), "tokens per evaluation window")
      ("truncate", po::bool_switch(&job.truncate), "score only each document's first window")
      ("max-docs", po::value<int64_t>(&job.max_docs)->default_value(0), "evaluate at most N documents");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  CommonOptions common;
  if (!parse_command_line("export", "--format FORMAT MODEL -o OUT [--tokenizer T] [--imatrix FILE] [--eval DATA]", args, desc, pos, vm,
                          common, events))
    return 0;
  mc::run_export(job, events);
  return 0;
}

}  // namespace mcli
