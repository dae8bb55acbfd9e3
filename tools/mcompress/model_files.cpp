#include "model_files.h"

#include <cmath>
#include <cstdio>
#include <optional>

#include "cli.h"
#include "mcompress/datasets.h"
#include "mcompress/tokenizer.h"

namespace mcli {

void print_summary(const mc::Report& rep, bool labeled, const std::string& out, const char* bits_label,
                   const char* baseline_label, const char* compressed_label) {
  std::printf("\n%-40s %12s %12s %10s\n", "", baseline_label, compressed_label, "change");
  auto val = [](const mc::MetricRow& m, const std::optional<double>& v) {
    if (!v) return std::string("");
    return m.percent ? fmt("%.2f%%", 100 * *v) : fmt(("%." + std::to_string(m.decimals) + "f").c_str(), *v);
  };
  for (const auto& m : rep.metrics) {
    std::string change = m.baseline && m.compressed && *m.baseline != 0
                             ? fmt("%+.2f%%", 100 * (*m.compressed - *m.baseline) / std::fabs(*m.baseline))
                             : "";
    std::printf("%-40s %12s %12s %10s\n", m.name.c_str(), val(m, m.baseline).c_str(), val(m, m.compressed).c_str(),
                change.c_str());
  }
  std::printf("%-40s %12s %12s %9.2fx\n", "file size", human_bytes(rep.size_before).c_str(),
              human_bytes(rep.size_after).c_str(), double(rep.size_before) / double(rep.size_after));
  double qbits = 0, qn = 0;
  for (const auto& l : rep.layers) qbits += l.bits_per_weight * double(l.params), qn += double(l.params);
  if (qn > 0)
    std::printf("%-40s %12s %12s\n", bits_label, rep.baseline_bits > 0 ? fmt("%.3f", rep.baseline_bits).c_str() : "",
                fmt("%.3f", qbits / qn).c_str());
  if (auto r = rep.retention())
    std::printf("\nretention %.2f%% (%s)\n", 100 * *r,
                labeled ? (std::string(compressed_label) + " / " + baseline_label + " top-1").c_str()
                        : (std::string(baseline_label) + " / " + compressed_label + " perplexity").c_str());
  for (const auto& w : rep.warnings) std::printf("warning: %s\n", w.c_str());
  for (const auto& [k, v] : rep.settings)
    if (k == "calibration data" || k == "matmuls" || k == "achieved sparsity") std::printf("%s: %s\n", k.c_str(), v.c_str());
  std::printf("report: %s/report.md (also report.html, report.json)\n", out.c_str());
}


std::vector<int32_t> text_token_stream(const std::string& path, const mc::Tokenizer& tok) {
  std::vector<int32_t> out;
  for (const auto& doc : mc::read_documents(path)) {
    out.push_back(tok.bos_id());
    auto ids = tok.encode(doc);
    out.insert(out.end(), ids.begin(), ids.end());
  }
  return out;
}

}  // namespace mcli
