// STUB: replaced by the ggml block dequantizers.
#include "mcompress/ggml_blocks.h"
#include "mcompress/error.h"
namespace mc {
void dequantize_blocks(DType t, const uint8_t*, int64_t, float*) { fail("ggml", "dequantization of ", dtype_name(t), " not implemented yet"); }
}  // namespace mc
