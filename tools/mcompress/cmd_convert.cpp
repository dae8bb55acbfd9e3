// mcompress convert IN OUT [--dtype f16|bf16|f32|f64] [--format F] [--metadata k=v ...] [--rotate hadamard[-online]]
#include <chrono>
#include <filesystem>
#include <iomanip>
#include <iostream>

#include "cli.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/io/llama2c.h"
#include "mcompress/model.h"
#include "mcompress/quant/rotate.h"

namespace mcli {

int cmd_convert(const std::vector<std::string>& args, mc::EventSink& events) {
  po::options_description desc("convert options");
  std::string in, out, dtype, format, rotate;
  uint64_t rotate_seed = 0;
  std::vector<std::string> meta;
  desc.add_options()
      ("input", po::value<std::string>(&in)->required(), "input checkpoint (any supported format)")
      ("output", po::value<std::string>(&out)->required(),
       "output file; format from the extension: .safetensors, .pt/.pth, .h5/.hdf5, .bin (llama2.c legacy)")
      ("dtype", po::value<std::string>(&dtype), "re-encode float tensors: f32, f16, bf16 or f64 (integers are kept)")
      ("format", po::value<std::string>(&format),
       "output format: safetensors, torch, hdf5, keras-hdf5, llama2c (v1 'ak42'), llama2c-legacy")
      ("metadata", po::value<std::vector<std::string>>(&meta)->composing(), "extra metadata KEY=VALUE (repeatable)")
      ("rotate", po::value<std::string>(&rotate),
       "llama family: write the Hadamard-rotated float model (as quantize --rotate does before quantizing; the same "
       "function): hadamard (R1 + R2, offline) or hadamard-online (+ R4 on down_proj's input, applied by our "
       "runtime; safetensors output only)")
      ("rotate-seed", po::value<uint64_t>(&rotate_seed), "--rotate: seed of R1's random signs (default 0)");
  po::positional_options_description pos;
  pos.add("input", 1).add("output", 1);
  po::variables_map vm;
  CommonOptions common;
  if (!parse_command_line("convert", "IN OUT [--dtype f16|bf16|f32|f64] [--format FORMAT]", args, desc, pos, vm,
                          common, events))
    return 0;

  std::optional<mc::DType> target;
  if (!dtype.empty()) {
    target = mc::dtype_from_name(dtype);
    if (!target || !mc::is_float(*target))
      mc::fail("convert", "--dtype '", dtype, "' is not a float type (allowed: f32, f16, bf16, f64)");
  }
  mc::WriteOptions wo;
  wo.format = format.empty() ? mc::format_from_extension(out) : format;
  if (wo.format.empty())
    mc::fail("convert", out, ": cannot tell the output format from the extension (use .safetensors, .pt, .h5, "
             ".bin or --format)");

  auto t0 = std::chrono::steady_clock::now();
  if (!rotate.empty()) {  // a model, not a list of tensors: loaded, rotated, saved float32
    if (rotate != "hadamard" && rotate != "hadamard-online")
      mc::fail("convert", "--rotate '", rotate, "' is not a rotation (allowed: hadamard, hadamard-online)");
    if (!dtype.empty()) mc::fail("convert", "--dtype does not apply with --rotate (the rotated model is float32)");
    if (wo.format != "safetensors")
      mc::fail("convert", "--rotate writes safetensors (the rotation's metadata goes with it), not ", wo.format);
    auto model = mc::load_model(in);
    mc::RotateOptions ro;
    ro.online = rotate == "hadamard-online", ro.seed = rotate_seed;
    const mc::RotateResult r = mc::rotate_model(*model, ro);
    std::map<std::string, std::string> extra = {{mc::kRotationMetadataKey, r.metadata()}};
    for (const auto& kv : meta) {
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) mc::fail("convert", "--metadata '", kv, "' must be KEY=VALUE");
      extra[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    mc::save_model(*model, out, extra);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!common.quiet)
      std::cout << "rotated " << in << " -> " << out << " in " << std::fixed << std::setprecision(2) << secs
                << " s: " << r.summary << "\n";
    return 0;
  }
  auto reader = mc::open_checkpoint(in);
  wo.metadata = reader->metadata();
  for (const auto& kv : meta) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) mc::fail("convert", "--metadata '", kv, "' must be KEY=VALUE");
    wo.metadata[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  std::vector<mc::HostTensor> tensors;
  size_t dequantized = 0;
  for (const auto& ti : reader->tensors()) {
    mc::HostTensor t = reader->load(ti.name);
    if (target) {
      t = mc::convert_dtype(t, *target);
    } else if (mc::is_block(t.dtype)) {
      t = mc::convert_dtype(t, mc::DType::F32);  // no other format stores ggml blocks
      ++dequantized;
    }
    tensors.push_back(std::move(t));
  }
  // A legacy llama2.c file carries RoPE tables that are not parameters; pass the stored ones along
  // so llama2c -> llama2c-legacy reproduces them exactly (the writer would recompute them).
  if (wo.format == "llama2c-legacy")
    for (auto& t : mc::llama2c_freq_cis(*reader)) tensors.push_back(std::move(t));
  mc::write_checkpoint(out, tensors, wo);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!common.quiet) {
    std::cout << "converted " << in << " (" << reader->format() << ") -> " << out << " (" << wo.format << "): "
              << tensors.size() << " tensors, " << human_bytes(std::filesystem::file_size(out)) << " in "
              << std::fixed << std::setprecision(2) << secs << " s\n";
    if (dequantized)
      std::cout << "note: " << dequantized << " GGUF block-quantized tensors were dequantized to F32\n";
  }
  return 0;
}

}  // namespace mcli
