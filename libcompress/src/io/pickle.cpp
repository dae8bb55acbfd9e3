#include "io/pickle.h"

#include <cstring>
#include <limits>

#include "mcompress/error.h"

namespace mc::pickle {

std::string printable(const std::string& s) {
  constexpr size_t kMax = 120;
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (s.size() > kMax) out += "...";
  return out;
}

namespace {

const char* opcode_name(uint8_t op) {
  switch (op) {
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 'I': return "INT";
    case 'L': return "LONG";
    case 'F': return "FLOAT";
    case 'S': return "STRING";
    case 'V': return "UNICODE";
    case 'P': return "PERSID";
    case 'g': return "GET";
    case 'p': return "PUT";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return "?";
  }
}
}  // namespace

const char* kind_name(Kind k) {
  static const char* names[] = {"None", "bool", "int", "int", "float", "str", "bytes", "tuple",
                                "list", "dict", "set", "global", "object"};
  return names[static_cast<int>(k)];
}

Unpickler::Unpickler(const uint8_t* data, uint64_t size, const char* component, std::string path,
                     std::string what, Policy& policy)
    : data_(data), size_(size), component_(component), path_(std::move(path)), what_(std::move(what)),
      policy_(policy) {}

void Unpickler::error(const std::string& msg) const {
  fail(component_, path_, ": ", what_, " at byte ", op_pos_, ": ", msg);
}
void Unpickler::error_plain(const std::string& msg) const { fail(component_, path_, ": ", msg); }

uint32_t Unpickler::add(Value v) {
  if (arena_.size() >= std::numeric_limits<uint32_t>::max()) error("too many values");
  arena_.push_back(std::move(v));
  return static_cast<uint32_t>(arena_.size() - 1);
}

const uint8_t* Unpickler::take(uint64_t n, const char* what) {
  if (n > size_ - pos_) error(str("truncated: need ", n, " bytes for ", what, ", ", size_ - pos_, " left"));
  const uint8_t* p = data_ + pos_;
  pos_ += n;
  return p;
}
uint8_t Unpickler::byte(const char* what) { return *take(1, what); }
template <typename T>
T Unpickler::read_le(const char* what) {
  T v;
  std::memcpy(&v, take(sizeof v, what), sizeof v);
  return v;
}

std::string Unpickler::read_line(const char* what) {
  const void* nl = std::memchr(data_ + pos_, '\n', size_ - pos_);
  if (!nl) error(str("truncated: no newline ending the ", what));
  const uint64_t n = static_cast<uint64_t>(static_cast<const uint8_t*>(nl) - (data_ + pos_));
  std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
  pos_ += n + 1;
  return s;
}

uint32_t& Unpickler::top(const char* op) {
  const size_t floor = marks_.empty() ? 0 : marks_.back();
  if (stack_.size() <= floor) error(str(op, " needs a value on the stack, found none"));
  return stack_.back();
}
uint32_t Unpickler::pop(const char* op) {
  uint32_t v = top(op);
  stack_.pop_back();
  return v;
}
std::vector<uint32_t> Unpickler::pop_mark(const char* op) {
  if (marks_.empty()) error(str(op, " without a preceding MARK"));
  const size_t floor = marks_.back();
  marks_.pop_back();
  std::vector<uint32_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(floor), stack_.end());
  stack_.resize(floor);
  return items;
}

void Unpickler::push_global(const std::string& module, const std::string& name) {
  const int id = policy_.resolve_global(module, name);
  if (id < 0)
    error_plain(str("pickle names forbidden global '", printable(module + "." + name),
                    "' (allowed: ", policy_.allowed_globals(), ")"));
  Value v;
  v.kind = Kind::Global;
  v.tag = id;
  v.s = module + "." + name;
  push(std::move(v));
}

void Unpickler::push_long(const uint8_t* p, uint64_t n) {
  Value v;
  v.kind = Kind::Int;
  if (n > 8) {
    v.kind = Kind::BigInt;
    v.s = str("<", n, "-byte integer>");
  } else if (n > 0) {
    uint64_t u = 0;
    for (uint64_t k = 0; k < n; ++k) u |= uint64_t(p[k]) << (8 * k);
    if (n < 8 && (p[n - 1] & 0x80)) u |= ~uint64_t(0) << (8 * n);  // sign-extend
    std::memcpy(&v.i, &u, 8);
  }
  push(std::move(v));
}

void Unpickler::memo_put(uint64_t index) { memo_[index] = top("PUT"); }
void Unpickler::memo_get(uint64_t index) {
  auto it = memo_.find(index);
  if (it == memo_.end()) error(str("memo entry ", index, " is read before it was stored"));
  stack_.push_back(it->second);
}

void Unpickler::set_items(uint32_t dict, const std::vector<uint32_t>& kv, const char* op) {
  if (arena_[dict].kind != Kind::Dict) error(str(op, " on a ", kind_name(arena_[dict].kind), ", expected a dict"));
  if (kv.size() % 2) error(str(op, " with an odd number (", kv.size(), ") of keys and values"));
  auto& items = arena_[dict].items;
  items.insert(items.end(), kv.begin(), kv.end());
}

uint32_t Unpickler::load() {
  while (!stopped_) {
    op_pos_ = pos_;
    if (pos_ >= size_) error("truncated: the pickle ends before its STOP opcode");
    step(byte("opcode"));
  }
  return result_;
}

void Unpickler::step(uint8_t op) {
  auto str_value = [&](Kind kind, uint64_t n, const char* what) {
    const uint8_t* p = take(n, what);
    Value v;
    v.kind = kind;
    v.s.assign(reinterpret_cast<const char*>(p), n);
    push(std::move(v));
  };
  auto int_value = [&](int64_t i) {
    Value v;
    v.kind = Kind::Int;
    v.i = i;
    push(std::move(v));
  };
  auto container = [&](Kind kind, std::vector<uint32_t> items) {
    Value v;
    v.kind = kind;
    v.items = std::move(items);
    push(std::move(v));
  };
  switch (op) {
    case 0x80: {  // PROTO
      uint8_t proto = byte("protocol version");
      if (proto > 5) error(str("unsupported pickle protocol ", int(proto)));
      break;
    }
    case 0x95: {  // FRAME: only a length hint
      uint64_t n = read_le<uint64_t>("FRAME length");
      if (n > size_ - pos_) error(str("FRAME of ", n, " bytes runs past the end (", size_ - pos_, " left)"));
      break;
    }
    case '.': result_ = pop("STOP"); stopped_ = true; break;
    case '(': marks_.push_back(stack_.size()); break;
    case '0':  // POP: pops the top value, or the mark when nothing lies above it
      if (!marks_.empty() && stack_.size() == marks_.back()) pop_mark("POP");
      else pop("POP");
      break;
    case '1': pop_mark("POP_MARK"); break;
    case '2': { uint32_t v = top("DUP"); stack_.push_back(v); break; }
    case 'N': push(Value{}); break;
    case 0x88: case 0x89: {  // NEWTRUE, NEWFALSE
      Value v;
      v.kind = Kind::Bool;
      v.i = op == 0x88;
      push(std::move(v));
      break;
    }
    case 'J': int_value(read_le<int32_t>("BININT argument")); break;
    case 'K': int_value(byte("BININT1 argument")); break;
    case 'M': int_value(read_le<uint16_t>("BININT2 argument")); break;
    case 0x8a: {  // LONG1
      uint64_t n = byte("LONG1 length");
      push_long(take(n, "LONG1 bytes"), n);
      break;
    }
    case 0x8b: {  // LONG4
      int32_t n = read_le<int32_t>("LONG4 length");
      if (n < 0) error(str("LONG4 with negative length ", n));
      push_long(take(uint64_t(n), "LONG4 bytes"), uint64_t(n));
      break;
    }
    case 'G': {  // BINFLOAT: big-endian double
      const uint8_t* p = take(8, "BINFLOAT argument");
      uint64_t u = 0;
      for (int k = 0; k < 8; ++k) u = (u << 8) | p[k];
      Value v;
      v.kind = Kind::Float;
      std::memcpy(&v.f, &u, 8);
      push(std::move(v));
      break;
    }
    case 'X': str_value(Kind::String, read_le<uint32_t>("BINUNICODE length"), "BINUNICODE data"); break;
    case 0x8c: str_value(Kind::String, byte("SHORT_BINUNICODE length"), "SHORT_BINUNICODE data"); break;
    case 0x8d: str_value(Kind::String, read_le<uint64_t>("BINUNICODE8 length"), "BINUNICODE8 data"); break;
    case 'T': {  // BINSTRING (Python 2 str)
      int32_t n = read_le<int32_t>("BINSTRING length");
      if (n < 0) error(str("BINSTRING with negative length ", n));
      str_value(Kind::String, uint64_t(n), "BINSTRING data");
      break;
    }
    case 'U': str_value(Kind::String, byte("SHORT_BINSTRING length"), "SHORT_BINSTRING data"); break;
    case 'B': str_value(Kind::Bytes, read_le<uint32_t>("BINBYTES length"), "BINBYTES data"); break;
    case 'C': str_value(Kind::Bytes, byte("SHORT_BINBYTES length"), "SHORT_BINBYTES data"); break;
    case 0x8e: str_value(Kind::Bytes, read_le<uint64_t>("BINBYTES8 length"), "BINBYTES8 data"); break;
    case ')': container(Kind::Tuple, {}); break;
    case ']': container(Kind::List, {}); break;
    case '}': container(Kind::Dict, {}); break;
    case 0x8f: container(Kind::Set, {}); break;
    case 't': container(Kind::Tuple, pop_mark("TUPLE")); break;
    case 'l': container(Kind::List, pop_mark("LIST")); break;
    case 0x91: container(Kind::Set, pop_mark("FROZENSET")); break;
    case 'd': {
      std::vector<uint32_t> kv = pop_mark("DICT");
      if (kv.size() % 2) error(str("DICT with an odd number (", kv.size(), ") of keys and values"));
      container(Kind::Dict, std::move(kv));
      break;
    }
    case 0x85: case 0x86: case 0x87: {  // TUPLE1/2/3
      const int n = op - 0x84;
      std::vector<uint32_t> items(static_cast<size_t>(n));
      for (int k = n - 1; k >= 0; --k) items[static_cast<size_t>(k)] = pop("TUPLE1/2/3");
      container(Kind::Tuple, std::move(items));
      break;
    }
    case 'a': case 'e': case 0x90: {  // APPEND, APPENDS, ADDITEMS
      const char* name = op == 'a' ? "APPEND" : op == 'e' ? "APPENDS" : "ADDITEMS";
      std::vector<uint32_t> items = op == 'a' ? std::vector<uint32_t>{pop(name)} : pop_mark(name);
      const uint32_t target = top(name);
      const Kind want = op == 0x90 ? Kind::Set : Kind::List;
      if (arena_[target].kind != want)
        error(str(name, " on a ", kind_name(arena_[target].kind), ", expected a ", kind_name(want)));
      auto& dst = arena_[target].items;
      dst.insert(dst.end(), items.begin(), items.end());
      break;
    }
    case 's': {
      const uint32_t v = pop("SETITEM"), k = pop("SETITEM");
      set_items(top("SETITEM"), {k, v}, "SETITEM");
      break;
    }
    case 'u': {
      std::vector<uint32_t> kv = pop_mark("SETITEMS");
      set_items(top("SETITEMS"), kv, "SETITEMS");
      break;
    }
    case 'c': {
      std::string module = read_line("GLOBAL module name");
      std::string name = read_line("GLOBAL attribute name");
      push_global(module, name);
      break;
    }
    case 0x93: {  // STACK_GLOBAL
      const uint32_t name = pop("STACK_GLOBAL"), module = pop("STACK_GLOBAL");
      if (arena_[module].kind != Kind::String || arena_[name].kind != Kind::String)
        error(str("STACK_GLOBAL needs two str values, got ", kind_name(arena_[module].kind), " and ",
                  kind_name(arena_[name].kind)));
      push_global(arena_[module].s, arena_[name].s);
      break;
    }
    case 'R': {
      const uint32_t args = pop("REDUCE");
      const uint32_t callable = top("REDUCE");
      if (arena_[callable].kind != Kind::Global)
        error(str("REDUCE calls a ", kind_name(arena_[callable].kind), ", expected an allowed global"));
      if (arena_[args].kind != Kind::Tuple)
        error(str("REDUCE arguments for ", arena_[callable].s, " are a ", kind_name(arena_[args].kind),
                  ", expected a tuple"));
      Value result = policy_.call(*this, arena_[callable].tag, args);
      const uint32_t r = add(std::move(result));
      top("REDUCE") = r;
      break;
    }
    case 'b': {  // BUILD: accepted (and its state ignored) only on dicts (OrderedDict._metadata) and objects
      const uint32_t state = pop("BUILD");
      (void)state;
      const Kind k = arena_[top("BUILD")].kind;
      if (k != Kind::Dict && k != Kind::Object)
        error(str("BUILD on a ", kind_name(k), ", expected an OrderedDict or a tensor"));
      break;
    }
    case 'Q': {
      const uint32_t pid = pop("BINPERSID");
      push(policy_.persistent_load(*this, pid));
      break;
    }
    case 'q': memo_put(byte("BINPUT index")); break;
    case 'r': memo_put(read_le<uint32_t>("LONG_BINPUT index")); break;
    case 0x94: memo_put(memo_.size()); break;  // MEMOIZE
    case 'h': memo_get(byte("BINGET index")); break;
    case 'j': memo_get(read_le<uint32_t>("LONG_BINGET index")); break;
    case 'i': case 'o': case 0x81: case 0x92: case 0x82: case 0x83: case 0x84:
      error(str("opcode ", opcode_name(op), " would construct an arbitrary object; refused"));
    case 'I': case 'L': case 'F': case 'S': case 'V': case 'P': case 'g': case 'p':
      error(str("text-protocol opcode ", opcode_name(op), " is not supported (torch.save writes protocol 2)"));
    case 0x96: case 0x97: case 0x98:
      error(str("protocol-5 opcode ", opcode_name(op), " is not supported"));
    default: {
      static const char* hex = "0123456789abcdef";
      error(str("unknown pickle opcode 0x", hex[op >> 4], hex[op & 15]));
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Pickler

Pickler::Pickler() { out_ = "\x80\x02"; }

void Pickler::global(const std::string& module, const std::string& name) {
  const std::string key = module + "\n" + name;
  auto it = memo_.find(key);
  auto put_u32 = [&](char op, uint32_t idx) {
    if (idx < 256) {
      out_.push_back(op == 'q' ? 'q' : 'h');
      out_.push_back(static_cast<char>(idx));
    } else {
      out_.push_back(op == 'q' ? 'r' : 'j');
      out_.append(reinterpret_cast<const char*>(&idx), 4);
    }
  };
  if (it != memo_.end()) {
    put_u32('h', it->second);
    return;
  }
  out_ += "c" + key + "\n";
  memo_.emplace(key, next_memo_);
  put_u32('q', next_memo_++);
}

void Pickler::tuple(int n) {
  static const char ops[] = {')', '\x85', '\x86', '\x87'};
  out_.push_back(ops[n]);
}

void Pickler::integer(int64_t v) {
  if (v >= 0 && v < 256) {
    out_.push_back('K');
    out_.push_back(static_cast<char>(v));
  } else if (v >= 0 && v < 65536) {
    out_.push_back('M');
    uint16_t u = static_cast<uint16_t>(v);
    out_.append(reinterpret_cast<const char*>(&u), 2);
  } else if (v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max()) {
    out_.push_back('J');
    int32_t i = static_cast<int32_t>(v);
    out_.append(reinterpret_cast<const char*>(&i), 4);
  } else {  // LONG1: minimal little-endian two's complement
    uint8_t b[8];
    std::memcpy(b, &v, 8);
    int n = 8;
    while (n > 1 && ((b[n - 1] == 0x00 && !(b[n - 2] & 0x80)) || (b[n - 1] == 0xff && (b[n - 2] & 0x80)))) --n;
    out_.push_back('\x8a');
    out_.push_back(static_cast<char>(n));
    out_.append(reinterpret_cast<const char*>(b), static_cast<size_t>(n));
  }
}

void Pickler::unicode(const std::string& s) {
  out_.push_back('X');
  uint32_t n = static_cast<uint32_t>(s.size());
  out_.append(reinterpret_cast<const char*>(&n), 4);
  out_ += s;
}

const std::string& Pickler::finish() {
  out_.push_back('.');
  return out_;
}

}  // namespace mc::pickle
