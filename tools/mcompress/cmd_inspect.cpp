// mcompress inspect FILE [--json] [--no-stats]: format, every tensor with statistics, totals.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "mcompress/checkpoint.h"
#include "mcompress/error.h"

namespace mcli {

namespace {

nlohmann::json finite_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace

int cmd_inspect(const std::vector<std::string>& args, mc::EventSink& events) {
  po::options_description desc("inspect options");
  std::string file;
  bool json = false, no_stats = false;
  desc.add_options()
      ("file", po::value<std::string>(&file)->required(), "checkpoint: safetensors, PyTorch zip, HDF5, GGUF or llama2.c")
      ("json", po::bool_switch(&json), "print JSON instead of a table")
      ("no-stats", po::bool_switch(&no_stats), "skip min/max/mean/std (reads only the header)");
  po::positional_options_description pos;
  pos.add("file", 1);
  po::variables_map vm;
  CommonOptions common;
  if (!parse_command_line("inspect", "FILE [--json] [--no-stats]", args, desc, pos, vm, common, events)) return 0;

  auto reader = mc::open_checkpoint(file);
  const uint64_t file_bytes = std::filesystem::file_size(file);
  uint64_t params = 0, bytes = 0;
  nlohmann::ordered_json j;
  j["file"] = file;
  j["format"] = reader->format();
  j["file_bytes"] = file_bytes;
  j["metadata"] = reader->metadata();
  j["tensors"] = nlohmann::json::array();

  struct Row { std::string name, dtype, shape, bytes, min, max, mean, std, bad; };
  std::vector<Row> rows;
  char buf[64];
  auto fmt = [&](double v) { std::snprintf(buf, sizeof buf, "%.4g", v); return std::string(buf); };
  for (const auto& ti : reader->tensors()) {
    const int64_t numel = mc::shape_numel(ti.shape);
    params += static_cast<uint64_t>(numel);
    bytes += ti.nbytes;
    nlohmann::ordered_json t;
    t["name"] = ti.name;
    t["dtype"] = mc::dtype_name(ti.dtype);
    t["shape"] = ti.shape;
    t["numel"] = numel;
    t["bytes"] = ti.nbytes;
    t["offset"] = ti.offset;
    Row r{ti.name, mc::dtype_name(ti.dtype), mc::shape_str(ti.shape), with_commas(ti.nbytes), "", "", "", "", ""};
    if (!no_stats) {
      mc::TensorStats s = mc::tensor_stats(reader->load(ti.name));
      t["min"] = finite_or_null(s.min);
      t["max"] = finite_or_null(s.max);
      t["mean"] = finite_or_null(s.mean);
      t["std"] = finite_or_null(s.std);
      t["nan"] = s.nan;
      t["inf"] = s.inf;
      r.min = fmt(s.min), r.max = fmt(s.max), r.mean = fmt(s.mean), r.std = fmt(s.std);
      r.bad = s.nan || s.inf ? std::to_string(s.nan) + "/" + std::to_string(s.inf) : "-";
    }
    j["tensors"].push_back(t);
    rows.push_back(r);
  }
  j["total_tensors"] = reader->tensors().size();
  j["total_parameters"] = params;
  j["total_bytes"] = bytes;

  if (json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << "file        " << file << "\n"
            << "format      " << reader->format() << "\n"
            << "tensors     " << reader->tensors().size() << "\n"
            << "parameters  " << with_commas(params) << "\n"
            << "data        " << human_bytes(bytes) << " (file " << human_bytes(file_bytes) << ")\n";
  if (!reader->metadata().empty()) {
    std::cout << "metadata\n";
    for (const auto& [k, v] : reader->metadata()) {
      std::string shown = v.size() > 100 ? v.substr(0, 97) + "..." : v;
      std::cout << "  " << k << " = " << shown << "\n";
    }
  }
  std::cout << "\n";
  size_t w[9] = {4, 5, 5, 5, 3, 3, 4, 3, 7};
  for (const auto& r : rows) {
    const std::string* f[9] = {&r.name, &r.dtype, &r.shape, &r.bytes, &r.min, &r.max, &r.mean, &r.std, &r.bad};
    for (int i = 0; i < 9; ++i) w[i] = std::max(w[i], f[i]->size());
  }
  auto line = [&](const std::string* f[9]) {
    for (int i = 0; i < (no_stats ? 4 : 9); ++i) {
      bool right = i >= 3;
      std::printf(right ? "%*s  " : "%-*s  ", static_cast<int>(w[i]), f[i]->c_str());
    }
    std::printf("\n");
  };
  const std::string hdr[9] = {"name", "dtype", "shape", "bytes", "min", "max", "mean", "std", "nan/inf"};
  const std::string* hp[9];
  for (int i = 0; i < 9; ++i) hp[i] = &hdr[i];
  line(hp);
  for (const auto& r : rows) {
    const std::string* f[9] = {&r.name, &r.dtype, &r.shape, &r.bytes, &r.min, &r.max, &r.mean, &r.std, &r.bad};
    line(f);
  }
  return 0;
}

}  // namespace mcli
