// STUB: replaced by the HDF5 reader/writer.
#include "mcompress/io/hdf5.h"
#include "mcompress/error.h"
namespace mc {
std::unique_ptr<CheckpointReader> open_hdf5(const std::string& path) { fail("hdf5", path, ": not implemented yet"); }
void write_hdf5(const std::string& path, const std::vector<HostTensor>&, const std::map<std::string, std::string>&, bool) { fail("hdf5", path, ": not implemented yet"); }
}  // namespace mc
