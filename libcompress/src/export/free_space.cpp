// require_free_space (free_space.h).
#include "free_space.h"

#include <filesystem>

#include "mcompress/error.h"
#include "mcompress/text_format.h"

namespace mc {

void require_free_space(const std::string& out, uint64_t bytes, const char* component, const std::string& what) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path dir = fs::absolute(fs::path(out), ec).parent_path();
  while (!dir.empty() && !fs::exists(dir, ec) && dir != dir.root_path()) dir = dir.parent_path();
  const fs::space_info s = fs::space(dir, ec);
  if (ec) return;  // unknown: the write itself reports a full disk
  if (s.available < bytes)
    fail(component, out, ": needs ", human_size(bytes), " (", bytes, " bytes) of disk space",
         what.empty() ? "" : " (" + what + ")", ", ", human_size(s.available),
         " available on ", dir.string(), " (free some space or write elsewhere)");
}

}  // namespace mc
