// A restricted unpickler and a minimal protocol-2 pickler, for PyTorch checkpoints.
//
// Unpickler: interprets the opcodes torch.save and Python's pickler emit for plain data (protocols
// 0-5 binary opcodes: containers, ints, floats, strings, memo, MARK) but never executes anything:
// GLOBAL/STACK_GLOBAL names are resolved by a Policy that either maps them to an id or refuses them,
// REDUCE calls Policy::call with that id, BINPERSID calls Policy::persistent_load. Opcodes that
// construct arbitrary objects (INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT1/2/4) and the text-protocol ones
// are refused. Values live in an arena and refer to each other by index, so self-referencing
// structures cannot leak and the arena's size is bounded by the pickle's length (every value costs at
// least one opcode byte). Every malformed input throws mc::InputError.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace mc::pickle {

enum class Kind : uint8_t {
  None, Bool, Int, BigInt, Float, String, Bytes, Tuple, List, Dict, Set, Global, Object,
};
const char* kind_name(Kind k);
// Escapes control and non-ASCII bytes and shortens, so names from a hostile file stay one printable line.
std::string printable(const std::string& s);

struct Value {
  Kind kind = Kind::None;
  int32_t tag = 0;              // Global: id from Policy::resolve_global; Object: Policy-defined type tag
  int64_t i = 0;                // Bool, Int; Object: Policy-defined handle
  double f = 0;                 // Float
  std::string s;                // String/Bytes contents; BigInt: "<N-byte integer>"; Global: "module.name"
  std::vector<uint32_t> items;  // Tuple/List/Set elements; Dict: key0, value0, key1, value1, ...
};

class Unpickler;

class Policy {
 public:
  virtual ~Policy() = default;
  // An id >= 0 for an allowed global, or -1 to refuse it.
  virtual int resolve_global(const std::string& module, const std::string& name) = 0;
  // Comma-separated allowed names, for the error message.
  virtual std::string allowed_globals() const = 0;
  // REDUCE of the global with this id on the Tuple value `args`. Returns the result.
  virtual Value call(Unpickler& u, int global_id, uint32_t args) = 0;
  // BINPERSID on the value `pid`.
  virtual Value persistent_load(Unpickler& u, uint32_t pid) = 0;
};

class Unpickler {
 public:
  // `path` and `what` name the source in errors: "[component] path: what at byte 17: ...".
  Unpickler(const uint8_t* data, uint64_t size, const char* component, std::string path, std::string what,
            Policy& policy);
  uint32_t load();  // runs to STOP; returns the result's index

  const Value& at(uint32_t i) const { return arena_[i]; }
  uint32_t add(Value v);
  uint64_t size() const { return size_; }  // bytes of pickle
  uint64_t value_count() const { return arena_.size(); }
  const std::string& path() const { return path_; }
  // "[component] path: what at byte N: msg"
  [[noreturn]] void error(const std::string& msg) const;
  // "[component] path: msg" (for errors that do not depend on the position)
  [[noreturn]] void error_plain(const std::string& msg) const;

 private:
  uint8_t byte(const char* what);
  const uint8_t* take(uint64_t n, const char* what);
  template <typename T>
  T read_le(const char* what);
  std::string read_line(const char* what);
  uint32_t pop(const char* op);
  uint32_t& top(const char* op);
  std::vector<uint32_t> pop_mark(const char* op);
  void push(Value v) { stack_.push_back(add(std::move(v))); }
  void push_global(const std::string& module, const std::string& name);
  void push_long(const uint8_t* p, uint64_t n);
  void memo_put(uint64_t index);
  void memo_get(uint64_t index);
  void set_items(uint32_t dict, const std::vector<uint32_t>& kv, const char* op);
  void step(uint8_t op);

  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  uint64_t op_pos_ = 0;
  const char* component_;
  std::string path_, what_;
  Policy& policy_;
  std::vector<Value> arena_;
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, uint32_t> memo_;
  bool stopped_ = false;
  uint32_t result_ = 0;
};

// Protocol-2 pickle writer using only the opcodes torch's weights_only unpickler (torch >= 1.13)
// accepts: PROTO, GLOBAL, BINPUT/LONG_BINPUT, BINGET/LONG_BINGET, MARK, EMPTY_TUPLE/EMPTY_DICT,
// TUPLE/TUPLE1/2/3, BININT/BININT1/BININT2/LONG1, BINUNICODE, NEWFALSE/NEWTRUE, REDUCE, BINPERSID,
// SETITEMS, STOP.
class Pickler {
 public:
  Pickler();  // writes PROTO 2
  // GLOBAL the first time, BINGET of the memoized object afterwards.
  void global(const std::string& module, const std::string& name);
  void mark() { out_.push_back('('); }
  void tuple_from_mark() { out_.push_back('t'); }
  void tuple(int n);  // n in 0..3: EMPTY_TUPLE/TUPLE1/2/3
  void empty_dict() { out_.push_back('}'); }
  void setitems_from_mark() { out_.push_back('u'); }
  void reduce() { out_.push_back('R'); }
  void binpersid() { out_.push_back('Q'); }
  void boolean(bool b) { out_.push_back(b ? '\x88' : '\x89'); }
  void integer(int64_t v);
  void unicode(const std::string& s);  // BINUNICODE (bytes taken as UTF-8)
  const std::string& finish();          // appends STOP

 private:
  std::string out_;
  std::unordered_map<std::string, uint32_t> memo_;
  uint32_t next_memo_ = 0;
};

}  // namespace mc::pickle
