// Evaluation and calibration data: text documents, pre-tokenized token files, MNIST idx files and
// tensor files of inputs/labels.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "mcompress/tensor.h"

namespace mc {

// Splits a text file into documents on `separator` (default "<|endoftext|>"); separator "" splits on
// blank lines. Documents are trimmed of surrounding whitespace; empty ones are dropped.
std::vector<std::string> read_documents(const std::string& path, const std::string& separator = "<|endoftext|>");

// Flat little-endian uint16 or uint32 token ids, as nanoGPT's prepare.py writes (bytes_per_token 2 or 4).
std::vector<int32_t> read_token_file(const std::string& path, int bytes_per_token);

struct LabeledData {
  Shape example_shape;        // shape of one input, e.g. {784} or {1, 28, 28}
  std::vector<float> inputs;  // count * numel(example_shape), row-major
  std::vector<int64_t> labels;
  int64_t count = 0;
};
// MNIST idx files (gzip-compressed or raw): pixels as float 0..255, shape {rows * cols}.
LabeledData read_mnist(const std::string& images_path, const std::string& labels_path);
// A safetensors/HDF5/torch file holding an inputs tensor [N, ...] (any dtype, converted to float32;
// example_shape = the shape after N, {1} for [N]) and an integer labels tensor [N] or [N, 1].
LabeledData read_tensor_dataset(const std::string& path, const std::string& inputs_key = "inputs",
                                const std::string& labels_key = "labels");

}  // namespace mc
