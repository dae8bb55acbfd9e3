// Labeled data: MNIST idx files and tensor files of inputs/labels.
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "mcompress/checkpoint.h"
#include "mcompress/datasets.h"
#include "mcompress/error.h"

namespace mc {

namespace {

constexpr const char* kComp = "data";
constexpr uint32_t kIdxImagesMagic = 2051;  // 0x00000803: unsigned byte, 3 dimensions
constexpr uint32_t kIdxLabelsMagic = 2049;  // 0x00000801: unsigned byte, 1 dimension
constexpr unsigned kReadChunk = 1u << 20;
constexpr uint64_t kMaxIdxBytes = uint64_t(1) << 40;  // guards the size arithmetic, not a real limit

// The whole file, gunzipped when it is gzip (zlib reads other files as they are).
std::vector<uint8_t> read_maybe_gzip(const std::string& path) {
  errno = 0;
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) fail<FileError>(kComp, path, ": cannot open: ", errno ? std::strerror(errno) : "zlib could not allocate");
  std::unique_ptr<gzFile_s, int (*)(gzFile)> closer(f, gzclose);
  std::vector<uint8_t> data;
  while (true) {
    const size_t at = data.size();
    data.resize(at + kReadChunk);
    const int n = gzread(f, data.data() + at, kReadChunk);
    if (n < 0) {
      int err = 0;
      const char* msg = gzerror(f, &err);
      fail(kComp, path, ": cannot read: ", err == Z_ERRNO ? std::strerror(errno) : msg);
    }
    data.resize(at + size_t(n));
    if (n == 0) break;
  }
  return data;
}

uint32_t be32(const std::vector<uint8_t>& d, size_t at) {
  return (uint32_t(d[at]) << 24) | (uint32_t(d[at + 1]) << 16) | (uint32_t(d[at + 2]) << 8) | uint32_t(d[at + 3]);
}

// Checks an idx header (magic, dims) and that the data that follows has exactly the size the dims give.
std::vector<uint32_t> idx_header(const std::vector<uint8_t>& d, const std::string& path, uint32_t magic, int ndims,
                                 const char* what) {
  const size_t header = 4 * size_t(1 + ndims);
  if (d.size() < 4) fail(kComp, path, ": not an idx file (", d.size(), " bytes), expected MNIST ", what);
  if (be32(d, 0) != magic)
    fail(kComp, path, ": bad idx magic ", be32(d, 0), ", expected ", magic, " (MNIST ", what, ")");
  if (d.size() < header) fail(kComp, path, ": truncated idx header: ", d.size(), " bytes, need ", header);
  std::vector<uint32_t> dims;
  uint64_t body = 1;
  for (int i = 0; i < ndims; ++i) {
    dims.push_back(be32(d, 4 * size_t(1 + i)));
    if (dims.back() != 0 && body > kMaxIdxBytes / dims.back())
      fail(kComp, path, ": idx dimensions are implausibly large (over ", kMaxIdxBytes, " bytes)");
    body *= dims.back();
  }
  if (d.size() - header != body)
    fail(kComp, path, ": ", d.size() - header < body ? "truncated" : "trailing bytes", ": the header's dimensions ",
         "give ", body, " data bytes, the file has ", d.size() - header);
  return dims;
}

std::vector<int64_t> integer_values(const HostTensor& t) {
  std::vector<int64_t> out(size_t(t.numel()));
  const uint8_t* p = t.data;
  auto load = [&](auto type_tag) {
    using T = decltype(type_tag);
    for (size_t i = 0; i < out.size(); ++i) {
      T v;
      std::memcpy(&v, p + i * sizeof(T), sizeof(T));
      out[i] = int64_t(v);
    }
  };
  switch (t.dtype) {
    case DType::I64: load(int64_t{}); break;
    case DType::I32: load(int32_t{}); break;
    case DType::I16: load(int16_t{}); break;
    case DType::I8: load(int8_t{}); break;
    case DType::U8: case DType::BOOL: load(uint8_t{}); break;
    default: break;
  }
  return out;
}

}  // namespace

LabeledData read_mnist(const std::string& images_path, const std::string& labels_path) {
  const std::vector<uint8_t> images = read_maybe_gzip(images_path);
  const std::vector<uint32_t> idims = idx_header(images, images_path, kIdxImagesMagic, 3, "images (idx3-ubyte)");
  const std::vector<uint8_t> labels = read_maybe_gzip(labels_path);
  const std::vector<uint32_t> ldims = idx_header(labels, labels_path, kIdxLabelsMagic, 1, "labels (idx1-ubyte)");
  if (idims[0] == 0) fail(kComp, images_path, ": no images");
  if (idims[1] == 0 || idims[2] == 0) fail(kComp, images_path, ": images of ", idims[1], "x", idims[2], " pixels");
  if (idims[0] != ldims[0])
    fail(kComp, images_path, ": ", idims[0], " images but ", labels_path, " has ", ldims[0], " labels");
  LabeledData out;
  out.count = int64_t(idims[0]);
  out.example_shape = {int64_t(idims[1]) * int64_t(idims[2])};
  out.inputs.assign(images.begin() + 16, images.end());  // uint8 pixels -> float 0..255
  out.labels.assign(labels.begin() + 8, labels.end());
  return out;
}

LabeledData read_tensor_dataset(const std::string& path, const std::string& inputs_key, const std::string& labels_key) {
  const std::unique_ptr<CheckpointReader> r = open_checkpoint(path);
  for (const std::string& key : {inputs_key, labels_key}) {
    if (r->contains(key)) continue;
    std::string names;
    for (size_t i = 0; i < r->tensors().size() && i < 10; ++i) names += (i ? ", " : "") + r->tensors()[i].name;
    if (r->tensors().size() > 10) names += ", ...";
    fail(kComp, path, ": no tensor '", key, "' (the file has: ", names.empty() ? "none" : names, ")");
  }
  const HostTensor x = r->load(inputs_key);
  const HostTensor y = r->load(labels_key);
  if (x.shape.empty() || x.shape[0] == 0)
    fail(kComp, path, ": inputs '", inputs_key, "' has shape ", shape_str(x.shape), ", expected [N, ...] with N > 0");
  const DType yt = y.dtype;
  if (yt != DType::I64 && yt != DType::I32 && yt != DType::I16 && yt != DType::I8 && yt != DType::U8 && yt != DType::BOOL)
    fail(kComp, path, ": labels '", labels_key, "' are ", dtype_name(yt), ", expected an integer type");
  const bool column = y.shape.size() == 2 && y.shape[1] == 1;
  if (y.shape.size() != 1 && !column)
    fail(kComp, path, ": labels '", labels_key, "' have shape ", shape_str(y.shape), ", expected [N] or [N, 1]");
  if (y.shape[0] != x.shape[0])
    fail(kComp, path, ": inputs '", inputs_key, "' have ", x.shape[0], " examples but labels '", labels_key, "' have ",
         y.shape[0]);
  LabeledData out;
  out.count = x.shape[0];
  out.example_shape.assign(x.shape.begin() + 1, x.shape.end());
  if (out.example_shape.empty()) out.example_shape = {1};
  out.inputs = to_f32(x);
  out.labels = integer_values(y);
  return out;
}

}  // namespace mc
