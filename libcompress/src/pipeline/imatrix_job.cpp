// The imatrix job (imatrix_job.h).
#include "mcompress/imatrix_job.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>

#include "mcompress/error.h"
#include "mcompress/job_data.h"
#include "mcompress/model.h"
#include "mcompress/quant/imatrix_file.h"

namespace mc {

std::string run_imatrix(const ImatrixJob& job, const EventSink& events) {
  if (job.samples < 1 || job.seqlen < 1 || job.batch < 1)
    fail("imatrix", "--calib-samples, --calib-seqlen and --batch must be >= 1");
  if (!std::filesystem::exists(job.model)) fail<FileError>("imatrix", job.model, ": no such file or directory");
  auto model = load_model(job.model);
  const EvalData cd = load_eval_data(*model, job.model, {job.calib, job.tokenizer});
  if (cd.labeled) fail("imatrix", job.model, ": llama.cpp imatrix files are for language models");
  const at::Tensor x = calibration_inputs(cd, job.samples, job.seqlen, job.seed);
  ImatrixData d = collect_imatrix(*model, x, job.batch);
  d.datasets = {std::filesystem::path(job.calib).filename().string()};
  write_imatrix_gguf(job.out, d);
  const std::string line = str("wrote ", job.out, ": ", d.entries.size(), " weights, ", d.chunk_count, " chunks of ",
                               d.chunk_size, " tokens from ", job.calib);
  if (!events.quiet && !events.json) std::printf("%s\n", line.c_str());
  events.emit("result", "{\"entries\": " + std::to_string(d.entries.size()) + "}");
  return line;
}

}  // namespace mc
