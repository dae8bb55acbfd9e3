// STUB: replaced by the torch zip reader/writer.
#include "mcompress/io/torch_zip.h"
#include "mcompress/error.h"
namespace mc {
std::unique_ptr<CheckpointReader> open_torch_zip(const std::string& path) { fail("torch", path, ": not implemented yet"); }
void write_torch_zip(const std::string& path, const std::vector<HostTensor>&, const std::map<std::string, std::string>&) { fail("torch", path, ": not implemented yet"); }
}  // namespace mc
