// The export stage (export_job.h): GGUF for llama.cpp (export/gguf.h), the AutoGPTQ / compressed-tensors
// Hugging Face layouts and the llama2.c int8 file (export/hf.h). Prints what each tensor became; with
// an evaluation file, evaluates the input and the exported file read back by our loader on the same
// data (GGUF, hf-gptq) and the difference.
#include "mcompress/export_job.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "mcompress/checkpoint.h"
#include "mcompress/dtype.h"
#include "mcompress/error.h"
#include "mcompress/eval.h"
#include "mcompress/export/gguf.h"
#include "mcompress/export/hf.h"
#include "mcompress/job_data.h"
#include "mcompress/model.h"
#include "mcompress/quant/rotate.h"
#include "quantize_stage.h"

namespace mc {

namespace fs = std::filesystem;

const char* const kExportFormats =
    "gguf:TYPE (TYPE: f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs, mxfp4, "
    "q4_k_m, auto; q2_k/q3_k/iq4_nl/iq4_xs keep the output (the tied embedding) at Q6_K as llama.cpp does; a row "
    "the type's block does not divide falls back as llama.cpp does: Q2_K/Q3_K -> Q4_0, IQ4_XS -> IQ4_NL, "
    "Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, F16 when 32 does not divide it), hf-gptq, compressed-tensors, "
    "llama2c-q8";

namespace {

// The bytes per weight each GGUF type promises (block bytes / block values).
double promised_bits(const std::string& type) {
  for (int t = 0; t <= static_cast<int>(DType::IQ4_XS); ++t) {
    const auto& info = dtype_info(static_cast<DType>(t));
    if (type == info.name) return 8.0 * double(info.block_bytes) / double(info.block_elems);
  }
  return 0;
}

// What the runtime of a model saved by quantize applies beyond its weights and an export does not carry:
// quantized activations (--act-bits / --act-format / smoothquant) and a quantized KV cache (--kv-bits). One
// note each; the exported file computes with float activations and a float cache.
std::vector<std::string> runtime_settings_not_exported(const std::string& path) {
  std::string file = path;
  if (fs::is_directory(path)) file = (fs::path(path) / "model.safetensors").string();
  if (!fs::is_regular_file(file)) return {};
  const auto meta = open_checkpoint(file)->metadata();
  std::vector<std::string> notes;
  if (meta.count(kActivationMetadataKey))
    notes.push_back("the model's quantized activations (mcompress.activations) are not carried: the exported file "
                    "computes with float inputs, so its figures are those of the weights alone");
  if (meta.count(kKVCacheMetadataKey))
    notes.push_back("the model's KV-cache scales (mcompress.kv_cache) are not carried: the exported file keeps a "
                    "float cache (set the runtime's own KV-cache type)");
  return notes;
}

}  // namespace

std::string run_export(const ExportJob& job, const EventSink& events) {
  const std::string &in = job.model, &out = job.out, &format = job.format, &name = job.name, &eval_data = job.eval;
  std::string tokenizer = job.tokenizer;
  const int64_t window = job.window, max_docs = job.max_docs;
  const bool truncate = job.truncate, quiet = events.quiet || events.json;
  if (!fs::exists(in)) fail<FileError>("export", in, ": no such file or directory");
  const bool gguf = format.rfind("gguf:", 0) == 0 || format == "gguf";
  if (!gguf && format != "hf-gptq" && format != "compressed-tensors" && format != "llama2c-q8")
    fail("export", "--format '", format, "' is not available (allowed: ", kExportFormats, ")");
  if (tokenizer.empty()) tokenizer = find_tokenizer(in);
  // --rotate hadamard-online: down_proj's input is rotated at run time (quant/rotate.h); without that op
  // the exported model would compute another function.
  if (const size_t online = online_hadamard_layers(in))
    fail("export", in, ": quantized with --rotate hadamard-online: ", online, " layers (down_proj) multiply their input "
         "by a Hadamard matrix at run time, which ", format, " files cannot express; quantize with --rotate hadamard "
         "(R1 + R2, fully offline) to export, or run this model with mcompress eval / generate");
  if (!job.imatrix.empty() && !gguf) fail("export", "--imatrix applies to --format gguf:TYPE only");

  nlohmann::json result = {{"model", in}, {"output", out}, {"format", format}};
  const bool results = !events.json;  // -q drops the per-tensor table; sizes and metrics are results
  const std::vector<std::string> dropped = runtime_settings_not_exported(in);
  if (gguf) {
    GgufExportOptions o;
    o.type = format == "gguf" ? "auto" : format.substr(5);
    o.tokenizer = tokenizer, o.name = name, o.imatrix = job.imatrix;
    const auto choices = export_gguf(in, out, o);
    std::map<std::string, std::pair<int64_t, uint64_t>> by_type;
    nlohmann::json tensors = nlohmann::json::array();
    if (!quiet) std::printf("%-28s %-6s %10s %10s  %s\n", "tensor", "type", "params", "bytes", "note");
    for (const auto& c : choices) {
      by_type[c.type].first += c.params, by_type[c.type].second += c.bytes;
      tensors.push_back({{"name", c.name}, {"type", c.type}, {"params", c.params}, {"bytes", c.bytes}, {"note", c.note}});
      if (!quiet)
        std::printf("%-28s %-6s %10lld %10llu  %s\n", c.name.c_str(), c.type.c_str(), static_cast<long long>(c.params),
                    static_cast<unsigned long long>(c.bytes), c.note.c_str());
    }
    result["tensors"] = tensors;
    if (results) std::printf("%sper type: bits per weight stored (promised by the type)\n", quiet ? "" : "\n");
    for (const auto& [type, pb] : by_type) {
      const double bits = 8.0 * double(pb.second) / double(std::max<int64_t>(1, pb.first));
      result["types"][type] = {{"params", pb.first}, {"bytes", pb.second}, {"bits_per_weight", bits},
                               {"promised", promised_bits(type)}};
      if (results)
        std::printf("  %-6s %10lld weights %10s  %.4f (%.4f)\n", type.c_str(), static_cast<long long>(pb.first),
                    human_size(pb.second).c_str(), bits, promised_bits(type));
    }
  } else {
    const ExportSummary s = format == "hf-gptq"              ? export_hf_gptq(in, out)
                                : format == "compressed-tensors" ? export_compressed_tensors(in, out)
                                                                 : export_llama2c_q8(in, out);
    result["notes"] = s.notes, result["files"] = s.files;
    if (!quiet) {
      for (const auto& f : s.files) std::printf("wrote %s\n", f.c_str());
      for (const auto& n : s.notes) std::printf("note: %s\n", n.c_str());
    }
  }
  for (const auto& n : dropped) {
    result["notes"].push_back(n);
    if (!quiet) std::printf("note: %s\n", n.c_str());
  }
  const uint64_t size_in = model_bytes(in), size_out = model_bytes(out);
  result["bytes_before"] = size_in, result["bytes_after"] = size_out;
  if (results)
    std::printf("%s%s (%s) -> %s (%s)\n", quiet ? "" : "\n", in.c_str(), human_size(size_in).c_str(), out.c_str(),
                human_size(size_out).c_str());

  if (!eval_data.empty()) {
    // Our loader reads GGUF and GPTQ directories back; the other two formats are for other runtimes.
    if (format == "compressed-tensors" || format == "llama2c-q8") {
      if (!quiet) std::printf("--eval: %s files are not read back by mcompress; not evaluated\n", format.c_str());
    } else {
      LmEvalOptions eo;
      eo.window = window, eo.truncate = truncate, eo.max_docs = max_docs;
      // The input streamed as `mcompress eval` reads it: bf16/f16 weights stay mapped (same scores, the widening
      // is exact) and each block's pages are handed back after it ran. The exported file is read back whole.
      LoadOptions narrow;
      narrow.keep_dtype = true;
      auto before = load_model(in, narrow);
      EvalData ed = load_eval_data(*before, in, {eval_data, tokenizer});
      std::vector<MetricRow> rows;
      std::string protocol;
      LmEvalOptions streamed = eo;
      streamed.page_out = true;
      evaluate_into(*before, nullptr, ed, streamed, false, rows, protocol);
      before.reset();
      auto after = load_model(out);
      evaluate_into(*after, nullptr, ed, eo, true, rows, protocol);
      for (const auto& m : rows)
        if (m.baseline && m.compressed) {
          result["metrics"][m.name] = {{"before", *m.baseline}, {"after", *m.compressed}};
          if (results)
            std::printf("%-22s before export %.6f, exported file %.6f (difference %+.2e)\n", m.name.c_str(), *m.baseline,
                        *m.compressed, *m.compressed - *m.baseline);
        }
    }
  }
  events.emit("result", result.dump());
  return result.dump();
}

}  // namespace mc
