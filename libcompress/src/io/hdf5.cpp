// HDF5 checkpoint reader (the writer is in hdf5_write.cpp).
//
// Every numeric dataset in the file is a tensor. Names: in our own layout (root attribute
// mcompress.format = "mcompress-hdf5") the path under /tensors ("fc1.weight"); in any other file
// (Keras save_weights, h5py dumps) the full path without the leading '/' ("dense/dense/kernel:0").
// Order: creation order where the file tracks it (our files), else by name, group by group; Keras
// files (root or /model_weights attribute layer_names) list their layers' weights first, in
// layer_names/weight_names order.
//
// Types: IEEE f64/f32 and 16-bit floats with the binary16 or bfloat16 layout; signed ints of 8-64
// bits and uint8; an 8-bit enum {0, 1} (h5py's bool) or an 8-bit int with attribute dtype="BOOL" ->
// BOOL; uint16 with attribute dtype="BF16" -> BF16. Unsigned ints without a DType are widened,
// losslessly: uint16 -> I32, uint32 -> I64, uint64 -> I64 (load() fails if a value is >= 2^63); the
// widened names are listed in metadata "hdf5.widened". Other datasets (strings, compounds, vlen,
// null dataspaces, data stored in external files) are skipped and listed in "hdf5.skipped".
// Big-endian data are converted to little-endian when read.
#include "mcompress/io/hdf5.h"

#include <sys/stat.h>

#include <algorithm>
#include <limits>
#include <new>
#include <unordered_map>

#include "io/hdf5_util.h"

namespace mc {

namespace {

constexpr const char* kFormatAttr = "mcompress.format";
constexpr const char* kVersionAttr = "mcompress.version";
constexpr const char* kOurFormat = "mcompress-hdf5";
constexpr const char* kTensorsPrefix = "tensors/";

// How a dataset's values become the tensor's bytes.
enum class Source : uint8_t {
  Plain,   // read with the memory type of the tensor's dtype (HDF5 swaps bytes and widens ints)
  Bool,    // 8-bit enum or int: read in its native type, then normalized to 0/1
  U64,     // uint64 read as is, then checked to fit in I64
  BFloat,  // a 16-bit float type with bfloat16's layout
};

struct Classified {
  DType dtype;
  Source source;
  const char* widened_from;  // "U16"/"U32"/"U64" or nullptr
};

bool attr_says(hid_t ds, const char* dtype_name) {
  auto v = h5::read_attr(ds, "dtype");
  return v && v->items.size() == 1 && v->items[0] == dtype_name;
}

bool is_bool_enum(hid_t ftype) {
  h5::Handle base(H5Tget_super(ftype), H5Tclose);
  if (!base.valid() || H5Tget_class(base) != H5T_INTEGER || H5Tget_size(base) != 1 || H5Tget_nmembers(ftype) != 2)
    return false;
  int seen = 0;
  for (unsigned i = 0; i < 2; ++i) {
    unsigned char v = 0xff;
    if (H5Tget_member_value(ftype, i, &v) < 0 || v > 1) return false;
    seen |= 1 << v;
  }
  return seen == 3;
}

// The tensor dtype and read strategy for a dataset's file type; nullopt for what we skip.
std::optional<Classified> classify(hid_t ds, hid_t ftype) {
  const size_t size = H5Tget_size(ftype);
  switch (H5Tget_class(ftype)) {
    case H5T_FLOAT: {
      if (size == 8) return Classified{DType::F64, Source::Plain, nullptr};
      if (size == 4) return Classified{DType::F32, Source::Plain, nullptr};
      size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
      if (size != 2 || H5Tget_fields(ftype, &spos, &epos, &esize, &mpos, &msize) < 0) return std::nullopt;
      if (esize == 5 && msize == 10) return Classified{DType::F16, Source::Plain, nullptr};
      if (esize == 8 && msize == 7) return Classified{DType::BF16, Source::BFloat, nullptr};
      return std::nullopt;
    }
    case H5T_INTEGER: {
      const bool is_signed = H5Tget_sign(ftype) != H5T_SGN_NONE;
      if (size == 1 && attr_says(ds, "BOOL")) return Classified{DType::BOOL, Source::Bool, nullptr};
      if (is_signed) {
        if (size == 1) return Classified{DType::I8, Source::Plain, nullptr};
        if (size == 2) return Classified{DType::I16, Source::Plain, nullptr};
        if (size == 4) return Classified{DType::I32, Source::Plain, nullptr};
        if (size == 8) return Classified{DType::I64, Source::Plain, nullptr};
        return std::nullopt;
      }
      if (size == 1) return Classified{DType::U8, Source::Plain, nullptr};
      if (size == 2 && attr_says(ds, "BF16")) return Classified{DType::BF16, Source::Plain, nullptr};
      if (size == 2) return Classified{DType::I32, Source::Plain, "U16"};
      if (size == 4) return Classified{DType::I64, Source::Plain, "U32"};
      if (size == 8) return Classified{DType::I64, Source::U64, "U64"};
      return std::nullopt;
    }
    case H5T_ENUM:
      if (is_bool_enum(ftype)) return Classified{DType::BOOL, Source::Bool, nullptr};
      return std::nullopt;
    default:
      return std::nullopt;
  }
}

// The in-memory (little-endian host) type a tensor is read into.
h5::Handle memory_type(DType dtype, Source source, hid_t ftype) {
  switch (source) {
    case Source::Bool: return h5::Handle(H5Tget_native_type(ftype, H5T_DIR_ASCEND), H5Tclose);
    case Source::U64: return h5::Handle(H5T_NATIVE_UINT64, nullptr);
    case Source::BFloat: return h5::bfloat16_type();
    case Source::Plain: break;
  }
  switch (dtype) {
    case DType::F64: return h5::Handle(H5T_NATIVE_DOUBLE, nullptr);
    case DType::F32: return h5::Handle(H5T_NATIVE_FLOAT, nullptr);
    case DType::F16: return h5::half_type();
    case DType::BF16: return h5::Handle(H5T_NATIVE_UINT16, nullptr);  // bit patterns
    case DType::I64: return h5::Handle(H5T_NATIVE_INT64, nullptr);
    case DType::I32: return h5::Handle(H5T_NATIVE_INT32, nullptr);
    case DType::I16: return h5::Handle(H5T_NATIVE_INT16, nullptr);
    case DType::I8: return h5::Handle(H5T_NATIVE_INT8, nullptr);
    case DType::U8: return h5::Handle(H5T_NATIVE_UINT8, nullptr);
    default: throw Error(str("[hdf5] no memory type for ", dtype_name(dtype)));
  }
}

// Groups and attributes are always iterated in H5_ITER_NATIVE order: for any other order HDF5 1.10
// first builds a table of a dense group's links (or attributes), and when reading a damaged heap fails
// halfway it frees the table's uninitialized entries (a crash). We sort the result ourselves.
#if H5_VERSION_GE(1, 12, 0)
using ObjectInfo = H5O_info2_t;
#define MC_H5OVISIT(obj, cb, data) H5Ovisit3(obj, H5_INDEX_NAME, H5_ITER_NATIVE, cb, data, H5O_INFO_BASIC)
#else
using ObjectInfo = H5O_info_t;
#define MC_H5OVISIT(obj, cb, data) H5Ovisit2(obj, H5_INDEX_NAME, H5_ITER_NATIVE, cb, data, H5O_INFO_BASIC)
#endif

herr_t collect_dataset(hid_t, const char* name, const ObjectInfo* info, void* data) {
  if (info->type == H5O_TYPE_DATASET) static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  return 0;
}

herr_t collect_attr(hid_t loc, const char* name, const H5A_info_t*, void* data) {
  auto* out = static_cast<std::map<std::string, std::string>*>(data);
  h5::Handle attr(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
  if (attr.valid())
    if (auto v = h5::read_attr(attr)) (*out)[name] = h5::format_attr(*v);
  H5Eclear2(H5E_DEFAULT);
  return 0;
}

// Sorts dataset paths as HDF5's increasing iteration would list them, group by group: by creation
// order where the file tracks it (our files), else by name.
void sort_paths(hid_t file, std::vector<std::string>& paths) {
  // link path -> creation order; untracked links share one value so that names decide
  std::map<std::string, int64_t> corder;
  auto key = [&](const std::string& path) {
    std::vector<std::pair<int64_t, std::string>> k;
    for (size_t end = path.find('/');; end = path.find('/', end + 1)) {
      const std::string prefix = path.substr(0, end);
      auto it = corder.find(prefix);
      if (it == corder.end()) {
        H5L_info_t info{};
        const bool ok = H5Lget_info(file, prefix.c_str(), &info, H5P_DEFAULT) >= 0 && info.corder_valid;
        it = corder.emplace(prefix, ok ? info.corder : std::numeric_limits<int64_t>::max()).first;
      }
      const size_t start = prefix.rfind('/') == std::string::npos ? 0 : prefix.rfind('/') + 1;
      k.emplace_back(it->second, prefix.substr(start));
      if (end == std::string::npos) return k;
    }
  };
  std::vector<std::pair<std::vector<std::pair<int64_t, std::string>>, std::string>> keyed;
  for (auto& p : paths) keyed.emplace_back(key(p), std::move(p));
  H5Eclear2(H5E_DEFAULT);
  // Lexicographic over (creation order, name) per component: a strict weak order even for odd files.
  std::sort(keyed.begin(), keyed.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 0; i < paths.size(); ++i) paths[i] = std::move(keyed[i].second);
}

h5::Handle open_group(hid_t loc, const std::string& path) {
  h5::Handle g(H5Gopen2(loc, path.c_str(), H5P_DEFAULT), H5Gclose);
  H5Eclear2(H5E_DEFAULT);
  return g;
}

// Keras writes long string lists as "name0", "name1", ... when they do not fit one attribute.
std::vector<std::string> read_string_list(hid_t obj, const std::string& name) {
  if (auto v = h5::read_attr(obj, name.c_str())) return v->items;
  std::vector<std::string> out;
  for (int k = 0;; ++k) {
    auto v = h5::read_attr(obj, (name + std::to_string(k)).c_str());
    if (!v) return out;
    out.insert(out.end(), v->items.begin(), v->items.end());
  }
}

// Moves the datasets named by Keras layer_names/weight_names to the front, in that order.
void keras_order(hid_t file, std::vector<std::string>& paths) {
  std::vector<std::string> wanted;
  for (std::string base : {"", "model_weights"}) {
    h5::Handle group = open_group(file, base.empty() ? "/" : base);
    if (!group.valid()) continue;
    if (!base.empty()) base += "/";
    for (const std::string& layer : read_string_list(group, "layer_names")) {
      h5::Handle lg = open_group(group, layer);
      if (!lg.valid()) continue;
      for (const std::string& w : read_string_list(lg, "weight_names")) wanted.push_back(base + layer + "/" + w);
    }
  }
  if (wanted.empty()) return;
  std::unordered_map<std::string, size_t> rank;
  for (size_t i = 0; i < wanted.size(); ++i) rank.emplace(wanted[i], i);
  std::stable_sort(paths.begin(), paths.end(), [&](const std::string& a, const std::string& b) {
    auto ra = rank.find(a), rb = rank.find(b);
    size_t ka = ra == rank.end() ? wanted.size() : ra->second;
    size_t kb = rb == rank.end() ? wanted.size() : rb->second;
    return ka < kb;
  });
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

class Hdf5Reader final : public CheckpointReader {
 public:
  explicit Hdf5Reader(const std::string& path) : CheckpointReader(path) {}
  void open();
  std::string format() const override { return "hdf5"; }
  HostTensor load(const std::string& name) const override;

 private:
  struct Dataset {
    std::string path;  // in the file, without the leading '/'
    Source source;
  };
  void add_dataset(const std::string& path, bool ours);
  h5::Handle file_;
  std::vector<Dataset> datasets_;  // parallel to infos_
  uint64_t file_size_ = 0;
  std::vector<std::string> skipped_, widened_;
};

void Hdf5Reader::open() {
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0) file_size_ = static_cast<uint64_t>(st.st_size);
  h5::Handle fapl = h5::check(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, path_, "cannot create access properties");
  H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
#if H5_VERSION_GE(1, 10, 7)
  H5Pset_file_locking(fapl, true, true);  // lock, but do not fail on file systems without locks
#endif
  file_ = h5::check(H5Fopen(path_.c_str(), H5F_ACC_RDONLY, fapl), H5Fclose, path_,
                    "not a readable HDF5 file");

  auto format_attr = h5::read_attr(file_, kFormatAttr);
  const bool ours = format_attr && format_attr->items.size() == 1 && format_attr->items[0] == kOurFormat;
  H5Aiterate2(file_, H5_INDEX_NAME, H5_ITER_NATIVE, nullptr, collect_attr, &metadata_);
  if (ours) {
    metadata_.erase(kFormatAttr);
    metadata_.erase(kVersionAttr);
    if (h5::Handle meta = open_group(file_, "metadata"); meta.valid())
      H5Aiterate2(meta, H5_INDEX_NAME, H5_ITER_NATIVE, nullptr, collect_attr, &metadata_);
  }
  H5Eclear2(H5E_DEFAULT);

  std::vector<std::string> paths;
  h5::check(MC_H5OVISIT(file_, collect_dataset, &paths), path_, "cannot list the datasets");
  sort_paths(file_, paths);
  if (!ours) keras_order(file_, paths);
  for (const auto& p : paths) add_dataset(p, ours);
  if (!skipped_.empty()) metadata_["hdf5.skipped"] = join(skipped_);
  if (!widened_.empty()) metadata_["hdf5.widened"] = join(widened_);
}

void Hdf5Reader::add_dataset(const std::string& path, bool ours) {
  const std::string what = "dataset '" + path + "'";
  h5::Handle ds = h5::check(H5Dopen2(file_, ("/" + path).c_str(), H5P_DEFAULT), H5Dclose, path_, "cannot open " + what);
  h5::Handle ftype = h5::check(H5Dget_type(ds), H5Tclose, path_, "cannot read the type of " + what);
  h5::Handle space = h5::check(H5Dget_space(ds), H5Sclose, path_, "cannot read the shape of " + what);
  h5::Handle dcpl = h5::check(H5Dget_create_plist(ds), H5Pclose, path_, "cannot read the layout of " + what);
  const H5D_layout_t layout = H5Pget_layout(dcpl);
  auto cls = classify(ds, ftype);
  const H5S_class_t sclass = H5Sget_simple_extent_type(space);
  // Skip what is not a numeric array, and data kept in other files (external storage, virtual).
  if (!cls || sclass == H5S_NULL || layout == H5D_VIRTUAL || H5Pget_external_count(dcpl) != 0) {
    H5Eclear2(H5E_DEFAULT);
    skipped_.push_back(path);
    return;
  }
  const int rank = H5Sget_simple_extent_ndims(space);
  if (rank < 0 || rank > H5S_MAX_RANK) h5::raise(path_, "bad dataspace of " + what);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0) h5::check(H5Sget_simple_extent_dims(space, dims.data(), nullptr), path_, "bad dataspace of " + what);
  TensorInfo ti;
  const size_t prefix = std::char_traits<char>::length(kTensorsPrefix);
  ti.name = ours && path.compare(0, prefix, kTensorsPrefix) == 0 ? path.substr(prefix) : path;
  ti.dtype = cls->dtype;
  for (hsize_t d : dims) {
    if (d > static_cast<hsize_t>(std::numeric_limits<int64_t>::max()))
      fail("hdf5", path_, ": ", what, " has a dimension of ", d, " (too large)");
    ti.shape.push_back(static_cast<int64_t>(d));
  }
  try {
    if (auto nb = dtype_nbytes(ti.dtype, shape_numel(ti.shape))) ti.nbytes = *nb;
  } catch (const InputError&) {
  }  // add_tensor reports the overflow
  if (layout == H5D_CONTIGUOUS) {
    const haddr_t addr = H5Dget_offset(ds);
    const hsize_t stored = H5Dget_storage_size(ds);
    if (addr != HADDR_UNDEF && stored > 0) {
      if (addr > file_size_ || stored > file_size_ - addr)
        fail("hdf5", path_, ": ", what, " data [", addr, ", ", addr + stored, ") lies beyond the end of the file (",
             file_size_, " bytes)");
      h5::Handle mem = memory_type(ti.dtype, cls->source, ftype);
      if (H5Tequal(ftype, mem) > 0) ti.offset = addr;  // the stored bytes are the tensor's bytes
    }
  }
  H5Eclear2(H5E_DEFAULT);
  if (cls->widened_from) widened_.push_back(ti.name + ":" + cls->widened_from + "->" + dtype_name(ti.dtype));
  add_tensor(ti, "hdf5");
  datasets_.push_back({path, cls->source});
}

HostTensor Hdf5Reader::load(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const Dataset& d = datasets_[index_.at(name)];
  h5::silence_errors();
  const std::string what = "tensor '" + name + "'";
  h5::Handle ds =
      h5::check(H5Dopen2(file_, ("/" + d.path).c_str(), H5P_DEFAULT), H5Dclose, path_, "cannot open " + what);
  h5::Handle ftype = h5::check(H5Dget_type(ds), H5Tclose, path_, "cannot read the type of " + what);
  h5::Handle mem = memory_type(ti.dtype, d.source, ftype);
  if (!mem.valid() || H5Tget_size(mem) != static_cast<size_t>(dtype_info(ti.dtype).block_bytes))
    h5::raise(path_, "no memory type for " + what);
  std::vector<uint8_t> bytes;
  try {
    bytes.resize(ti.nbytes);
  } catch (const std::bad_alloc&) {
    fail("hdf5", path_, ": ", what, " needs ", ti.nbytes, " bytes: out of memory");
  }
  if (ti.nbytes > 0)
    h5::check(H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data()), path_, "cannot read " + what);
  if (d.source == Source::Bool) {
    for (auto& b : bytes) b = b != 0;
  } else if (d.source == Source::U64) {
    for (size_t i = 7; i < bytes.size(); i += 8)
      if (bytes[i] & 0x80)
        fail("hdf5", path_, ": ", what, " is uint64 with values above 2^63-1, which I64 cannot hold");
  }
  return HostTensor::owned(name, ti.dtype, ti.shape, std::move(bytes));
}

}  // namespace

std::unique_ptr<CheckpointReader> open_hdf5(const std::string& path) {
  h5::silence_errors();
  auto reader = std::make_unique<Hdf5Reader>(path);
  reader->open();
  return reader;
}

}  // namespace mc
