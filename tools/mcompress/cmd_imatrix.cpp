// mcompress imatrix MODEL --calib TEXT -o FILE.gguf [--calib-samples N --calib-seqlen L --seed S]
// llama.cpp's importance matrix (Σ x² of each linear layer's inputs, per column, and the token count) of the
// float model on calibration text, in llama-imatrix's GGUF format (imatrix_job.h).
#include "cli.h"
#include "mcompress/imatrix_job.h"

namespace mcli {

int cmd_imatrix(const std::vector<std::string>& args, mc::EventSink& events) {
  po::options_description desc("imatrix options");
  mc::ImatrixJob job;
  desc.add_options()
      ("model", po::value<std::string>(&job.model)->required(), "language model (llama family)")
      ("output,o", po::value<std::string>(&job.out)->required(), "imatrix file to write (GGUF, as llama-imatrix writes it)")
      ("calib", po::value<std::string>(&job.calib)->required(), "calibration text (never the evaluation text)")
      ("tokenizer", po::value<std::string>(&job.tokenizer), "tokenizer.bin / tokenizer.json (default: beside the model)")
      ("calib-samples", po::value<int64_t>(&job.samples)->default_value(128), "calibration sequences")
      ("calib-seqlen", po::value<int64_t>(&job.seqlen)->default_value(128), "tokens per sequence (llama-imatrix: --chunk size)")
      ("batch", po::value<int64_t>(&job.batch)->default_value(8), "sequences per forward pass")
      ("seed", po::value<uint64_t>(&job.seed)->default_value(0), "seed of the calibration sampling");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  CommonOptions common;
  if (!parse_command_line("imatrix", "MODEL --calib TEXT -o FILE.gguf [--calib-samples N] [--calib-seqlen L]", args,
                          desc, pos, vm, common, events))
    return 0;
  mc::run_imatrix(job, events);
  return 0;
}

}  // namespace mcli
