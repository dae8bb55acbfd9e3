#include "mcompress/quant/packed_summary.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "mcompress/error.h"
#include "mcompress/quant/packed.h"

namespace mc {

namespace {

constexpr const char* kComp = "packed";
constexpr const char* kPartSuffixes[] = {"qweight", "scales", "zeros", "g_idx", "mask", "values", "indices"};

std::string grid_label(int bits, int group_size, bool symmetric, bool g_idx, bool float_zeros) {
  std::string g = group_size > 0 ? str("g", group_size) : group_size == 0 ? "per-channel" : "per-tensor";
  return str("int", bits, symmetric ? " sym " : " asym ", g, g_idx ? " act-order" : "", float_zeros ? " fp16-zero" : "");
}

}  // namespace

std::vector<PackedWeightSummary> summarize_packed(const CheckpointReader& reader) {
  const auto& meta = reader.metadata();
  auto it = meta.find(kPackedMetadataKey);
  if (it == meta.end()) return {};
  std::vector<PackedWeightSummary> out;
  try {
    const auto j = nlohmann::json::parse(it->second);
    if (!j.is_object() || !j.contains("format") || j["format"] != kPackedFormat)
      fail(kComp, reader.path(), ": '", kPackedMetadataKey, "' should have \"format\": \"", kPackedFormat, "\"");
    for (const auto& [key, d] : j.at("tensors").items()) {
      PackedWeightSummary s;
      s.key = key;
      s.shape = d.at("shape").get<std::vector<int64_t>>();
      if (s.shape.size() != 2 || s.shape[0] <= 0 || s.shape[1] <= 0)
        fail(kComp, reader.path(), ": entry '", key, "' should have a shape [out, in], got ", d.at("shape").dump());
      s.weight_shape = d.contains("weight_shape") ? d["weight_shape"].get<std::vector<int64_t>>() : s.shape;
      s.numel = s.shape[0] * s.shape[1];
      if (d.contains("bits")) {
        s.bits = d.at("bits").get<int>();
        s.group_size = d.value("group_size", 0);
        s.symmetric = d.value("symmetric", true);
        s.g_idx = d.value("g_idx", false);
      }
      std::string grid =
          s.bits ? grid_label(s.bits, s.group_size, s.symmetric, s.g_idx, d.value("zero_dtype", "") == "F16") : "fp16";
      if (d.contains("sparse")) {
        const auto& sp = d["sparse"];
        const std::string layout = sp.at("layout").get<std::string>();
        s.sparse = layout == "n:m" ? str(sp.at("n").get<int>(), ":", sp.at("m").get<int>()) : layout;
        s.scheme = s.sparse + " sparse " + (s.bits ? "+ " : "") + grid;
      } else {
        s.scheme = grid;
      }
      for (const char* suffix : kPartSuffixes) {
        const std::string name = key + "." + suffix;
        if (!reader.contains(name)) continue;
        s.parts.push_back(name);
        s.bytes += reader.info(name).nbytes;
      }
      s.bits_per_weight = 8.0 * static_cast<double>(s.bytes) / static_cast<double>(s.numel);
      out.push_back(std::move(s));
    }
  } catch (const nlohmann::json::exception& e) {
    fail(kComp, reader.path(), ": bad '", kPackedMetadataKey, "' metadata: ", e.what());
  }
  return out;
}

bool is_packed_part(const std::vector<PackedWeightSummary>& entries, const std::string& tensor) {
  for (const auto& e : entries)
    if (std::find(e.parts.begin(), e.parts.end(), tensor) != e.parts.end()) return true;
  return false;
}

}  // namespace mc
