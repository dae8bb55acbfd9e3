#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mcompress/checkpoint.h"

namespace mc {
// Reads any HDF5 file whose datasets are numeric arrays: our own layout (tensors by name with
// attributes), or a Keras-style weights file (nested groups of datasets; names are the dataset
// paths with '/' between groups). Data are read when loaded.
std::unique_ptr<CheckpointReader> open_hdf5(const std::string& path);
// keras_style=false: our layout. keras_style=true: one group per layer prefix with a
// weight_names attribute, as Keras save_weights writes.
void write_hdf5(const std::string& path, const std::vector<HostTensor>& tensors,
                const std::map<std::string, std::string>& metadata, bool keras_style);
}  // namespace mc
