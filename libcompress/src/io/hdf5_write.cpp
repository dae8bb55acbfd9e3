// HDF5 checkpoint writer (the reader is in hdf5.cpp).
//
// Our layout (keras_style = false):
//   /                 attributes mcompress.format = "mcompress-hdf5", mcompress.version = 1 (int64)
//   /metadata         group with one UTF-8 string attribute per metadata key
//   /tensors/<name>   one contiguous dataset per tensor with attribute dtype = our dtype name
//                     (a '/' in a name makes subgroups; reading back gives the same name)
// Keras style (keras_style = true), the layout of Keras 2 Model.save_weights:
//   /                 attributes layer_names (fixed-length byte strings), backend, keras_version, and
//                     the other metadata keys as UTF-8 string attributes
//   /<layer>          group with attribute weight_names = ["<layer>/<leaf>", ...]
//   /<layer>/<layer>/<leaf>   the datasets (attribute dtype as above)
//   A tensor "a.b.c" belongs to layer "a.b" with leaf "c"; a name without '.' is its own layer and
//   leaf ("scale" -> /scale/scale/scale). Layers appear in the order of their first tensor. Reading
//   such a file back names tensors by path ("fc1.weight" -> "fc1/fc1/weight"); values and dtypes
//   round trip bit-exactly, dotted names do not.
// Element types: F64/F32 IEEE little-endian; F16 the IEEE half type h5py reads as float16; signed
// ints and uint8 little-endian; BOOL h5py's bool (enum int8 {FALSE = 0, TRUE = 1}); BF16 uint16 bit
// patterns with dtype = "BF16". Block-quantized dtypes cannot be stored. Metadata keys starting with
// "hdf5." (annotations from reading an HDF5 file) are not written.
#include <algorithm>
#include <set>

#include "io/hdf5_util.h"
#include "mcompress/atomic_file.h"
#include "mcompress/io/hdf5.h"

namespace mc {

namespace {

constexpr size_t kMaxAttrBytes = 64512;  // HDF5 object header limit; Keras splits larger lists too
constexpr unsigned kMaxCompactLinks = 64;  // HDF5's default is 8

struct Ctx {
  const std::string& path;  // the output path, for messages
  h5::Handle gcpl, dcpl;
  std::set<std::string> groups;  // groups created so far
};

h5::Handle file_type(DType t, const std::string& path) {
  switch (t) {
    case DType::F64: return h5::Handle(H5T_IEEE_F64LE, nullptr);
    case DType::F32: return h5::Handle(H5T_IEEE_F32LE, nullptr);
    case DType::F16: return h5::half_type();
    case DType::BF16: return h5::Handle(H5T_STD_U16LE, nullptr);
    case DType::I64: return h5::Handle(H5T_STD_I64LE, nullptr);
    case DType::I32: return h5::Handle(H5T_STD_I32LE, nullptr);
    case DType::I16: return h5::Handle(H5T_STD_I16LE, nullptr);
    case DType::I8: return h5::Handle(H5T_STD_I8LE, nullptr);
    case DType::U8: return h5::Handle(H5T_STD_U8LE, nullptr);
    case DType::BOOL: {
      h5::Handle e = h5::check(H5Tenum_create(H5T_NATIVE_INT8), H5Tclose, path, "cannot create the bool type");
      const int8_t no = 0, yes = 1;
      h5::check(H5Tenum_insert(e, "FALSE", &no), path, "cannot create the bool type");
      h5::check(H5Tenum_insert(e, "TRUE", &yes), path, "cannot create the bool type");
      return e;
    }
    default: fail("hdf5", path, ": no HDF5 type for ", dtype_name(t));
  }
}

// Fixed-length, NUL-padded byte strings, as numpy 'S' arrays are stored: a scalar when `scalar`,
// else a 1-d array. All strings we write are fixed-length: variable-length ones live in the global
// heap, whose reader in HDF5 1.10 trusts object sizes and crashes on damaged files.
void write_fixed_strings(hid_t obj, const std::string& name, const std::vector<std::string>& items, bool scalar,
                         const std::string& path, H5T_cset_t cset = H5T_CSET_ASCII) {
  const std::string what = "cannot write attribute '" + name + "'";
  size_t width = 1;
  for (const auto& s : items) width = std::max(width, s.size());
  std::vector<char> buf(std::max<size_t>(1, items.size()) * width, '\0');
  for (size_t i = 0; i < items.size(); ++i) std::copy(items[i].begin(), items[i].end(), buf.begin() + i * width);
  h5::Handle type = h5::check(H5Tcopy(H5T_C_S1), H5Tclose, path, what);
  h5::check(H5Tset_size(type, width), path, what);
  h5::check(H5Tset_strpad(type, H5T_STR_NULLPAD), path, what);
  h5::check(H5Tset_cset(type, cset), path, what);
  const hsize_t n = items.size();
  h5::Handle space = h5::check(scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, nullptr), H5Sclose, path, what);
  h5::Handle attr =
      h5::check(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose, path, what);
  h5::check(H5Awrite(attr, type, buf.data()), path, what);
}

// A list too long for one attribute goes to name0, name1, ... (what Keras does and reads back).
void write_string(hid_t obj, const std::string& name, const std::string& value, const std::string& path) {
  write_fixed_strings(obj, name, {value}, true, path, H5T_CSET_UTF8);
}

void write_string_list(hid_t obj, const std::string& name, const std::vector<std::string>& items,
                       const std::string& path) {
  size_t width = 1;
  for (const auto& s : items) width = std::max(width, s.size());
  size_t chunks = 1;
  while ((items.size() + chunks - 1) / chunks * width > kMaxAttrBytes && chunks < items.size()) ++chunks;
  if (chunks == 1) return write_fixed_strings(obj, name, items, false, path);
  const size_t per = (items.size() + chunks - 1) / chunks;
  for (size_t k = 0; k * per < items.size(); ++k) {
    std::vector<std::string> part(items.begin() + k * per, items.begin() + std::min(items.size(), (k + 1) * per));
    write_fixed_strings(obj, name + std::to_string(k), part, false, path);
  }
}

// Creates the group at absolute path `group` and its missing parents, tracking creation order.
void ensure_group(hid_t file, Ctx& ctx, const std::string& group) {
  if (group.empty() || ctx.groups.count(group)) return;
  const size_t slash = group.rfind('/');
  if (slash != std::string::npos && slash > 0) ensure_group(file, ctx, group.substr(0, slash));
  h5::check(H5Gcreate2(file, group.c_str(), H5P_DEFAULT, ctx.gcpl, H5P_DEFAULT), H5Gclose, ctx.path,
            "cannot create group '" + group + "'");
  ctx.groups.insert(group);
}

void write_dataset(hid_t file, Ctx& ctx, const std::string& dpath, const HostTensor& t) {
  const std::string what = "cannot write tensor '" + t.name + "' as '" + dpath + "'";
  ensure_group(file, ctx, dpath.substr(0, dpath.rfind('/')));
  h5::Handle type = file_type(t.dtype, ctx.path);
  std::vector<hsize_t> dims(t.shape.begin(), t.shape.end());
  h5::Handle space = h5::check(dims.empty() ? H5Screate(H5S_SCALAR)
                                            : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                               H5Sclose, ctx.path, what);
  h5::Handle ds = h5::check(H5Dcreate2(file, dpath.c_str(), type, space, H5P_DEFAULT, ctx.dcpl, H5P_DEFAULT),
                            H5Dclose, ctx.path, what);
  const uint8_t* data = t.data;
  std::vector<uint8_t> bools;
  if (t.dtype == DType::BOOL && std::any_of(t.data, t.data + t.nbytes, [](uint8_t b) { return b > 1; })) {
    bools.assign(t.data, t.data + t.nbytes);
    for (auto& b : bools) b = b != 0;
    data = bools.data();
  }
  if (t.nbytes > 0) h5::check(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), ctx.path, what);
  write_string(ds, "dtype", dtype_name(t.dtype), ctx.path);
}

// Rejects names HDF5 would read differently: empty path components, "." components.
void check_name(const std::string& name, const std::string& path) {
  size_t start = 0;
  while (true) {
    size_t end = name.find('/', start);
    std::string part = name.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (part.empty() || part == ".")
      fail("hdf5", path, ": tensor name '", name, "' cannot be an HDF5 path (empty or '.' component between '/')");
    if (end == std::string::npos) return;
    start = end + 1;
  }
}

bool is_annotation(const std::string& key) { return key.rfind("hdf5.", 0) == 0; }

void write_ours(hid_t file, Ctx& ctx, const std::vector<HostTensor>& tensors,
                const std::map<std::string, std::string>& metadata) {
  write_string(file, "mcompress.format", "mcompress-hdf5", ctx.path);
  h5::Handle space = h5::check(H5Screate(H5S_SCALAR), H5Sclose, ctx.path, "cannot write the version");
  h5::Handle ver = h5::check(H5Acreate2(file, "mcompress.version", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT),
                             H5Aclose, ctx.path, "cannot write the version");
  const int64_t one = 1;
  h5::check(H5Awrite(ver, H5T_NATIVE_INT64, &one), ctx.path, "cannot write the version");
  // Dense attribute storage: values larger than an object header (64 KiB) fit.
  h5::Handle dense = h5::check(H5Pcopy(ctx.gcpl), H5Pclose, ctx.path, "cannot set properties");
  h5::check(H5Pset_attr_phase_change(dense, 0, 0), ctx.path, "cannot set properties");
  h5::Handle meta = h5::check(H5Gcreate2(file, "/metadata", H5P_DEFAULT, dense, H5P_DEFAULT), H5Gclose, ctx.path,
                              "cannot create group /metadata");
  for (const auto& [k, v] : metadata)
    if (!is_annotation(k)) write_string(meta, k, v, ctx.path);
  ensure_group(file, ctx, "/tensors");
  for (const auto& t : tensors) write_dataset(file, ctx, "/tensors/" + t.name, t);
}

void write_keras(hid_t file, Ctx& ctx, const std::vector<HostTensor>& tensors,
                 const std::map<std::string, std::string>& metadata) {
  std::vector<std::string> layers;
  std::map<std::string, std::vector<std::string>> weights;  // layer -> weight_names
  std::vector<std::string> dpaths;
  for (const auto& t : tensors) {
    const size_t dot = t.name.rfind('.');
    const std::string layer = dot == std::string::npos ? t.name : t.name.substr(0, dot);
    const std::string leaf = dot == std::string::npos ? t.name : t.name.substr(dot + 1);
    check_name(layer, ctx.path);
    check_name(leaf, ctx.path);
    if (!weights.count(layer)) layers.push_back(layer);
    weights[layer].push_back(layer + "/" + leaf);
    dpaths.push_back("/" + layer + "/" + layer + "/" + leaf);
  }
  std::set<std::string> seen;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (!seen.insert(dpaths[i]).second)
      fail("hdf5", ctx.path, ": two tensors map to the Keras dataset '", dpaths[i], "' (the second is '",
           tensors[i].name, "'); write the plain hdf5 layout instead");
  write_string_list(file, "layer_names", layers, ctx.path);
  auto get = [&](const char* key, const char* dflt) {
    auto it = metadata.find(key);
    return it == metadata.end() ? std::string(dflt) : it->second;
  };
  write_fixed_strings(file, "backend", {get("backend", "tensorflow")}, true, ctx.path);
  write_fixed_strings(file, "keras_version", {get("keras_version", "2.11.0")}, true, ctx.path);
  for (const auto& [k, v] : metadata)
    if (!is_annotation(k) && k != "backend" && k != "keras_version" && k.rfind("layer_names", 0) != 0)
      write_string(file, k, v, ctx.path);
  for (const auto& layer : layers) {
    ensure_group(file, ctx, "/" + layer);
    h5::Handle g = h5::check(H5Gopen2(file, ("/" + layer).c_str(), H5P_DEFAULT), H5Gclose, ctx.path,
                             "cannot open group '" + layer + "'");
    write_string_list(g, "weight_names", weights[layer], ctx.path);
  }
  for (size_t i = 0; i < tensors.size(); ++i) write_dataset(file, ctx, dpaths[i], tensors[i]);
}

}  // namespace

void write_hdf5(const std::string& path, const std::vector<HostTensor>& tensors,
                const std::map<std::string, std::string>& metadata, bool keras_style) {
  h5::silence_errors();
  std::set<std::string> names;
  for (const auto& t : tensors) {
    if (is_block(t.dtype))
      fail("hdf5", path, ": tensor '", t.name, "' is ", dtype_name(t.dtype),
           " (block-quantized), which HDF5 output cannot store; convert it to F16 or F32 first");
    auto expect = dtype_nbytes(t.dtype, t.numel());
    if (!expect || *expect != t.nbytes || (t.nbytes > 0 && !t.data))
      fail("hdf5", path, ": tensor '", t.name, "' ", dtype_name(t.dtype), " ", shape_str(t.shape), " has ", t.nbytes,
           " bytes of data");
    if (!names.insert(t.name).second) fail("hdf5", path, ": duplicate tensor name '", t.name, "'");
    if (!keras_style) check_name(t.name, path);
  }
  AtomicFile out(path, "hdf5");
  {
    h5::Handle fcpl = h5::check(H5Pcreate(H5P_FILE_CREATE), H5Pclose, path, "cannot create properties");
    h5::check(H5Pset_link_creation_order(fcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED), path,
              "cannot set properties");
    h5::check(H5Pset_attr_phase_change(fcpl, 0, 0), path, "cannot set properties");  // large root attributes
    h5::check(H5Pset_obj_track_times(fcpl, false), path, "cannot set properties");
    h5::check(H5Pset_link_phase_change(fcpl, kMaxCompactLinks, kMaxCompactLinks), path, "cannot set properties");
    h5::Handle fapl = h5::check(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, path, "cannot create properties");
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    // The 1.8 file format (readable by HDF5 >= 1.8, h5py, Keras): needed for attributes over 64 KiB.
    h5::check(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18), path, "cannot set properties");
#if H5_VERSION_GE(1, 10, 7)
    H5Pset_file_locking(fapl, true, true);
#endif
    Ctx ctx{path, h5::check(H5Pcreate(H5P_GROUP_CREATE), H5Pclose, path, "cannot create properties"),
            h5::check(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, path, "cannot create properties"), {}};
    h5::check(H5Pset_link_creation_order(ctx.gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED), path,
              "cannot set properties");
    // Links stay in the group's object header, which carries a checksum, up to kMaxCompactLinks
    // (damage is then detected, not read as garbage names); bigger groups go dense (a fractal heap)
    // because compact ones get slow to build.
    h5::check(H5Pset_link_phase_change(ctx.gcpl, kMaxCompactLinks, kMaxCompactLinks), path,
              "cannot set properties");
    // No timestamps in object headers (root group included): the same tensors give the same bytes.
    h5::check(H5Pset_obj_track_times(ctx.gcpl, false), path, "cannot set properties");
    h5::check(H5Pset_obj_track_times(ctx.dcpl, false), path, "cannot set properties");
    h5::check(H5Pset_layout(ctx.dcpl, H5D_CONTIGUOUS), path, "cannot set properties");
    h5::Handle file = h5::check(H5Fcreate(out.temp_path().c_str(), H5F_ACC_TRUNC, fcpl, fapl), H5Fclose, path,
                                "cannot create output");
    if (keras_style)
      write_keras(file, ctx, tensors, metadata);
    else
      write_ours(file, ctx, tensors, metadata);
    if (!file.close()) h5::raise(path, "cannot finish writing");
  }
  out.commit();
}

}  // namespace mc
