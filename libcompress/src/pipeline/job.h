// What every compressing job does around its pass (pipeline.h): load the model, evaluate the
// baseline, draw the calibration set (from --calib, or from --eval only when asked, and then said in
// the report), record steps, sizes and the input's stored bits, reload the written file and evaluate it.
#pragma once
#include <ATen/core/Tensor.h>

#include <chrono>
#include <map>
#include <optional>
#include <vector>
#include <memory>
#include <string>

#include "mcompress/events.h"
#include "mcompress/job_data.h"
#include "mcompress/model.h"
#include "mcompress/pipeline.h"
#include "mcompress/report.h"
#include "mcompress/stage_options.h"
#include "mcompress/text_format.h"

namespace mc {


class JobRun {
 public:
  JobRun(const StageOptions& so, const JobIO& io, const EventSink& events);

  // Loads the model (int8_kernel: W8A8 layers run the real int8 matmul) and records the step.
  // keep_dtype: bf16/f16 weights stay as mapped views of the input, widened per layer while it
  // computes (LoadOptions::keep_dtype), so a model larger than memory can be compressed block by block.
  void load(bool int8_kernel = true, bool keep_dtype = false);
  // Evaluates the baseline when --eval is given.
  void baseline();
  // The calibration set: `needed` = the method cannot run without one. From --calib, or the --eval
  // data with --calib-from-eval (then the report says so); fails with what to pass when needed and
  // missing. allow_short: a text shorter than seqlen gives shorter sequences.
  void calibrate(bool needed, const std::string& why, int64_t samples, int64_t seqlen, bool allow_short = false);
  // Runs `pass` (the calibration forward and the method) with --compute's matmul precision, then back to
  // float32 for everything else (the evaluations); the report says so.
  template <typename F>
  auto with_compute(F&& pass) {
    struct Reset {
      Model* m;
      ~Reset() { m->set_compute_bf16(false); }
    } reset{model.get()};
    model->set_compute_bf16(bf16_compute_);
    if (bf16_compute_) rep.settings["calibration forward"] = compute_note_;
    return pass();
  }
  // The same checks alone, before anything is loaded: missing or contradictory calibration options.
  void check_calibration(bool needed, const std::string& why) const;
  // Starts / ends a timed step.
  void start() { t_ = std::chrono::steady_clock::now(); }
  void step(const std::string& name);
  // Sizes of input and output, and the input's stored bits per weight of the compressed layers.
  void sizes(const std::string& out_model);
  // Stored bits per weight of each report layer from the written file: tensors named KEY or KEY.* .
  void stored_bits(const std::string& out_model, bool exact_parts_only);
  // Fails up front (InputError naming the output, what it needs and what is free) when the output's file
  // system has less room than this run will write: the output spooled then assembled (twice its size)
  // and, for block-sequential methods, the resume journal (each block's codes, the hidden states twice).
  void check_disk(bool calibrated);
  // Before a block-sequential pass: the work it will do and how long that takes at this machine's matmul
  // speed on the model's layer shapes (a ~0.3 s probe), as a line ("calibration: 65,536 tokens through
  // 16 blocks: ...") and a "plan" event. Nothing without calibration data or when quiet.
  void calibration_plan(const std::string& method);
  // Reloads the written file and evaluates it against the baseline (when --eval is given).
  void evaluate_output(const std::string& out_model, const std::string& step_name);
  // After the pass: its settings, layer rows and warnings into the report, the step timed.
  void pass_done(const std::string& step_name, const std::map<std::string, std::string>& settings,
                 const std::vector<LayerRow>& layers, const std::vector<std::string>& warnings);
  // A dense parameter as the output stores it: in the input's own 16-bit float dtype when the input
  // stored it so (a bf16 model's norms stay bf16), else as computed (float32).
  at::Tensor as_stored(const std::string& key, const at::Tensor& t);
  // Copies the tokenizer and the input's tokenizer/generation configs into the output directory, so
  // that `mcompress eval|generate|export OUT` needs no --tokenizer (copy_companion_files).
  void copy_companions() const;
  // Writes report.{json,md,html} to the output directory.
  void write_report();
  // The job's result: its report and whether it was evaluated on labeled examples.
  JobResult result() const;

  const StageOptions& so;
  const JobIO& io;
  const EventSink& events;
  Report rep;
  LoadOptions lo;
  std::unique_ptr<Model> model;
  EvalData ed;
  LmEvalOptions eo;
  bool have_eval = false;
  at::Tensor calib_x;
  std::string calib_path;   // the file calibration came from ("" = none)
  bool calib_is_eval = false;
  std::unique_ptr<Model> reloaded;  // after evaluate_output (W8A8 checks use it)

 private:
  std::chrono::steady_clock::time_point t_ = std::chrono::steady_clock::now();
  std::optional<std::map<std::string, DType>> input_dtypes_;
  bool bf16_compute_ = false;
  std::string compute_note_;
};

// Report-level identity of a job for its resume journal.
std::string job_identity(const StageOptions& so, const JobIO& io);

}  // namespace mc
