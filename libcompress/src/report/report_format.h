// Formatting shared by report.cpp (JSON, Markdown) and report_html.cpp: internal to libcompress.
#pragma once
#include <cstdint>
#include <string>

#include "mcompress/report.h"

namespace mc::report_detail {

std::string fmt_value(double v, const MetricRow& m);  // "0.8132", "91.20%" (percent metrics)
std::string human(uint64_t bytes);                    // "1.01 MiB"
std::string change_percent(const MetricRow& m);       // "+1.23%" relative to |baseline|, "" without both

}  // namespace mc::report_detail
