// STUB: replaced by the llama2.c reader/writer.
#include "mcompress/io/llama2c.h"
#include "mcompress/error.h"
namespace mc {
std::unique_ptr<CheckpointReader> open_llama2c(const std::string& path) { fail("llama2c", path, ": not implemented yet"); }
void write_llama2c(const std::string& path, const std::vector<HostTensor>&, const std::map<std::string, std::string>&, int) { fail("llama2c", path, ": not implemented yet"); }
bool looks_like_llama2c_legacy(const uint8_t*, uint64_t) { return false; }
}  // namespace mc
