#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mcompress/checkpoint.h"

namespace mc {
// Reads by mmap without copying. Validates: header length within the file, JSON well formed,
// dtype known, shape x dtype == byte range, ranges inside the data section, no overlaps, no
// duplicate names.
std::unique_ptr<CheckpointReader> open_safetensors(const std::string& path);
// Block-quantized (GGUF) tensors cannot be stored: throws InputError.
void write_safetensors(const std::string& path, const std::vector<HostTensor>& tensors,
                       const std::map<std::string, std::string>& metadata);
}  // namespace mc
