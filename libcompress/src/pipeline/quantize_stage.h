// The quantize stage's parsed options and the pieces of its job (quantize_job.cpp, quantize_output.cpp).
#pragma once
#include <map>
#include <string>

#include "mcompress/methods.h"
#include "mcompress/pipeline.h"
#include "mcompress/ptq.h"
#include "mcompress/quant/fp_formats.h"
#include "mcompress/quant/rotate.h"
#include "mcompress/stage_options.h"
#include "mcompress/text_format.h"

namespace mc {

class JobRun;
class PackedCheckpointWriter;

struct QuantizeStage {
  PtqOptions ptq;
  bool calibrated = false;     // the method needs calibration data
  bool needs_calibration = false;  // the method or mixed precision cannot run without it
  std::string calibration_for;     // what needs it: "--method gptq", "--method rtn with --target-bpw"
  bool w8a8 = false;               // the method also quantizes activations (methods.h)
  bool simulate_int8 = false;
  int64_t calib_samples = 0;   // resolved default
  std::string label;           // "GPTQ"
  std::string rotate = "none";  // --rotate: none | hadamard | hadamard-online (quant/rotate.h)
  RotateOptions rotation;
};
QuantizeStage quantize_stage(const StageOptions& so);
// The stage's --method from the method table (methods.h); InputError naming where and the allowed names.
const MethodInfo& method_of(const StageOptions& so, MethodKind kind);
std::string quantize_title(const QuantizeStage& st, const std::string& model_path);
// quantize --scheme (quantize_fp_job.cpp): the --scheme value as a format (InputError naming the allowed ones),
// and the stage's checked options on a model (options that do not apply, a scheme without an output format).
FpScheme scheme_option(const StageOptions& so);
FpScheme fp_scheme_options(const StageOptions& so);
JobResult run_quantize_fp(const StageOptions& so, const JobIO& io, const EventSink& events);

// With --keep-sparsity: writes a layer with zeros in the sparse layout that costs the least (bitmask,
// 2:4 or 4:8) when that beats the dense packed layout; false when the dense layout is smaller.
bool add_sparse_if_smaller(PackedCheckpointWriter& writer, const std::string& key, const QuantResult& q);
// The activation settings of W8A8 layers as the packed file's metadata value.
std::string activation_metadata(const std::map<std::string, int>& act_bits, ActFormat format = ActFormat::int_);
// kKVCacheMetadataKey's JSON (model.h) for a quantize result's KV-cache scales.
std::string kv_cache_metadata(const std::string& format, const std::map<int, std::pair<at::Tensor, at::Tensor>>& scales,
                              bool hadamard = false);
// W8A8: each layer's runtime (int8 kernel or float simulation, and why) in the report, and, when the
// kernel ran and --eval is given, the same model with every int8 matmul simulated in float beside it.
void w8a8_runtime_rows(JobRun& job, const std::string& out_model, bool simulate_int8);

}  // namespace mc
