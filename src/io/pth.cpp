#include "io/pth.h"

#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <unordered_map>

#include "core/error.h"
#include "core/files.h"

#if defined(__SANITIZE_ADDRESS__)  // gcc
#define ADAFOCUS_LSAN
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)  // clang
#define ADAFOCUS_LSAN
#endif
#endif
#ifdef ADAFOCUS_LSAN
#include <sanitizer/lsan_interface.h>
#endif

namespace adafocus::io {

namespace {

using Kind = PyValue::Kind;

constexpr const char* kSaveHint =
    "save it from Python with torch.save(model.state_dict(), path) or torch.save(tensor, path)";

PyValue make(Kind kind) {
  PyValue v;
  v.kind = kind;
  return v;
}

PyValue make_list(Kind kind, std::vector<PyValue> items) {
  PyValue v = make(kind);
  v.items = std::make_shared<std::vector<PyValue>>(std::move(items));
  return v;
}

PyValue make_dict() {
  PyValue v = make(Kind::Dict);
  v.entries = std::make_shared<std::vector<std::pair<PyValue, PyValue>>>();
  return v;
}

// The first line of a c10::Error, without LibTorch's backtrace.
std::string first_line(const c10::Error& e) {
  std::string s = e.what_without_backtrace();
  return s.substr(0, s.find('\n'));
}

const std::map<std::string, torch::ScalarType>& storage_types() {
  static const std::map<std::string, torch::ScalarType> types{
      {"torch.FloatStorage", torch::kFloat},         {"torch.DoubleStorage", torch::kDouble},
      {"torch.HalfStorage", torch::kHalf},           {"torch.BFloat16Storage", torch::kBFloat16},
      {"torch.LongStorage", torch::kLong},           {"torch.IntStorage", torch::kInt},
      {"torch.ShortStorage", torch::kShort},         {"torch.CharStorage", torch::kChar},
      {"torch.ByteStorage", torch::kByte},           {"torch.BoolStorage", torch::kBool},
      {"torch.ComplexFloatStorage", torch::kComplexFloat}, {"torch.ComplexDoubleStorage", torch::kComplexDouble},
      {"torch.UntypedStorage", torch::kByte}};
  return types;
}

// A pickle interpreter for what torch.save writes (protocols 2-5). It builds values only; it never runs code: the
// few callables it understands (tensor rebuilding, OrderedDict) are applied natively, any other becomes an opaque
// Object.
class Unpickler {
 public:
  using PersistentLoad = std::function<PyValue(const PyValue& pid)>;

  Unpickler(const std::string& data, size_t start, std::string source, PersistentLoad persistent_load)
      : data_(data), pos_(start), source_(std::move(source)), persistent_load_(std::move(persistent_load)) {}

  // Nesting deeper than this is refused: values are destroyed recursively, and torch.save's checkpoints nest a few
  // levels.
  static constexpr int kMaxDepth = 1000;

  /// Reads one pickle, up to and including its STOP opcode.
  PyValue load();
  size_t position() const { return pos_; }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(fmt::format("corrupt file: {} (pickle offset {})", what, pos_), source_, kSaveHint);
  }
  void need(size_t n) const {
    if (n > data_.size() - pos_) fail("unexpected end of data (truncated file?)");
  }
  uint64_t read_le(size_t n) {
    need(n);
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= uint64_t(uint8_t(data_[pos_ + i])) << (8 * i);
    pos_ += n;
    return v;
  }
  std::string read_bytes(uint64_t n) {
    need(n);
    std::string s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::string read_line() {
    size_t end = data_.find('\n', pos_);
    if (end == std::string::npos) fail("unterminated text line");
    std::string s = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }
  PyValue pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("stack underflow");
    PyValue v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  PyValue& top() {
    if (stack_.empty()) fail("stack underflow");
    return stack_.back();
  }
  std::vector<PyValue> pop_mark() {
    if (marks_.empty()) fail("MARK expected");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<PyValue> items(std::make_move_iterator(stack_.begin() + static_cast<long>(mark)),
                               std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return items;
  }
  const PyValue& memo_get(uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) fail("memo key " + std::to_string(key) + " not found");
    return it->second;
  }
  void set_items(PyValue& dict, std::vector<PyValue>& items) {
    if (dict.kind != Kind::Dict) return;  // __setitem__ on an opaque object: drop
    if (items.size() % 2) fail("odd number of items for SETITEMS");
    changes(dict);
    for (size_t i = 0; i < items.size(); i += 2) {
      contains(dict, items[i]);
      contains(dict, items[i + 1]);
      dict.entries->emplace_back(items[i], items[i + 1]);
    }
  }

  // Containers (lists, tuples, dicts, objects' arguments) share their items as Python's do. What torch.save writes
  // fills a container before it is put into another one, so one that changes after that - the only way to a cycle,
  // which would never be freed, and to a depth not known when it was put in - is refused; so is deep nesting.
  struct Node {
    int depth = 1;
    bool inside = false;  // put into another container
  };
  static const void* node_key(const PyValue& v) {
    return v.items ? static_cast<const void*>(v.items.get()) : static_cast<const void*>(v.entries.get());
  }
  // A new container (with its items, if any).
  PyValue track(PyValue v) {
    alive_.push_back(v.items ? std::shared_ptr<const void>(v.items) : std::shared_ptr<const void>(v.entries));
    nodes_[node_key(v)];
    if (v.items)
      for (const auto& item : *v.items) contains(v, item);
    return v;
  }
  void contains(const PyValue& parent, const PyValue& child) {
    const void* key = node_key(child);
    if (!key) return;
    if (key == node_key(parent)) fail("a container that contains itself");
    Node& c = nodes_[key];
    c.inside = true;
    Node& p = nodes_[node_key(parent)];
    p.depth = std::max(p.depth, c.depth + 1);
    if (p.depth > kMaxDepth) fail(fmt::format("values nested deeper than {} levels", kMaxDepth));
  }
  void changes(const PyValue& v) {
    if (nodes_[node_key(v)].inside) fail("a container changed after it was put into another (a cycle?)");
  }
  PyValue call(const PyValue& callable, const PyValue& args);
  PyValue rebuild_tensor(const std::vector<PyValue>& args);

  const std::string& data_;
  size_t pos_;
  std::string source_;
  PersistentLoad persistent_load_;
  std::vector<PyValue> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PyValue> memo_;
  // By the address of a container's items, which stay alive (alive_) until the unpickler goes, so that no address
  // is reused meanwhile.
  std::unordered_map<const void*, Node> nodes_;
  std::vector<std::shared_ptr<const void>> alive_;
};

PyValue Unpickler::rebuild_tensor(const std::vector<PyValue>& args) {
  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  if (args.size() < 4 || args[0].kind != Kind::Storage || args[1].kind != Kind::Int ||
      args[2].kind != Kind::Tuple || args[3].kind != Kind::Tuple)
    fail("malformed tensor record");
  std::vector<int64_t> size, stride;
  for (const auto& v : *args[2].items) {
    if (v.kind != Kind::Int || v.integer < 0) fail("malformed tensor size");
    size.push_back(v.integer);
  }
  for (const auto& v : *args[3].items) {
    if (v.kind != Kind::Int || v.integer < 0) fail("malformed tensor stride");
    stride.push_back(v.integer);
  }
  if (size.size() != stride.size()) fail("tensor size and stride differ in length");
  const torch::Tensor& storage = args[0].tensor;
  // A storage view (legacy files) adds its own offset. The view must lie inside the storage: a corrupt file must not
  // make us read out of bounds (nor overflow on the way: the sums stay below 2^63 or fail).
  int64_t offset = 0;
  bool empty = false, overflow = __builtin_add_overflow(args[0].integer, args[1].integer, &offset);
  int64_t last = offset;
  for (size_t i = 0; i < size.size(); ++i) {
    int64_t step = 0;
    empty = empty || size[i] == 0;
    overflow = overflow || (size[i] > 0 && (__builtin_mul_overflow(size[i] - 1, stride[i], &step) ||
                                             __builtin_add_overflow(last, step, &last)));
  }
  if (overflow) fail("tensor size and stride out of range");
  if (args[1].integer < 0 || (!empty && last >= storage.numel()))
    fail(fmt::format("tensor of size ({}) at offset {} does not fit its storage of {} elements",
                     fmt::join(size, ", "), offset, storage.numel()));
  PyValue t = make(Kind::Tensor);
  t.tensor = storage.as_strided(size, stride, offset);
  return t;
}

PyValue Unpickler::call(const PyValue& callable, const PyValue& args) {
  if (args.kind != Kind::Tuple) fail("REDUCE arguments are not a tuple");
  const std::vector<PyValue>& a = *args.items;
  const std::string& name = callable.text;
  if (callable.kind == Kind::Global) {
    if (name == "collections.OrderedDict") {
      PyValue d = track(make_dict());
      if (!a.empty() && a[0].kind == Kind::List)
        for (const auto& pair : *a[0].items)
          if ((pair.kind == Kind::Tuple || pair.kind == Kind::List) && pair.items->size() == 2) {
            std::vector<PyValue> items = *pair.items;
            set_items(d, items);
          }
      return d;
    }
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") return rebuild_tensor(a);
    if (name == "torch._utils._rebuild_parameter" || name == "torch._utils._rebuild_parameter_with_state") {
      if (a.empty() || a[0].kind != Kind::Tensor) fail("malformed parameter record");
      return a[0];
    }
    // LibTorch's own pickler (torch::pickle_save) tags typed containers; the value is the first argument.
    if (name == "torch.jit._pickle.restore_type_tag" || name.rfind("torch.jit._pickle.build_", 0) == 0) {
      if (a.empty()) fail("malformed " + name);
      return a[0];
    }
    if (name == "torch._tensor._rebuild_from_type_v2") {
      // (func, new_type, args, state): tensor subclasses such as nn.Parameter in PyTorch 2.x
      if (a.size() < 3 || a[0].kind != Kind::Global || a[2].kind != Kind::Tuple) fail("malformed tensor record");
      return call(a[0], a[2]);
    }
  }
  PyValue object = track(make_list(Kind::Object, a));
  object.text = callable.kind == Kind::Global || callable.kind == Kind::Object ? name : "?";
  return object;
}

PyValue Unpickler::load() {
  while (true) {
    need(1);
    const uint8_t op = uint8_t(data_[pos_++]);
    switch (op) {
      case 0x80: read_le(1); break;  // PROTO
      case 0x95: read_le(8); break;  // FRAME
      case '.':                      // STOP
        if (stack_.size() != 1 || !marks_.empty()) fail("unbalanced stack at STOP");
        return pop();
      case '(': marks_.push_back(stack_.size()); break;  // MARK
      case '0': pop(); break;                            // POP
      case '1': pop_mark(); break;                       // POP_MARK
      case '2': stack_.push_back(top()); break;          // DUP
      case 'N': stack_.push_back(make(Kind::None)); break;
      case 0x88:
      case 0x89: {  // NEWTRUE, NEWFALSE
        PyValue v = make(Kind::Bool);
        v.boolean = op == 0x88;
        stack_.push_back(v);
        break;
      }
      case 'J':
      case 'K':
      case 'M': {  // BININT (int32), BININT1 (uint8), BININT2 (uint16)
        PyValue v = make(Kind::Int);
        const uint64_t raw = read_le(op == 'J' ? 4 : op == 'K' ? 1 : 2);
        v.integer = op == 'J' ? int64_t(int32_t(uint32_t(raw))) : int64_t(raw);
        stack_.push_back(v);
        break;
      }
      case 0x8a:
      case 0x8b: {  // LONG1, LONG4: little-endian two's complement
        const uint64_t n = read_le(op == 0x8a ? 1 : 4);
        need(n);
        if (n > 8) {  // beyond int64: kept as an opaque value
          PyValue v = track(make_list(Kind::Object, {}));
          v.text = "int";
          pos_ += n;
          stack_.push_back(v);
          break;
        }
        uint64_t raw = n ? read_le(n) : 0;
        if (n > 0 && n < 8 && (raw >> (8 * n - 1)) & 1) raw |= ~uint64_t(0) << (8 * n);  // sign-extend
        PyValue v = make(Kind::Int);
        v.integer = int64_t(raw);
        stack_.push_back(v);
        break;
      }
      case 'G': {  // BINFLOAT, big-endian double
        need(8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | uint8_t(data_[pos_ + i]);
        pos_ += 8;
        PyValue v = make(Kind::Float);
        std::memcpy(&v.number, &bits, sizeof(double));
        stack_.push_back(v);
        break;
      }
      case 'X':
      case 0x8c:
      case 0x8d:
      case 'T':
      case 'U':
      case 'B':
      case 'C':
      case 0x8e: {  // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8, BINSTRING, SHORT_BINSTRING, BINBYTES,
                    // SHORT_BINBYTES, BINBYTES8
        const size_t width = (op == 0x8c || op == 'U' || op == 'C') ? 1 : (op == 0x8d || op == 0x8e) ? 8 : 4;
        PyValue v = make((op == 'B' || op == 'C' || op == 0x8e) ? Kind::Bytes : Kind::String);
        v.text = read_bytes(read_le(width));
        stack_.push_back(v);
        break;
      }
      case '}': stack_.push_back(track(make_dict())); break;                // EMPTY_DICT
      case ']': stack_.push_back(track(make_list(Kind::List, {}))); break;  // EMPTY_LIST
      case ')': stack_.push_back(track(make_list(Kind::Tuple, {}))); break;  // EMPTY_TUPLE
      case 't': stack_.push_back(track(make_list(Kind::Tuple, pop_mark()))); break;
      case 'l': stack_.push_back(track(make_list(Kind::List, pop_mark()))); break;
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1..3
        std::vector<PyValue> items(op - 0x84);
        for (size_t i = items.size(); i-- > 0;) items[i] = pop();
        stack_.push_back(track(make_list(Kind::Tuple, std::move(items))));
        break;
      }
      case 'd': {  // DICT
        auto items = pop_mark();
        PyValue d = track(make_dict());
        set_items(d, items);
        stack_.push_back(d);
        break;
      }
      case 'a': {  // APPEND
        PyValue v = pop();
        PyValue& list = top();
        if (list.kind == Kind::List) {
          changes(list);
          contains(list, v);
          list.items->push_back(v);
        }
        break;
      }
      case 'e': {  // APPENDS
        auto items = pop_mark();
        PyValue& list = top();
        if (list.kind == Kind::List) {
          changes(list);
          for (const auto& item : items) contains(list, item);
          list.items->insert(list.items->end(), items.begin(), items.end());
        }
        break;
      }
      case 's': {  // SETITEM
        PyValue value = pop();
        PyValue key = pop();
        std::vector<PyValue> items{key, value};
        set_items(top(), items);
        break;
      }
      case 'u': {  // SETITEMS
        auto items = pop_mark();
        set_items(top(), items);
        break;
      }
      case 'q': memo_[read_le(1)] = top(); break;  // BINPUT
      case 'r': memo_[read_le(4)] = top(); break;  // LONG_BINPUT
      case 0x94: {                                 // MEMOIZE
        const uint64_t key = memo_.size();
        memo_[key] = top();
        break;
      }
      case 'h': stack_.push_back(memo_get(read_le(1))); break;  // BINGET
      case 'j': stack_.push_back(memo_get(read_le(4))); break;  // LONG_BINGET
      case 'c': {                                               // GLOBAL "module\nname\n"
        PyValue g = make(Kind::Global);
        const std::string module = read_line();
        g.text = module + "." + read_line();
        stack_.push_back(g);
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        PyValue name = pop(), module = pop();
        if (name.kind != Kind::String || module.kind != Kind::String) fail("STACK_GLOBAL needs two strings");
        PyValue g = make(Kind::Global);
        g.text = module.text + "." + name.text;
        stack_.push_back(g);
        break;
      }
      case 'R': {  // REDUCE
        PyValue args = pop();
        PyValue callable = pop();
        stack_.push_back(call(callable, args));
        break;
      }
      case 0x81: {  // NEWOBJ: cls.__new__(cls, *args), opaque
        PyValue args = pop();
        PyValue cls = pop();
        if (args.kind != Kind::Tuple) fail("NEWOBJ arguments are not a tuple");
        PyValue object = track(make_list(Kind::Object, *args.items));
        object.text = cls.text;
        stack_.push_back(object);
        break;
      }
      case 'b': pop(); break;  // BUILD: object state (e.g. a state dict's _metadata) is not needed
      case 'Q': {              // BINPERSID
        PyValue pid = pop();
        stack_.push_back(persistent_load_(pid));
        break;
      }
      default: fail(fmt::format("unsupported pickle opcode 0x{:02x}", op));
    }
  }
}

// Storage records named by persistent ids ('storage', torch.FloatStorage, key, location, numel[, view]): the same
// key always yields the same flat tensor, so views of one storage share memory as in Python.
class StorageTable {
 public:
  /// `budget`: the file's size. Storages are stored uncompressed, so together they cannot hold more bytes than the
  /// file: a record claiming more is corrupt, refused before anything is allocated.
  StorageTable(std::string source, uint64_t budget) : source_(std::move(source)), budget_(budget) {}

  PyValue resolve(const PyValue& pid) {
    const auto& a = pid.items ? *pid.items : std::vector<PyValue>{};
    if (pid.kind != Kind::Tuple || a.size() < 5 || a[0].text != "storage" || a[2].kind != Kind::String ||
        a[4].kind != Kind::Int || a[4].integer < 0)
      throw Error("corrupt file: malformed storage reference", source_, kSaveHint);
    auto type = storage_types().find(a[1].text);
    if (type == storage_types().end())
      throw Error("unsupported storage type '" + a[1].text + "'", source_, kSaveHint);
    const std::string& key = a[2].text;
    auto it = storages_.find(key);
    if (it == storages_.end()) {
      const uint64_t bytes = uint64_t(a[4].integer) * c10::elementSize(type->second);  // numel < 2^63, size <= 16
      if (bytes / c10::elementSize(type->second) != uint64_t(a[4].integer) || bytes > budget_)
        throw Error(fmt::format("corrupt file: storage '{}' claims {} elements of {}, more than the {} bytes left in "
                                "the file hold", key, a[4].integer, a[1].text, budget_),
                    source_, kSaveHint);
      budget_ -= bytes;
      try {
        it = storages_.emplace(key, torch::empty({a[4].integer}, torch::dtype(type->second))).first;
      } catch (const c10::Error& e) {
        throw Error("corrupt file: cannot allocate storage " + key + ": " + first_line(e), source_, kSaveHint);
      }
      order_.push_back(key);
    }
    PyValue s = make(Kind::Storage);
    s.tensor = it->second;
    // Legacy files may reference a view (view_key, offset, size) of a storage.
    if (a.size() >= 6 && a[5].kind == Kind::Tuple && a[5].items->size() == 3) {
      const auto& view = *a[5].items;
      if (view[1].kind != Kind::Int || view[2].kind != Kind::Int || view[1].integer < 0 || view[2].integer < 0 ||
          view[1].integer > s.tensor.numel() - view[2].integer)
        throw Error("corrupt file: malformed storage view", source_, kSaveHint);
      s.integer = view[1].integer;
    }
    return s;
  }

  /// Fills storage `key` with raw little-endian bytes from the `n` available; returns the bytes used.
  size_t fill(const std::string& key, const char* bytes, size_t n) {
    auto it = storages_.find(key);
    if (it == storages_.end()) throw Error("corrupt file: data for unknown storage '" + key + "'", source_, kSaveHint);
    const size_t expected = it->second.numel() * it->second.element_size();
    if (n < expected)
      throw Error(fmt::format("corrupt file: storage '{}' has {} bytes, expected {} (truncated file?)", key, n,
                              expected),
                  source_, kSaveHint);
    if (expected) std::memcpy(it->second.data_ptr(), bytes, expected);
    return expected;
  }

  const std::vector<std::string>& keys() const { return order_; }
  int64_t numel(const std::string& key) const { return storages_.at(key).numel(); }
  bool has(const std::string& key) const { return storages_.count(key) > 0; }

 private:
  std::string source_;
  uint64_t budget_;
  std::map<std::string, torch::Tensor> storages_;
  std::vector<std::string> order_;
};

// LibTorch's zip reader allocates a record's size as the zip's directory claims it before reading it. The claims are
// checked first against the file: a stored record (torch.save's) cannot be larger than the file, a deflated one no
// more than deflate's limit of 1032:1. A file without the zip's directory record (a truncated one) is refused here;
// what else this walk cannot parse is left to LibTorch's reader to refuse.
void check_zip_sizes(const std::string& path, uint64_t file_size) {
  std::ifstream in(path, std::ios::binary);
  auto read_at = [&](uint64_t at, uint64_t n) {
    std::string out;
    if (at > file_size || n > file_size - at) return out;
    out.resize(n);
    in.seekg(static_cast<std::streamoff>(at));
    in.read(out.data(), static_cast<std::streamsize>(n));
    if (!in) out.clear();
    in.clear();
    return out;
  };
  auto le = [](const std::string& b, size_t at, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n && at + i < b.size(); ++i) v |= uint64_t(uint8_t(b[at + i])) << (8 * i);
    return v;
  };
  // The end of central directory record: within the last 64 KiB + 22 bytes (its comment is at most 64 KiB).
  const uint64_t tail_size = std::min<uint64_t>(file_size, 65557);
  const std::string tail = read_at(file_size - tail_size, tail_size);
  const size_t eocd = tail.size() < 22 ? std::string::npos : tail.rfind(std::string("PK\x05\x06", 4));
  if (eocd == std::string::npos || eocd + 22 > tail.size())
    throw Error("not a readable torch.save zip file: its directory is missing (the end of the file?)", path,
                "the file may be truncated; save it again");
  uint64_t entries = le(tail, eocd + 10, 2), cd_size = le(tail, eocd + 12, 4), cd_offset = le(tail, eocd + 16, 4);
  if ((entries == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) && eocd >= 20 &&
      tail.compare(eocd - 20, 4, std::string("PK\x06\x07", 4)) == 0) {  // zip64: sizes in its own record
    const std::string z = read_at(le(tail, eocd - 20 + 8, 8), 56);
    if (z.size() < 56 || z.compare(0, 4, std::string("PK\x06\x06", 4)) != 0) return;
    entries = le(z, 32, 8), cd_size = le(z, 40, 8), cd_offset = le(z, 48, 8);
  }
  const std::string cd = read_at(cd_offset, cd_size);
  size_t at = 0;
  for (uint64_t e = 0; e < entries && at + 46 <= cd.size() && cd.compare(at, 4, "PK\x01\x02") == 0; ++e) {
    const uint64_t method = le(cd, at + 10, 2), name_size = le(cd, at + 28, 2), extra_size = le(cd, at + 30, 2);
    uint64_t packed = le(cd, at + 20, 4), size = le(cd, at + 24, 4);
    // Sizes past 4 GiB: in the zip64 extra field (id 1), uncompressed size first.
    for (size_t x = at + 46 + name_size; x + 4 <= at + 46 + name_size + extra_size && x + 4 <= cd.size();
         x += 4 + le(cd, x + 2, 2))
      if (le(cd, x, 2) == 1) {
        size_t f = x + 4;
        if (size == 0xFFFFFFFF) size = le(cd, f, 8), f += 8;
        if (packed == 0xFFFFFFFF) packed = le(cd, f, 8);
      }
    const std::string name = cd.substr(at + 46, name_size);
    if (packed > file_size || (method == 0 && size != packed) || size > packed * 1032 + 1024)
      throw Error(fmt::format("corrupt file: zip record '{}' claims {} bytes ({} in the file of {})", name, size, packed,
                              file_size),
                  path, "the file may be truncated or damaged; save it again");
    at += 46 + name_size + extra_size + le(cd, at + 32, 2);
  }
}

// Zip format (PyTorch >= 1.6): <archive>/data.pkl plus one record <archive>/data/<key> per storage.
PyValue read_zip(const std::string& path, uint64_t file_size) {
  check_zip_sizes(path, file_size);
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
#ifdef ADAFOCUS_LSAN
    // LibTorch 1.13's reader leaks miniz's state (~0.5 kB) when its constructor refuses a file (it is freed in the
    // destructor, which then does not run): not ours to fix, so not reported by the sanitized builds.
    __lsan::ScopedDisabler libtorch_leaks;
#endif
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
  } catch (const c10::Error& e) {
    throw Error("not a readable torch.save zip file: " + first_line(e), path, "the file may be truncated; save again");
  }
  if (reader->hasRecord("constants.pkl"))
    throw Error("this is a TorchScript module (torch.jit.save), not a torch.save file", path,
                "in Python, torch.save(model.state_dict(), path) writes what adafocus reads");
  if (!reader->hasRecord("data.pkl")) throw Error("zip file without data.pkl: not written by torch.save", path, kSaveHint);
  StorageTable storages(path, file_size);
  auto [pickle_ptr, pickle_size] = reader->getRecord("data.pkl");
  const std::string pickle(static_cast<const char*>(pickle_ptr.get()), pickle_size);
  Unpickler unpickler(pickle, 0, path, [&](const PyValue& pid) { return storages.resolve(pid); });
  PyValue root = unpickler.load();
  for (const auto& key : storages.keys()) {
    const std::string record = "data/" + key;
    if (!reader->hasRecord(record))
      throw Error("corrupt file: storage record '" + record + "' is missing", path, kSaveHint);
    auto [ptr, size] = reader->getRecord(record);
    storages.fill(key, static_cast<const char*>(ptr.get()), size);
  }
  return root;
}

// Legacy format: pickles of a magic number, a protocol version and system info, then the object, then the sorted
// list of storage keys, then for each key an int64 element count and the raw data.
PyValue read_legacy(const std::string& path, const std::string& bytes) {
  StorageTable storages(path, bytes.size());
  auto no_persistent = [&](const PyValue&) -> PyValue {
    throw Error("corrupt file: unexpected storage reference in the header", path, kSaveHint);
  };
  size_t pos = 0;
  for (int header = 0; header < 3; ++header) {  // magic number, protocol version, sys_info
    Unpickler u(bytes, pos, path, no_persistent);
    PyValue v = u.load();
    if (header == 1 && (v.kind != Kind::Int || v.integer != 1001))
      throw Error("unsupported legacy torch.save protocol version", path, kSaveHint);
    pos = u.position();
  }
  Unpickler body(bytes, pos, path, [&](const PyValue& pid) { return storages.resolve(pid); });
  PyValue root = body.load();
  Unpickler key_list(bytes, body.position(), path, no_persistent);
  PyValue keys = key_list.load();
  if (keys.kind != Kind::List) throw Error("corrupt file: storage key list missing", path, kSaveHint);
  pos = key_list.position();
  for (const auto& key : *keys.items) {
    if (key.kind != Kind::String || !storages.has(key.text))
      throw Error("corrupt file: unknown storage key in the key list", path, kSaveHint);
    if (bytes.size() - pos < 8) throw Error("truncated file: storage data missing", path, kSaveHint);
    int64_t numel = 0;
    std::memcpy(&numel, bytes.data() + pos, 8);  // little-endian int64 element count
    pos += 8;
    if (numel != storages.numel(key.text))
      throw Error("corrupt file: storage '" + key.text + "' has the wrong size", path, kSaveHint);
    pos += storages.fill(key.text, bytes.data() + pos, bytes.size() - pos);
  }
  return root;
}

// Legacy files begin with the pickled magic number 0x1950a86a20f9469cfc6c (protocol 2, LONG1 of 10 bytes).
bool is_legacy(const std::string& bytes) {
  static const std::string kMagic("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 14);
  return bytes.compare(0, kMagic.size(), kMagic) == 0;
}

}  // namespace

const PyValue* PyValue::get(const std::string& key) const {
  if (kind != Kind::Dict) return nullptr;
  for (const auto& [k, v] : *entries)
    if (k.kind == Kind::String && k.text == key) return &v;
  return nullptr;
}

std::string PyValue::describe() const {
  switch (kind) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::Tensor: return fmt::format("tensor ({})", fmt::join(tensor.sizes(), ", "));
    case Kind::List: return fmt::format("list of {}", items->size());
    case Kind::Tuple: return fmt::format("tuple of {}", items->size());
    case Kind::Global:
    case Kind::Object: return "object " + text;
    case Kind::Storage: return "storage";
    case Kind::Dict: {
      std::vector<std::string> keys;
      for (const auto& [k, v] : *entries) {
        if (keys.size() == 8) {
          keys.push_back("...");
          break;
        }
        keys.push_back(k.kind == Kind::String ? k.text : k.describe());
      }
      return fmt::format("dict with {} keys [{}]", entries->size(), fmt::join(keys, ", "));
    }
  }
  return "?";
}

PyValue read_pth(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(std::string("cannot open file: ") + std::strerror(errno), path);
  std::string head(16, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(in.gcount()));
  if (head.empty()) throw Error("file is empty", path, kSaveHint);
  try {
    if (head.compare(0, 4, "PK\x03\x04") == 0) {  // LibTorch's reader streams the zip
      std::error_code ec;
      const auto size = std::filesystem::file_size(path, ec);
      if (ec) throw Error("cannot read the file's size: " + ec.message(), path);
      return read_zip(path, size);
    }
    if (is_legacy(head)) return read_legacy(path, read_file(path));
  } catch (const c10::Error& e) {
    throw Error("corrupt torch.save file: " + first_line(e), path, "the file may be truncated; save it again");
  }
  throw Error("not a PyTorch file: neither the zip nor the legacy torch.save format", path, kSaveHint);
}

torch::Tensor read_tensor(const std::string& path) {
  PyValue v = read_pth(path);
  if (!v.is_tensor()) throw Error("expected a tensor, found " + v.describe(), path, "save it with torch.save(tensor, path)");
  return v.tensor;
}

TensorDict read_state_dict(const std::string& path) {
  const PyValue root = read_pth(path);
  auto tensor_dict = [](const PyValue* v) {
    if (!v || !v->is_dict() || v->entries->empty()) return false;
    for (const auto& [k, t] : *v->entries)
      if (k.kind != Kind::String || !t.is_tensor()) return false;
    return true;
  };
  const PyValue* dict = &root;
  for (const char* key : {"state_dict", "model_state_dict", "model", "net"}) {
    if (tensor_dict(dict)) break;
    dict = root.get(key);
  }
  if (!tensor_dict(dict))
    throw Error("no state dict (a dict of tensors) in the file; it holds " + root.describe(), path,
                "expected torch.save(model.state_dict()) or a checkpoint with a 'state_dict' entry");
  TensorDict out;
  for (const auto& [k, t] : *dict->entries) {
    if (out.contains(k.text)) throw Error("duplicate key '" + k.text + "'", path, kSaveHint);
    out.insert(k.text, t.tensor);
  }
  return out;
}

void write_pth(const std::string& path, const c10::IValue& value) {
  const std::vector<char> bytes = torch::pickle_save(value);
  write_file_atomic(path, std::string(bytes.begin(), bytes.end()));
}

void write_state_dict(const std::string& path, const TensorDict& state) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& item : state) dict.insert(item.key(), item.value().detach().cpu());
  write_pth(path, dict);
}

void write_tensor(const std::string& path, const torch::Tensor& tensor) { write_pth(path, tensor.detach().cpu()); }

}  // namespace adafocus::io
