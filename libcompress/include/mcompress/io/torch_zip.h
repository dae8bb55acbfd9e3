#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mcompress/checkpoint.h"

namespace mc {
// PyTorch >= 1.6 zip checkpoints (torch.save of a state_dict, or of a dict holding one). The pickle
// is read by a restricted unpickler that accepts only the globals a state_dict needs and refuses any
// other with InputError: loading never executes code. Nested dicts are flattened with '.'.
// Tensor data are views into an mmap of the (stored, uncompressed) zip entries.
std::unique_ptr<CheckpointReader> open_torch_zip(const std::string& path);
// Writes what torch.save(OrderedDict) writes, so torch.load(f, weights_only=True) reads it.
void write_torch_zip(const std::string& path, const std::vector<HostTensor>& tensors,
                     const std::map<std::string, std::string>& metadata);
}  // namespace mc
