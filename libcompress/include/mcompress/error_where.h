// Adding the file to an error raised by code that does not know it (kept out of error.h, which every
// file includes).
#pragma once
#include <string>

namespace mc {

// `msg` ("[component] what") with "where: " put after the component: for an error raised by code that
// does not know the file it came from ("[llama] tensor 'x' ..." -> "[llama] DIR: tensor 'x' ...").
inline std::string with_where(const std::string& msg, const std::string& where) {
  if (msg.rfind('[', 0) == 0) {
    const auto p = msg.find("] ");
    if (p != std::string::npos) return msg.substr(0, p + 2) + where + ": " + msg.substr(p + 2);
  }
  return where + ": " + msg;
}

}  // namespace mc
