// Names shared by the torch zip reader (torch_zip.cpp) and writer (torch_zip_write.cpp).
#pragma once
#include "mcompress/dtype.h"

namespace mc::torch_zip {

inline constexpr const char* kComponent = "torch";
// Extra archive entry holding write_torch_zip's metadata (a pickled dict of str -> str). torch.load
// reads only the entries data.pkl names, so it ignores this one.
inline constexpr const char* kMetadataEntry = "mcompress_metadata.pkl";

struct StorageType {
  const char* name;
  DType dtype;
};
inline constexpr StorageType kStorageTypes[] = {
    {"DoubleStorage", DType::F64}, {"FloatStorage", DType::F32}, {"HalfStorage", DType::F16},
    {"BFloat16Storage", DType::BF16}, {"LongStorage", DType::I64}, {"IntStorage", DType::I32},
    {"ShortStorage", DType::I16}, {"CharStorage", DType::I8}, {"ByteStorage", DType::U8},
    {"BoolStorage", DType::BOOL},
};

}  // namespace mc::torch_zip
