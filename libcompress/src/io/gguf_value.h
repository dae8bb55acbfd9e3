// Internal: parsing of GGUF key/value payloads (used by gguf.cpp).
#pragma once
#include <cstdint>

#include "mcompress/byte_cursor.h"
#include "mcompress/io/gguf.h"

namespace mc::gguf_detail {

// Name of a GGUF value type ("u32", "string", ...) or "type <n>" for an unknown id.
const char* type_name(uint32_t t);
// Reads one value of type `type` (already read) for key `key`. Arrays of arrays are kept as their
// rendered strings (elem_type ARRAY, items in `as`), nested at most a few levels deep. Every count
// is checked against the bytes left in the file before anything is allocated.
GgufValue read_value(ByteCursor& c, uint32_t type, const std::string& key, int depth = 0);

}  // namespace mc::gguf_detail
