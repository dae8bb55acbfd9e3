#include <fstream>
#include "mcompress/report.h"
#include "mcompress/error.h"

#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mcompress/atomic_file.h"
#include "report_format.h"

namespace mc {

namespace report_detail {

std::string fmt_value(double v, const MetricRow& m) {
  char buf[64];
  if (m.percent)
    std::snprintf(buf, sizeof buf, "%.*f%%", m.decimals, 100.0 * v);
  else
    std::snprintf(buf, sizeof buf, "%.*f", m.decimals, v);
  return buf;
}

std::string human(uint64_t n) {
  const char* u[] = {"B", "KiB", "MiB", "GiB"};
  double v = static_cast<double>(n);
  int i = 0;
  while (v >= 1024 && i < 3) v /= 1024, ++i;
  char buf[32];
  std::snprintf(buf, sizeof buf, i ? "%.2f %s" : "%.0f %s", v, u[i]);
  return buf;
}

std::string change_percent(const MetricRow& m) {
  if (!m.baseline || !m.compressed || *m.baseline == 0) return "";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%+.2f%%", 100.0 * (*m.compressed - *m.baseline) / std::fabs(*m.baseline));
  return buf;
}

}  // namespace report_detail

namespace {

using report_detail::fmt_value;
using report_detail::human;

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&t));
  return buf;
}

void write_text(const std::string& path, const std::string& text) {
  AtomicFile f(path, "report");
  f.write(text.data(), text.size());
  f.commit();
}

}  // namespace

std::string versions_string() {
  std::ostringstream os;
  os << "mcompress " << MCOMPRESS_VERSION << ", LibTorch " << TORCH_VERSION_MAJOR << "." << TORCH_VERSION_MINOR << "."
     << TORCH_VERSION_PATCH;
#if defined(__clang__)
  os << ", clang " << __clang_major__ << "." << __clang_minor__;
#elif defined(__GNUC__)
  os << ", GCC " << __GNUC__ << "." << __GNUC_MINOR__ << "." << __GNUC_PATCHLEVEL__;
#endif
  return os.str();
}

std::optional<double> Report::retention() const {
  for (const auto& m : metrics) {
    if (!m.is_primary || !m.baseline || !m.compressed) continue;
    if (m.higher_is_better) return *m.baseline != 0 ? std::optional<double>(*m.compressed / *m.baseline) : std::nullopt;
    return *m.compressed != 0 ? std::optional<double>(*m.baseline / *m.compressed) : std::nullopt;
  }
  return std::nullopt;
}

std::string Report::to_json() const {
  nlohmann::ordered_json j;
  j["title"] = title;
  j["model"] = model;
  j["output"] = output;
  j["method"] = method;
  j["settings"] = settings;
  j["eval_protocol"] = eval_protocol;
  j["metrics"] = nlohmann::json::array();
  for (const auto& m : metrics) {
    nlohmann::ordered_json o;
    o["name"] = m.name;
    o["baseline"] = m.baseline ? nlohmann::json(*m.baseline) : nlohmann::json(nullptr);
    o["compressed"] = m.compressed ? nlohmann::json(*m.compressed) : nlohmann::json(nullptr);
    o["higher_is_better"] = m.higher_is_better;
    o["primary"] = m.is_primary;
    o["decimals"] = m.decimals;
    o["percent"] = m.percent;
    j["metrics"].push_back(o);
  }
  auto r = retention();
  j["retention"] = r ? nlohmann::json(*r) : nlohmann::json(nullptr);
  j["retention_definition"] = "higher-is-better metrics: compressed/baseline; lower-is-better: baseline/compressed";
  j["size_before_bytes"] = size_before;
  j["size_after_bytes"] = size_after;
  j["layers"] = nlohmann::json::array();
  for (const auto& l : layers) {
    nlohmann::ordered_json o;
    o["name"] = l.name;
    o["shape"] = l.shape;
    o["scheme"] = l.scheme;
    o["params"] = l.params;
    o["bits_per_weight"] = l.bits_per_weight;
    o["rel_output_error"] = l.rel_output_error ? nlohmann::json(*l.rel_output_error) : nlohmann::json(nullptr);
    if (l.rel_weight_error) o["rel_weight_error"] = *l.rel_weight_error;
    if (l.max_abs_error) o["max_abs_error"] = *l.max_abs_error;
    if (!l.note.empty()) o["note"] = l.note;
    if (!l.runtime.empty()) o["runtime"] = l.runtime;
    j["layers"].push_back(o);
  }
  if (baseline_bits > 0) j["baseline_bits_per_weight"] = baseline_bits;
  if (!plan.empty()) {
    j["plan"] = nlohmann::json::array();
    for (const auto& p : plan)
      j["plan"].push_back(nlohmann::ordered_json{{"name", p.name}, {"what", p.what}, {"params", p.params},
                                                 {"bits_before", p.bits_before}, {"bits_after", p.bits_after}});
  }
  j["steps"] = nlohmann::json::array();
  for (const auto& s : steps) {
    nlohmann::json o = {{"name", s.name}, {"seconds", s.seconds}};
    if (s.peak_rss_mib > 0) o["peak_rss_mib"] = s.peak_rss_mib;
    j["steps"].emplace_back(std::move(o));
  }
  j["warnings"] = warnings;
  j["command_line"] = command_line;
  j["seed"] = seed;
  j["versions"] = versions_string();
  j["created"] = created.empty() ? utc_now() : created;
  return j.dump(2) + "\n";
}

std::string Report::to_markdown() const {
  std::ostringstream md;
  md << "# " << title << "\n\n";
  md << "Model `" << model << "` compressed to `" << output << "` with **" << method << "**";
  if (!settings.empty()) {
    md << " (";
    bool first = true;
    for (const auto& [k, v] : settings) md << (first ? "" : ", ") << k << " " << v, first = false;
    md << ")";
  }
  md << ".\n\n";
  if (auto r = retention()) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * *r);
    md << "**Retention: " << buf << "**";
    for (const auto& m : metrics)
      if (m.is_primary) md << " on " << m.name << (m.higher_is_better ? " (compressed / baseline)" : " (baseline / compressed)");
    md << ".";
    if (size_before && size_after) {
      char s[64];
      std::snprintf(s, sizeof s, " Size: %s -> %s (%.2fx smaller).", human(size_before).c_str(),
                    human(size_after).c_str(), double(size_before) / double(size_after));
      md << s;
    }
    md << "\n\n";
  }
  md << "| metric | baseline | compressed | change |\n|---|---:|---:|---:|\n";
  for (const auto& m : metrics) {
    md << "| " << m.name << (m.higher_is_better ? " (higher is better)" : " (lower is better)") << " | "
       << (m.baseline ? fmt_value(*m.baseline, m) : "") << " | " << (m.compressed ? fmt_value(*m.compressed, m) : "")
       << " | " << report_detail::change_percent(m) << " |\n";
  }
  if (size_before || size_after)
    md << "| file size | " << human(size_before) << " | " << human(size_after) << " | " << [&] {
      char b[32];
      std::snprintf(b, sizeof b, "%.2fx", size_after ? double(size_before) / size_after : 0.0);
      return std::string(b);
    }() << " smaller |\n";
  if (!eval_protocol.empty()) md << "\nMeasured as: " << eval_protocol << "\n";
  if (!warnings.empty()) {
    md << "\n## Warnings\n\n";
    for (const auto& w : warnings) md << "- " << w << "\n";
  }
  const bool weight_errors =
      std::any_of(layers.begin(), layers.end(), [](const LayerRow& l) { return l.rel_weight_error.has_value(); });
  if (weight_errors) {  // model-free: errors of the weights themselves, no calibration inputs
    md << "\n## Tensors\n\nRelative weight error = ||W - Ŵ||_F / ||W||_F; max abs error = max |W - Ŵ|.\n\n"
       << "| tensor | shape | scheme | params | bits/weight | rel. weight error | max abs error |\n"
       << "|---|---|---|---:|---:|---:|---:|\n";
    for (const auto& l : layers) {
      char bpw[32], err[32] = "", mx[32] = "";
      std::snprintf(bpw, sizeof bpw, "%.3f", l.bits_per_weight);
      if (l.rel_weight_error) std::snprintf(err, sizeof err, "%.3e", *l.rel_weight_error);
      if (l.max_abs_error) std::snprintf(mx, sizeof mx, "%.3e", *l.max_abs_error);
      md << "| " << l.name << " | " << l.shape << " | " << l.scheme << " | " << l.params << " | " << bpw << " | "
         << err << " | " << mx << " |\n";
    }
  } else if (!layers.empty()) {
    md << "\n## Layers\n\nRelative output error = ||WX - ŴX||² / ||WX||² on the calibration inputs.\n\n"
       << "| layer | shape | scheme | params | bits/weight | rel. output error | note |\n"
       << "|---|---|---|---:|---:|---:|---|\n";
    for (const auto& l : layers) {
      char bpw[32], err[32];
      std::snprintf(bpw, sizeof bpw, "%.3f", l.bits_per_weight);
      if (l.rel_output_error) std::snprintf(err, sizeof err, "%.3e", *l.rel_output_error);
      else err[0] = 0;
      md << "| " << l.name << " | " << l.shape << " | " << l.scheme << " | " << l.params << " | " << bpw << " | "
         << err << " | " << l.note << (l.note.empty() || l.runtime.empty() ? "" : "; ") << l.runtime << " |\n";
    }
  }
  if (!steps.empty()) {
    md << "\n## Time and memory\n\n| step | seconds | peak memory (MiB) |\n|---|---:|---:|\n";
    for (const auto& s : steps) {
      char b[32], m[32] = "";
      std::snprintf(b, sizeof b, "%.2f", s.seconds);
      if (s.peak_rss_mib > 0) std::snprintf(m, sizeof m, "%.0f", s.peak_rss_mib);
      md << "| " << s.name << " | " << b << " | " << m << " |\n";
    }
  }
  md << "\n## Run\n\n- command: `" << command_line << "`\n- seed: " << (seed.empty() ? "-" : seed)
     << "\n- versions: " << versions_string() << "\n- created: " << (created.empty() ? utc_now() : created) << "\n";
  return md.str();
}

void write_report(const Report& r, const std::string& dir) {
  Report stamped = r;  // one "created" time for all three files
  if (stamped.created.empty()) stamped.created = utc_now();
  std::filesystem::create_directories(dir);
  write_text(dir + "/report.json", stamped.to_json());
  write_text(dir + "/report.md", stamped.to_markdown());
  write_text(dir + "/report.html", stamped.to_html());
}

double peak_rss_mib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  double kib = 0;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) kib = std::strtod(line.c_str() + 6, nullptr);
  return kib / 1024.0;
}

double take_peak_rss_mib() {
  const double mib = peak_rss_mib();
  std::ofstream reset("/proc/self/clear_refs");
  if (reset) reset << "5";  // reset the peak to the current resident set
  return mib;
}

Report report_from_json(const std::string& text, const std::string& where) {
  Report r;
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    r.title = j.value("title", "");
    r.model = j.value("model", "");
    r.output = j.value("output", "");
    r.method = j.value("method", "");
    r.eval_protocol = j.value("eval_protocol", "");
    r.command_line = j.value("command_line", "");
    r.seed = j.value("seed", "");
    r.created = j.value("created", "");
    r.size_before = j.value("size_before_bytes", uint64_t(0));
    r.size_after = j.value("size_after_bytes", uint64_t(0));
    if (j.contains("settings")) r.settings = j["settings"].get<std::map<std::string, std::string>>();
    for (const auto& m : j.value("metrics", nlohmann::json::array())) {
      MetricRow row;
      row.name = m.at("name");
      if (!m["baseline"].is_null()) row.baseline = m["baseline"].get<double>();
      if (!m["compressed"].is_null()) row.compressed = m["compressed"].get<double>();
      row.higher_is_better = m.value("higher_is_better", false);
      row.is_primary = m.value("primary", false);
      row.decimals = m.value("decimals", 4);
      row.percent = m.value("percent", false);
      r.metrics.push_back(row);
    }
    for (const auto& l : j.value("layers", nlohmann::json::array())) {
      LayerRow row;
      row.name = l.at("name");
      row.shape = l.value("shape", "");
      row.scheme = l.value("scheme", "");
      row.params = l.value("params", int64_t(0));
      row.bits_per_weight = l.value("bits_per_weight", 32.0);
      if (l.contains("rel_output_error") && !l["rel_output_error"].is_null())
        row.rel_output_error = l["rel_output_error"].get<double>();
      if (l.contains("rel_weight_error")) row.rel_weight_error = l["rel_weight_error"].get<double>();
      if (l.contains("max_abs_error")) row.max_abs_error = l["max_abs_error"].get<double>();
      row.note = l.value("note", "");
      row.runtime = l.value("runtime", "");
      r.layers.push_back(row);
    }
    r.baseline_bits = j.value("baseline_bits_per_weight", 0.0);
    for (const auto& p : j.value("plan", nlohmann::json::array()))
      r.plan.push_back({p.at("name"), p.value("what", ""), p.value("params", int64_t(0)), p.value("bits_before", 32.0),
                        p.value("bits_after", 32.0)});
    for (const auto& st : j.value("steps", nlohmann::json::array()))
      r.steps.push_back({st.at("name"), st.at("seconds"), st.value("peak_rss_mib", 0.0)});
    r.warnings = j.value("warnings", std::vector<std::string>{});
  } catch (const nlohmann::json::exception& e) {
    fail("report", where, ": not a report.json: ", e.what());
  }
  return r;
}

}  // namespace mc
