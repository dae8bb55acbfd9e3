#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "mcompress/checkpoint.h"

namespace mc {

enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  U64 = 10, I64 = 11, F64 = 12,
};

struct GgufValue {
  GgufType type = GgufType::U32;
  GgufType elem_type = GgufType::U32;  // for ARRAY
  // scalars widened: integers in i (or u for U64), floats in f, bool in i, strings in s;
  // arrays in the vectors.
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string s;
  std::vector<int64_t> ai;
  std::vector<double> af;
  std::vector<std::string> as;
  std::string to_string(size_t max_items = 8) const;
};

// GGUF v2/v3 reader: key/values, tensor table, and data views. ggml dims are reversed into
// row-major shapes (ne[0], the contiguous dimension, is last). Tensor types F32, F16, BF16, F64,
// I8..I64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K are accepted; others are refused by name.
class GgufReader;
std::unique_ptr<CheckpointReader> open_gguf(const std::string& path);
// The typed key/values of a GGUF file opened with open_gguf (in file order).
const std::vector<std::pair<std::string, GgufValue>>& gguf_kv(const CheckpointReader& r);
uint32_t gguf_version(const CheckpointReader& r);
uint64_t gguf_alignment(const CheckpointReader& r);

}  // namespace mc
