// Numbers as reports and summaries print them.
#pragma once
#include <cstdint>
#include <string>

namespace mc {

std::string human_size(uint64_t bytes);                  // "1.50 MiB"
std::string fmt_num(const char* printf_format, double v);  // fmt_num("%.2f%%", 98.31)
std::string commas(uint64_t n);                           // "1,568,000"

}  // namespace mc
