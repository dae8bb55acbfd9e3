// Reading typed key/values of an open GGUF file (the llama/qwen2/qwen3, phi3 and gemma importers share
// these): one line naming the file and the key when a key is missing or has the wrong type.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "mcompress/checkpoint.h"
#include "mcompress/error.h"
#include "mcompress/io/gguf.h"

namespace mc::gguf_detail {

inline const GgufValue* find_kv(const CheckpointReader& r, const std::string& key) {
  for (const auto& [k, v] : gguf_kv(r))
    if (k == key) return &v;
  return nullptr;
}

// A number (integer or float key); `dflt` when absent, else InputError.
inline double number_kv(const CheckpointReader& r, const std::string& key, std::optional<double> dflt = {}) {
  const GgufValue* v = find_kv(r, key);
  if (!v) {
    if (dflt) return *dflt;
    fail("gguf", r.path(), ": GGUF lacks '", key, "'");
  }
  if (v->type == GgufType::STRING || v->type == GgufType::ARRAY)
    fail("gguf", r.path(), ": key '", key, "' is ", v->to_string(), ", expected a number");
  if (v->type == GgufType::F32 || v->type == GgufType::F64) return v->f;
  return v->type == GgufType::U64 ? double(v->u) : double(v->i);
}

// An integer key (a float is refused); `dflt` when absent, else InputError.
inline int64_t int_kv(const CheckpointReader& r, const std::string& key, std::optional<int64_t> dflt = {}) {
  const GgufValue* v = find_kv(r, key);
  if (!v) {
    if (dflt) return *dflt;
    fail("gguf", r.path(), ": GGUF lacks '", key, "'");
  }
  if (v->type == GgufType::STRING || v->type == GgufType::ARRAY || v->type == GgufType::F32 || v->type == GgufType::F64)
    fail("gguf", r.path(), ": key '", key, "' is ", v->to_string(), ", expected an integer");
  return v->type == GgufType::U64 ? int64_t(v->u) : v->i;
}

}  // namespace mc::gguf_detail
