// Compression reports written beside every compressed model: report.json (machine-readable),
// report.md and report.html (for people; the HTML is self-contained: inline CSS and SVG, no scripts,
// nothing loaded from anywhere). Retention is defined per metric and stated in the report:
//   higher-is-better metrics (accuracy): compressed / baseline
//   lower-is-better metrics (perplexity): baseline / compressed
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mc {

struct MetricRow {
  std::string name;                     // "bits per byte", "top-1 accuracy"
  std::optional<double> baseline, compressed;
  bool higher_is_better = false;
  int decimals = 4;
  bool percent = false;                 // value is a fraction shown as %
  bool is_primary = false;              // the metric retention is reported on
};

struct LayerRow {
  std::string name;
  std::string shape;                    // "[64, 64]"
  std::string scheme;                   // "int4 sym g32", "dense f32"
  int64_t params = 0;
  double bits_per_weight = 32;          // stored bits including scales/zeros
  std::optional<double> rel_output_error;  // ||WX - ŴX||² / ||WX||² on calibration inputs
  std::optional<double> rel_weight_error;  // ||W - Ŵ||_F / ||W||_F (model-free quantization: no inputs)
  std::optional<double> max_abs_error;     // max |W - Ŵ|
  std::string note;                     // e.g. "last group of 4 columns"
  std::string runtime;                  // W8A8: "int8 kernel (avx512-vnni)" or "simulated in float: why"
};

// What a job planned for a layer before it ran (--dry-run prints it; the report keeps it beside what
// ran, computed by the same selection code).
struct PlanRow {
  std::string name;
  std::string what;                     // "gptq int4 sym g32", "sparsegpt 2:4", "dense"
  int64_t params = 0;
  double bits_before = 32;              // stored bits per weight in the input
  double bits_after = 32;               // estimated stored bits per weight after (codes, scales, masks)
  double keep = 1;                      // pruning: the fraction of weights stored
  double index_bits = 0;                // pruning, sparse storage: mask or positions per weight
  int code_bits = 0;                    // quantized: the widest code (the journal's size); 0 = not quantized
};

struct StepRow {
  std::string name;
  double seconds = 0;
  double peak_rss_mib = 0;  // the process's peak resident memory during the step; 0 = not measured
};

// The process's peak resident set (VmHWM) since the previous call, in MiB, and resets it (Linux:
// /proc/self/clear_refs), so consecutive calls give each step's own peak. 0 where unavailable.
double take_peak_rss_mib();
// The process's peak resident set (VmHWM) in MiB without resetting it, so that getrusage / time -v still
// see the whole run's peak (a one-job process: model-free quantization). 0 where unavailable.
double peak_rss_mib();

struct Report {
  std::string title;                    // "stories260K: RTN int4 sym g32"
  std::string model, output;            // paths
  std::string method;                   // "rtn"
  std::map<std::string, std::string> settings;
  std::string eval_protocol;            // how the metrics were measured
  std::vector<MetricRow> metrics;
  uint64_t size_before = 0, size_after = 0;  // bytes of the files
  std::vector<LayerRow> layers;
  std::vector<PlanRow> plan;
  // Stored bits per weight of the compressed layers in the input, from its dtypes (32 for f32, 16 for
  // bf16/f16); 0 = not measured.
  double baseline_bits = 0;
  std::vector<StepRow> steps;
  std::vector<std::string> warnings;
  std::string command_line;
  std::string seed;
  std::string created;                  // "2024-05-01 12:00:00 UTC"; empty: to_json/to_markdown use now,
                                        // to_html shows no date (write_report fills it once for all three)

  std::optional<double> retention() const;  // of the primary metric
  std::string to_json() const;
  std::string to_markdown() const;
  // One self-contained page: summary cards, metrics, a per-layer SVG chart (relative output error and
  // stored bits per weight), layers, steps, settings, warnings. Deterministic: the same Report gives
  // the same bytes.
  std::string to_html() const;
};

// A report read back from what to_json wrote (where: its path, for the InputError on a malformed one).
Report report_from_json(const std::string& json_text, const std::string& where);

// Writes DIR/report.json, DIR/report.md and DIR/report.html (each atomically), all with the same
// "created" time.
void write_report(const Report& r, const std::string& dir);
// "mcompress 0.1.0, LibTorch 1.13.1, GCC 12.2.0"
std::string versions_string();

}  // namespace mc
