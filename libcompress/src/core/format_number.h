// printf formatting of one number for messages and report notes: format_number("%.2f", 0.125) == "0.13".
#pragma once
#include <cstdio>
#include <string>

namespace mc {

inline std::string format_number(const char* printf_format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, printf_format, v);
  return buf;
}

}  // namespace mc
