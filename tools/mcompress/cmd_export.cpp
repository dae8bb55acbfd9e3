// mcompress export --format gguf:TYPE|hf-gptq|compressed-tensors|llama2c-q8 IN -o OUT [--tokenizer T]
//                  [--eval DATA]
// Writes a model (ours, usually quantized by `mcompress quantize`) in a format other runtimes load:
// GGUF for llama.cpp (export/gguf.h), the AutoGPTQ / compressed-tensors Hugging Face layouts and the
// llama2.c int8 file (export/hf.h). Prints what each tensor became; with --eval, evaluates the input
// and the exported file read back by our loader on the same data (GGUF, hf-gptq) and the difference.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "mcompress/dtype.h"
#include "mcompress/error.h"
#include "mcompress/eval.h"
#include "mcompress/export/gguf.h"
#include "mcompress/export/hf.h"
#include "mcompress/model.h"
#include "model_files.h"

namespace fs = std::filesystem;

namespace mcli {

namespace {

const char* kFormats = "gguf:TYPE (TYPE: f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q4_k_m, auto), "
                       "hf-gptq, compressed-tensors, llama2c-q8";

// The bytes per weight each GGUF type promises (block bytes / block values).
double promised_bits(const std::string& type) {
  for (int t = 0; t <= static_cast<int>(mc::DType::Q6_K); ++t) {
    const auto& info = mc::dtype_info(static_cast<mc::DType>(t));
    if (type == info.name) return 8.0 * double(info.block_bytes) / double(info.block_elems);
  }
  return 0;
}

}  // namespace

int cmd_export(const std::vector<std::string>& args) {
  po::options_description desc("export options");
  std::string in, out, format, tokenizer, name, eval_data;
  int64_t window = 128, max_docs = 0;
  bool truncate = false;
  desc.add_options()
      ("model", po::value<std::string>(&in)->required(), "model to export (a packed checkpoint keeps its exact codes)")
      ("output,o", po::value<std::string>(&out)->required(), "output file (gguf, llama2c-q8) or directory (hf-gptq, compressed-tensors)")
      ("format", po::value<std::string>(&format)->required(), kFormats)
      ("tokenizer", po::value<std::string>(&tokenizer), "gguf: tokenizer.bin / tokenizer.json (default: beside the model)")
      ("name", po::value<std::string>(&name), "gguf: general.name (default: the model file's stem)")
      ("eval", po::value<std::string>(&eval_data), "evaluate the input and the exported file (read back) on this data")
      ("window", po::value<int64_t>(&window)->default_value(128), "tokens per evaluation window")
      ("truncate", po::bool_switch(&truncate), "score only each document's first window")
      ("max-docs", po::value<int64_t>(&max_docs)->default_value(0), "evaluate at most N documents");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  CommonOptions common;
  if (!parse_command_line("export", "--format FORMAT MODEL -o OUT [--tokenizer T] [--eval DATA]", args, desc, pos, vm,
                          common))
    return 0;
  if (!fs::exists(in)) mc::fail<mc::FileError>("export", in, ": no such file or directory");
  const bool gguf = format.rfind("gguf:", 0) == 0 || format == "gguf";
  if (!gguf && format != "hf-gptq" && format != "compressed-tensors" && format != "llama2c-q8")
    mc::fail("export", "--format '", format, "' is not available (allowed: ", kFormats, ")");
  if (tokenizer.empty()) tokenizer = find_tokenizer(in);

  nlohmann::json result = {{"model", in}, {"output", out}, {"format", format}};
  const bool results = !log_json();  // -q drops the per-tensor table; sizes and metrics are results
  if (gguf) {
    mc::GgufExportOptions o;
    o.type = format == "gguf" ? "auto" : format.substr(5);
    o.tokenizer = tokenizer, o.name = name;
    const auto choices = mc::export_gguf(in, out, o);
    std::map<std::string, std::pair<int64_t, uint64_t>> by_type;
    nlohmann::json tensors = nlohmann::json::array();
    if (!common.quiet) std::printf("%-28s %-6s %10s %10s  %s\n", "tensor", "type", "params", "bytes", "note");
    for (const auto& c : choices) {
      by_type[c.type].first += c.params, by_type[c.type].second += c.bytes;
      tensors.push_back({{"name", c.name}, {"type", c.type}, {"params", c.params}, {"bytes", c.bytes}, {"note", c.note}});
      if (!common.quiet)
        std::printf("%-28s %-6s %10lld %10llu  %s\n", c.name.c_str(), c.type.c_str(), static_cast<long long>(c.params),
                    static_cast<unsigned long long>(c.bytes), c.note.c_str());
    }
    result["tensors"] = tensors;
    if (results) std::printf("%sper type: bits per weight stored (promised by the type)\n", common.quiet ? "" : "\n");
    for (const auto& [type, pb] : by_type) {
      const double bits = 8.0 * double(pb.second) / double(std::max<int64_t>(1, pb.first));
      result["types"][type] = {{"params", pb.first}, {"bytes", pb.second}, {"bits_per_weight", bits},
                               {"promised", promised_bits(type)}};
      if (results)
        std::printf("  %-6s %10lld weights %10s  %.4f (%.4f)\n", type.c_str(), static_cast<long long>(pb.first),
                    human_bytes(pb.second).c_str(), bits, promised_bits(type));
    }
  } else {
    const mc::ExportSummary s = format == "hf-gptq"              ? mc::export_hf_gptq(in, out)
                                : format == "compressed-tensors" ? mc::export_compressed_tensors(in, out)
                                                                 : mc::export_llama2c_q8(in, out);
    result["notes"] = s.notes, result["files"] = s.files;
    if (!common.quiet) {
      for (const auto& f : s.files) std::printf("wrote %s\n", f.c_str());
      for (const auto& n : s.notes) std::printf("note: %s\n", n.c_str());
    }
  }
  const uint64_t size_in = model_bytes(in), size_out = model_bytes(out);
  result["bytes_before"] = size_in, result["bytes_after"] = size_out;
  if (results)
    std::printf("%s%s (%s) -> %s (%s)\n", common.quiet ? "" : "\n", in.c_str(), human_bytes(size_in).c_str(), out.c_str(),
                human_bytes(size_out).c_str());

  if (!eval_data.empty()) {
    // Our loader reads GGUF and GPTQ directories back; the other two formats are for other runtimes.
    if (format == "compressed-tensors" || format == "llama2c-q8") {
      if (!common.quiet) std::printf("--eval: %s files are not read back by mcompress; not evaluated\n", format.c_str());
    } else {
      mc::LmEvalOptions eo;
      eo.window = window, eo.truncate = truncate, eo.max_docs = max_docs;
      auto before = mc::load_model(in);
      EvalData ed = load_eval_data(*before, in, {eval_data, tokenizer});
      std::vector<mc::MetricRow> rows;
      std::string protocol;
      evaluate_into(*before, nullptr, ed, eo, false, rows, protocol);
      before.reset();
      auto after = mc::load_model(out);
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
  if (log_json()) log_event("result", result.dump());
  return 0;
}

}  // namespace mcli
