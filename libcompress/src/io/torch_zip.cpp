// PyTorch zip checkpoints: <dir>/data.pkl (a pickle whose tensors are _rebuild_tensor_v2 calls on
// persistent-id storages), <dir>/data/<key> (raw little-endian storages), <dir>/version, and
// optionally <dir>/byteorder. See zip_archive.h and pickle.h for the two layers underneath.
#include "mcompress/io/torch_zip.h"

#include <charconv>
#include <cstring>
#include <limits>
#include <optional>

#include "io/pickle.h"
#include "io/torch_zip_format.h"
#include "io/zip_archive.h"
#include "mcompress/error.h"
#include "mcompress/mapped_file.h"

namespace mc {

namespace {
using pickle::Kind;
using pickle::printable;
using pickle::Unpickler;
using pickle::Value;
using namespace torch_zip;

constexpr int kMaxDepth = 64;           // dict/list nesting; deeper means a self-referencing structure
constexpr size_t kMaxDims = 64;         // tensor rank
constexpr size_t kMaxNameBytes = 16384; // one flattened name
// A non-contiguous tensor is copied out on load(). A stride-0 view can describe a huge tensor on a few
// bytes of storage, so copies are bounded by the input: at most this many times the file size.
constexpr uint64_t kMaxExpansion = 64;

enum GlobalId { kOrderedDict, kRebuildTensorV2, kRebuildParameter, kRebuildParameterWithState, kFirstStorage };
enum ObjectTag { kStorageTag = 1, kTensorTag = 2 };

struct Storage {
  DType dtype;
  const uint8_t* data;
  uint64_t numel;
};
struct TensorRec {
  uint32_t storage;
  int64_t offset;
  Shape shape, stride;
};

// The globals, REDUCE calls and persistent ids a state_dict needs; everything else is refused.
class StateDictPolicy : public pickle::Policy {
 public:
  StateDictPolicy(const zip::Reader& zip, std::string prefix) : zip_(zip), prefix_(std::move(prefix)) {}
  std::vector<Storage> storages;
  std::vector<TensorRec> tensors;

  int resolve_global(const std::string& module, const std::string& name) override {
    if (module == "collections" && name == "OrderedDict") return kOrderedDict;
    if (module == "torch._utils" && name == "_rebuild_tensor_v2") return kRebuildTensorV2;
    if (module == "torch._utils" && name == "_rebuild_parameter") return kRebuildParameter;
    if (module == "torch._utils" && name == "_rebuild_parameter_with_state") return kRebuildParameterWithState;
    if (module == "torch")
      for (size_t k = 0; k < std::size(kStorageTypes); ++k)
        if (name == kStorageTypes[k].name) return kFirstStorage + static_cast<int>(k);
    return -1;
  }
  std::string allowed_globals() const override {
    std::string s = "collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, "
                    "torch._utils._rebuild_parameter_with_state";
    for (const auto& st : kStorageTypes) s += str(", torch.", st.name);
    return s;
  }

  Value call(Unpickler& u, int id, uint32_t args_index) override {
    const std::vector<uint32_t> args = u.at(args_index).items;
    auto need_args = [&](size_t lo, size_t hi, const char* fn) {
      if (args.size() < lo || args.size() > hi)
        u.error(str(fn, " takes ", lo == hi ? str(lo) : str(lo, " or ", hi), " arguments, got ", args.size()));
    };
    Value v;
    switch (id) {
      case kOrderedDict:
        need_args(0, 0, "OrderedDict");
        v.kind = Kind::Dict;
        return v;
      case kRebuildParameter:
      case kRebuildParameterWithState:
        need_args(id == kRebuildParameter ? 3 : 4, id == kRebuildParameter ? 3 : 4, "_rebuild_parameter");
        if (!is_object(u, args[0], kTensorTag))
          u.error(str("_rebuild_parameter needs a tensor, got a ", kind_name(u.at(args[0]).kind)));
        return u.at(args[0]);
      case kRebuildTensorV2:
        need_args(6, 7, "_rebuild_tensor_v2");
        return rebuild_tensor(u, args);
      default:
        u.error(str("torch.", kStorageTypes[id - kFirstStorage].name, " is a storage type; it cannot be called"));
    }
  }

  Value persistent_load(Unpickler& u, uint32_t pid_index) override {
    const Value& pid = u.at(pid_index);
    if (pid.kind != Kind::Tuple || pid.items.size() != 5)
      u.error(str("persistent id must be ('storage', StorageType, key, location, numel), got a ",
                  kind_name(pid.kind), " of ", pid.items.size(), " items"));
    const Value &tag = u.at(pid.items[0]), &type = u.at(pid.items[1]), &key = u.at(pid.items[2]);
    if (tag.kind != Kind::String || tag.s != "storage") u.error("persistent id does not start with 'storage'");
    if (type.kind != Kind::Global || type.tag < kFirstStorage)
      u.error(str("persistent id names ", type.kind == Kind::Global ? printable(type.s) : kind_name(type.kind),
                  ", expected a torch.*Storage type"));
    if (key.kind != Kind::String) u.error(str("storage key is a ", kind_name(key.kind), ", expected a str"));
    const int64_t numel = int_value(u, pid.items[4], "storage numel");
    const DType dtype = kStorageTypes[type.tag - kFirstStorage].dtype;
    if (numel < 0) u.error(str("storage numel ", numel, " is negative"));
    const std::string entry_name = prefix_ + "data/" + key.s;
    const zip::Entry* e = zip_.find(entry_name);
    if (!e) u.error_plain(str("storage '", printable(entry_name), "' named by data.pkl is not in the archive"));
    const uint64_t elem = static_cast<uint64_t>(dtype_info(dtype).block_bytes);
    if (static_cast<uint64_t>(numel) > e->size / elem)
      u.error_plain(str("storage '", printable(entry_name), "' holds ", e->size, " bytes, too few for ", numel, " ",
                        dtype_name(dtype), " elements"));
    storages.push_back({dtype, zip_.data(*e), static_cast<uint64_t>(numel)});
    Value v;
    v.kind = Kind::Object;
    v.tag = kStorageTag;
    v.i = static_cast<int64_t>(storages.size() - 1);
    return v;
  }

  static bool is_object(const Unpickler& u, uint32_t i, int tag) {
    return u.at(i).kind == Kind::Object && u.at(i).tag == tag;
  }
  static int64_t int_value(Unpickler& u, uint32_t i, const char* what) {
    const Value& v = u.at(i);
    if (v.kind != Kind::Int && v.kind != Kind::Bool)
      u.error(str(what, " is a ", kind_name(v.kind), ", expected an int"));
    return v.i;
  }

 private:
  Shape int_tuple(Unpickler& u, uint32_t i, const char* what) {
    const Value& v = u.at(i);
    if (v.kind != Kind::Tuple && v.kind != Kind::List)
      u.error(str("_rebuild_tensor_v2 ", what, " is a ", kind_name(v.kind), ", expected a tuple of ints"));
    if (v.items.size() > kMaxDims) u.error(str("tensor ", what, " has ", v.items.size(), " dims (at most ", kMaxDims, ")"));
    Shape out;
    for (uint32_t item : v.items) {
      out.push_back(int_value(u, item, what));
      if (out.back() < 0) u.error(str("tensor ", what, " ", shape_str(out), "... has a negative entry"));
    }
    return out;
  }

  Value rebuild_tensor(Unpickler& u, const std::vector<uint32_t>& args) {
    if (!is_object(u, args[0], kStorageTag))
      u.error(str("_rebuild_tensor_v2 needs a storage first, got a ", kind_name(u.at(args[0]).kind)));
    TensorRec t;
    t.storage = static_cast<uint32_t>(u.at(args[0]).i);
    t.offset = int_value(u, args[1], "storage offset");
    t.shape = int_tuple(u, args[2], "size");
    t.stride = int_tuple(u, args[3], "stride");
    const Storage& s = storages[t.storage];
    if (t.offset < 0) u.error(str("negative storage offset ", t.offset));
    if (t.stride.size() != t.shape.size())
      u.error(str("tensor size ", shape_str(t.shape), " and stride ", shape_str(t.stride), " differ in rank"));
    // Highest element index the view touches, with overflow checks; must lie inside the storage.
    int64_t last = t.offset;
    bool empty = false;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] == 0) empty = true;
      int64_t span = 0;
      if (t.shape[d] > 0 && (__builtin_mul_overflow(t.shape[d] - 1, t.stride[d], &span) ||
                             __builtin_add_overflow(last, span, &last)))
        u.error(str("tensor size ", shape_str(t.shape), " with stride ", shape_str(t.stride), " overflows"));
    }
    if (empty ? static_cast<uint64_t>(t.offset) > s.numel : static_cast<uint64_t>(last) >= s.numel)
      u.error_plain(str("tensor ", dtype_name(s.dtype), " ", shape_str(t.shape), " at storage offset ", t.offset,
                        " with stride ", shape_str(t.stride), " reaches element ", last, " of a storage of ",
                        s.numel, " elements"));
    tensors.push_back(std::move(t));
    Value v;
    v.kind = Kind::Object;
    v.tag = kTensorTag;
    v.i = static_cast<int64_t>(tensors.size() - 1);
    return v;
  }

  const zip::Reader& zip_;
  std::string prefix_;
};

// mcompress_metadata.pkl holds only strings: no globals, no persistent ids.
class PlainDataPolicy : public pickle::Policy {
 public:
  int resolve_global(const std::string&, const std::string&) override { return -1; }
  std::string allowed_globals() const override { return "none"; }
  Value call(Unpickler& u, int, uint32_t) override { u.error("REDUCE is not allowed here"); }
  Value persistent_load(Unpickler& u, uint32_t) override { u.error("persistent ids are not allowed here"); }
};

std::string scalar_text(const Value& v) {
  switch (v.kind) {
    case Kind::Bool: return v.i ? "True" : "False";
    case Kind::Int: return std::to_string(v.i);
    case Kind::Float: {
      char buf[64];
      auto r = std::to_chars(buf, buf + sizeof buf, v.f);
      std::string s(buf, r.ptr);
      if (s.find_first_of(".en") == std::string::npos) s += ".0";  // Python's repr: 5.0, 1e+16, inf, nan
      return s;
    }
    default: return v.s;  // String, BigInt
  }
}

bool contiguous(const Shape& shape, const Shape& stride) {
  int64_t expect = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] == 0) return true;
    if (shape[d] != 1 && stride[d] != expect) return false;
    expect *= shape[d];
  }
  return true;
}

class TorchZipReader final : public CheckpointReader {
 public:
  explicit TorchZipReader(const std::string& path) : CheckpointReader(path) {
    file_ = MappedFile::open(path, kComponent);
    zip::Reader zip(file_->data(), file_->size(), kComponent, path);
    const std::string prefix = find_prefix(zip);
    check_byteorder(zip, prefix);

    const zip::Entry& pkl = *zip.find(prefix + "data.pkl");
    StateDictPolicy policy(zip, prefix);
    Unpickler u(zip.data(pkl), pkl.size, kComponent, path, prefix + "data.pkl", policy);
    const uint32_t root = u.load();
    visit_budget_ = pkl.size + 16;  // a tree has fewer nodes than its pickle has bytes
    name_budget_ = 16 * pkl.size + (1u << 20);
    flatten(u, policy, root, "", 0);

    if (const zip::Entry* m = zip.find(prefix + kMetadataEntry)) read_metadata(zip, *m, prefix);
  }

  std::string format() const override { return "torch"; }

  HostTensor load(const std::string& name) const override {
    const TensorInfo& ti = info(name);
    const Layout& l = layouts_[index_.at(name)];
    const uint64_t es = static_cast<uint64_t>(dtype_info(ti.dtype).block_bytes);
    if (l.contiguous || ti.nbytes == 0)
      return HostTensor::view(ti.name, ti.dtype, ti.shape, l.base + static_cast<uint64_t>(l.offset) * es, ti.nbytes,
                              file_);
    // Copy a strided view out element by element (an odometer over the dims); bounds were checked on open.
    std::vector<uint8_t> out(ti.nbytes);
    const size_t nd = ti.shape.size();
    int64_t idx[kMaxDims] = {};  // rank <= kMaxDims was checked on open
    int64_t src = l.offset;
    const int64_t numel = shape_numel(ti.shape);
    for (int64_t n = 0; n < numel; ++n) {
      std::memcpy(out.data() + static_cast<uint64_t>(n) * es, l.base + static_cast<uint64_t>(src) * es, es);
      for (size_t d = nd; d-- > 0;) {
        if (++idx[d] < ti.shape[d]) {
          src += l.stride[d];
          break;
        }
        src -= l.stride[d] * (ti.shape[d] - 1);
        idx[d] = 0;
      }
    }
    return HostTensor::owned(ti.name, ti.dtype, ti.shape, std::move(out));
  }

 private:
  struct Layout {
    const uint8_t* base;
    int64_t offset;
    Shape stride;
    bool contiguous;
  };

  std::string find_prefix(const zip::Reader& zip) const {
    std::string prefix;
    int found = 0;
    for (const zip::Entry& e : zip.entries()) {
      const std::string& n = e.name;
      if (n.size() < 8 || n.compare(n.size() - 8, 8, "data.pkl") != 0) continue;
      std::string dir = n.substr(0, n.size() - 8);
      if (!dir.empty() && (dir.back() != '/' || dir.find('/') != dir.size() - 1)) continue;
      prefix = dir;
      ++found;
    }
    if (found > 1) fail(kComponent, path_, ": the archive holds ", found, " <dir>/data.pkl entries, expected one");
    if (found == 0)
      fail(kComponent, path_, ": no <dir>/data.pkl entry: not a torch.save checkpoint");
    if (zip.find(prefix + "constants.pkl"))
      fail(kComponent, path_, ": this is a TorchScript archive (torch.jit.save); load it in Python and "
           "torch.save(model.state_dict()) instead");
    return prefix;
  }

  void check_byteorder(const zip::Reader& zip, const std::string& prefix) const {
    const zip::Entry* e = zip.find(prefix + "byteorder");
    if (!e) return;  // written by torch >= 2.0; older files are little-endian
    std::string order(reinterpret_cast<const char*>(zip.data(*e)), e->size);
    while (!order.empty() && (order.back() == '\n' || order.back() == '\r' || order.back() == ' ')) order.pop_back();
    if (order == "little") return;
    if (order == "big") fail(kComponent, path_, ": stores big-endian data (byteorder 'big'); only little-endian is supported");
    fail(kComponent, path_, ": unknown byteorder record (expected 'little')");
  }

  void flatten(const Unpickler& u, const StateDictPolicy& p, uint32_t v, const std::string& name, int depth) {
    if (depth > kMaxDepth)
      fail(kComponent, path_, ": data.pkl nests deeper than ", kMaxDepth, " levels at '", printable(name),
           "' (a self-referencing structure?)");
    if (visit_budget_-- == 0)
      fail(kComponent, path_, ": data.pkl refers to shared or self-referencing sub-objects more often than it has bytes");
    const Value& val = u.at(v);
    auto spend = [&](uint64_t n) {
      if (n > name_budget_) fail(kComponent, path_, ": data.pkl expands into names longer than it can hold");
      name_budget_ -= n;
    };
    auto child = [&](const std::string& key) {
      std::string n = name.empty() ? key : name + "." + key;
      if (n.size() > kMaxNameBytes) fail(kComponent, path_, ": a flattened name exceeds ", kMaxNameBytes, " bytes");
      spend(n.size());
      return n;
    };
    switch (val.kind) {
      case Kind::Dict:
        for (size_t k = 0; k + 1 < val.items.size(); k += 2) {
          const Value& key = u.at(val.items[k]);
          if (key.kind != Kind::String && key.kind != Kind::Bytes && key.kind != Kind::Int && key.kind != Kind::Bool)
            fail(kComponent, path_, ": dict key of type ", kind_name(key.kind), " under '", printable(name), "'");
          flatten(u, p, val.items[k + 1], child(scalar_text(key)), depth + 1);
        }
        break;
      case Kind::List:
      case Kind::Tuple:
        for (size_t k = 0; k < val.items.size(); ++k) flatten(u, p, val.items[k], child(std::to_string(k)), depth + 1);
        break;
      case Kind::Bool: case Kind::Int: case Kind::BigInt: case Kind::Float: case Kind::String:
        if (!name.empty()) {
          std::string text = scalar_text(val);
          spend(text.size());
          metadata_[name] = std::move(text);
        }
        break;
      case Kind::Object:
        if (val.tag == kTensorTag) add(p, p.tensors[static_cast<size_t>(val.i)], name.empty() ? "tensor" : name);
        break;
      default: break;  // None, bytes, sets, bare storages and globals carry no tensors
    }
  }

  void add(const StateDictPolicy& p, const TensorRec& t, const std::string& name) {
    const Storage& s = p.storages[t.storage];
    const uint64_t es = static_cast<uint64_t>(dtype_info(s.dtype).block_bytes);
    TensorInfo ti;
    ti.name = name;
    ti.dtype = s.dtype;
    ti.shape = t.shape;
    const bool contig = contiguous(t.shape, t.stride);
    int64_t numel = 1;  // stride-0 views can describe more elements than the storage has: check overflow
    bool overflow = false;
    for (int64_t d : t.shape) overflow = overflow || __builtin_mul_overflow(numel, d, &numel);
    const auto nbytes = overflow ? std::nullopt : dtype_nbytes(s.dtype, numel);
    if (!nbytes) fail(kComponent, path_, ": tensor '", printable(name), "' shape ", shape_str(t.shape), " overflows");
    ti.nbytes = *nbytes;
    if (!contig && ti.nbytes / kMaxExpansion > file_->size())
      fail(kComponent, path_, ": tensor '", printable(name), "' ", shape_str(t.shape), " with stride ", shape_str(t.stride),
           " would expand into ", ti.nbytes, " bytes, more than ", kMaxExpansion, "x the file; save it .contiguous()");
    ti.offset = contig ? static_cast<uint64_t>(s.data - file_->data()) + static_cast<uint64_t>(t.offset) * es : 0;
    add_tensor(std::move(ti), kComponent);
    layouts_.push_back({s.data, t.offset, t.stride, contig});
  }

  void read_metadata(const zip::Reader& zip, const zip::Entry& e, const std::string& prefix) {
    PlainDataPolicy policy;
    Unpickler u(zip.data(e), e.size, kComponent, path_, prefix + kMetadataEntry, policy);
    const Value& root = u.at(u.load());
    if (root.kind != Kind::Dict) fail(kComponent, path_, ": ", kMetadataEntry, " is not a dict");
    for (size_t k = 0; k + 1 < root.items.size(); k += 2) {
      const Value &key = u.at(root.items[k]), &val = u.at(root.items[k + 1]);
      if (key.kind == Kind::String && (val.kind == Kind::String || val.kind == Kind::Int || val.kind == Kind::Float))
        metadata_[key.s] = scalar_text(val);
    }
  }

  std::shared_ptr<const MappedFile> file_;
  std::vector<Layout> layouts_;  // parallel to infos_
  uint64_t visit_budget_ = 0, name_budget_ = 0;
};

}  // namespace

std::unique_ptr<CheckpointReader> open_torch_zip(const std::string& path) {
  return std::make_unique<TorchZipReader>(path);
}

}  // namespace mc
