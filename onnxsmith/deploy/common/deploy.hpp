// What every onnxsmith deployment program shares (copied next to its main.cpp by onnxsmith): a minimal .npy reader
// and writer (NumPy format 1.0-3.0, little-endian, C order; one array per file), and the program's frame: the
// command line ARTIFACT_DIR OUTPUT_DIR INPUT.npy..., each input checked against its declared dtype and shape,
// each output written as OUTPUT_DIR/FILE.npy, and errors reported as one line with exit status 1 (2: usage).
#pragma once
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace npy {

// What a file may declare before anything is allocated for it.
constexpr size_t kMaxHeader = 65536;  // bytes of the header dict (NumPy writes well under 1 KiB)
constexpr size_t kMaxRank = 64;       // NumPy's own limit (NPY_MAXDIMS)

// The element types a deployment program reads and writes: NumPy's descr (little-endian or byte-order free) and
// its item size. Anything else (big-endian, strings, objects, complex, structured) is refused by name.
inline const std::vector<std::pair<std::string, size_t>>& dtypes() {
  static const std::vector<std::pair<std::string, size_t>> known = {
      {"|b1", 1}, {"|i1", 1}, {"<i2", 2}, {"<i4", 4}, {"<i8", 8}, {"|u1", 1}, {"<u2", 2},
      {"<u4", 4}, {"<u8", 8}, {"<f2", 2}, {"<f4", 4}, {"<f8", 8}};
  return known;
}

// Text from a file or the command line as it may appear in a one-line message: bytes outside printable ASCII as
// \xNN, at most `limit` characters.
inline std::string printable(const std::string& text, size_t limit = 64) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (out.size() >= limit) return out + "...";
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += char(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// The item size of a descr in dtypes(); anything else throws.
inline size_t item_size(const std::string& descr) {
  for (const auto& [d, size] : dtypes())
    if (d == descr) return size;
  throw std::runtime_error("unsupported dtype '" + printable(descr) + "' (little-endian bool, int8-64, uint8-64, "
                           "float16/32/64 only)");
}

// The element count of a shape times `itemsize`, or false when a dim is negative or the product (ignoring a
// zero dim) does not fit an int64.
inline bool byte_size(const std::vector<int64_t>& shape, size_t itemsize, uint64_t& bytes) {
  constexpr uint64_t kLimit = uint64_t(INT64_MAX);
  uint64_t product = itemsize;
  bool empty = false;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d == 0) { empty = true; continue; }
    if (product > kLimit / uint64_t(d)) return false;
    product *= uint64_t(d);
  }
  bytes = empty ? 0 : product;
  return true;
}

struct Array {
  std::string descr;            // e.g. "<f4", "|u1": one of dtypes()
  std::vector<int64_t> shape;   // every dim >= 0, the product checked by load()
  std::vector<char> data;       // raw bytes, C order
  size_t count() const {
    uint64_t bytes = 0;
    if (!byte_size(shape, 1, bytes)) throw std::runtime_error("shape " + shape_text(shape) + " has no element count");
    return size_t(bytes);
  }
};

// Whether a loaded shape fits a declared one (-1: a dynamic dimension, any size).
inline bool fits(const std::vector<int64_t>& shape, const std::vector<int64_t>& declared) {
  if (shape.size() != declared.size()) return false;
  for (size_t i = 0; i < shape.size(); ++i)
    if (declared[i] >= 0 && shape[i] != declared[i]) return false;
  return true;
}

// The header dict, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }: the three keys once each, in
// any order, a trailing comma allowed, blanks between tokens and after the dict; nothing else.
class HeaderParser {
 public:
  explicit HeaderParser(const std::string& text) : text_(text) {}

  void parse(std::string& descr, bool& fortran_order, std::vector<int64_t>& shape) {
    bool seen_descr = false, seen_order = false, seen_shape = false;
    blanks();
    expect('{', "does not start with '{'");
    for (;;) {
      blanks();
      if (peek() == '}') break;
      const std::string key = string_literal("a key");
      blanks();
      expect(':', "has no ':' after '" + printable(key) + "'");
      blanks();
      if (key == "descr" && !seen_descr) {
        descr = string_literal("the descr");
        seen_descr = true;
      } else if (key == "fortran_order" && !seen_order) {
        fortran_order = boolean();
        seen_order = true;
      } else if (key == "shape" && !seen_shape) {
        shape = tuple();
        seen_shape = true;
      } else if (key == "descr" || key == "fortran_order" || key == "shape") {
        fail("repeats '" + key + "'");
      } else {
        fail("has an unknown key '" + printable(key) + "' (only descr, fortran_order, shape)");
      }
      blanks();
      if (peek() == ',') { ++at_; continue; }
      if (peek() != '}') fail("has no ',' or '}' after '" + key + "'");
    }
    ++at_;  // '}'
    blanks();
    if (at_ != text_.size()) fail("has more after its closing '}'");
    if (!seen_descr) fail("has no 'descr'");
    if (!seen_order) fail("has no 'fortran_order'");
    if (!seen_shape) fail("has no 'shape'");
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("header " + what + " (at byte " + std::to_string(at_) + ")");
  }
  char peek() const { return at_ < text_.size() ? text_[at_] : '\0'; }
  void blanks() {
    while (at_ < text_.size() && (text_[at_] == ' ' || text_[at_] == '\t' || text_[at_] == '\n' || text_[at_] == '\r'))
      ++at_;
  }
  void expect(char c, const std::string& what) {
    if (peek() != c || at_ >= text_.size()) fail(what);
    ++at_;
  }
  std::string string_literal(const std::string& what) {
    const char quote = peek();
    if (at_ >= text_.size() || (quote != '\'' && quote != '"')) fail("has no quoted string for " + what);
    const size_t start = ++at_;
    while (at_ < text_.size() && text_[at_] != quote) {
      const unsigned char c = static_cast<unsigned char>(text_[at_]);
      if (c == '\\' || c < 0x20 || c >= 0x7f) fail("has an escape, a control byte or a non-ASCII byte in " + what);
      if (at_ - start > 64) fail("has a string over 64 bytes for " + what);
      ++at_;
    }
    if (at_ >= text_.size()) fail("has an unterminated string for " + what);
    return text_.substr(start, at_++ - start);
  }
  bool boolean() {
    if (text_.compare(at_, 4, "True") == 0) { at_ += 4; return true; }
    if (text_.compare(at_, 5, "False") == 0) { at_ += 5; return false; }
    fail("has a 'fortran_order' that is neither True nor False");
  }
  int64_t integer() {
    const size_t start = at_;
    uint64_t value = 0;
    while (at_ < text_.size() && text_[at_] >= '0' && text_[at_] <= '9') {
      const uint64_t digit = uint64_t(text_[at_] - '0');
      if (value > (uint64_t(INT64_MAX) - digit) / 10) fail("has a dim over 2**63-1 in 'shape'");
      value = value * 10 + digit;
      ++at_;
    }
    if (at_ == start) {
      if (peek() == '-') fail("has a negative dim in 'shape'");
      fail("has a dim in 'shape' that is not digits");
    }
    return int64_t(value);
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> dims;
    expect('(', "has a 'shape' that is not a tuple");
    blanks();
    if (peek() == ')') { ++at_; return dims; }
    for (;;) {
      blanks();
      dims.push_back(integer());
      if (dims.size() > kMaxRank) fail("has a 'shape' of over " + std::to_string(kMaxRank) + " dims");
      blanks();
      if (peek() == ')') { ++at_; return dims; }
      expect(',', "has a dim in 'shape' that is not digits");
      blanks();
      if (peek() == ')') { ++at_; return dims; }
    }
  }

  const std::string& text_;
  size_t at_ = 0;
};

// Reads PATH: the magic, the version (1.0, 2.0, 3.0), the header's length, syntax, dtype, order and dims, and the
// data's size against what is left of the file are all checked before anything is allocated for the data; a file
// holding less or more than its header declares is refused. Errors name the file and what is wrong, in one line.
inline Array load(const std::string& path) {
  const std::string name = printable(path, 4096);
  auto fail = [&](const std::string& what) -> std::runtime_error { return std::runtime_error(name + ": " + what); };
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) throw fail("is a directory, not a .npy file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + name);
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  in.seekg(0, std::ios::beg);
  if (end < 0 || !in) throw std::runtime_error("cannot read " + name);
  const uint64_t file_size = uint64_t(end);

  unsigned char prefix[12] = {};
  in.read(reinterpret_cast<char*>(prefix), 8);
  if (!in || std::memcmp(prefix, "\x93NUMPY", 6) != 0) throw fail("is not a .npy file (no \\x93NUMPY magic)");
  const unsigned major = prefix[6], minor = prefix[7];
  if ((major != 1 && major != 2 && major != 3) || minor != 0)
    throw fail("has .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
               " (1.0, 2.0 and 3.0 only)");
  const size_t length_bytes = major == 1 ? 2 : 4;
  in.read(reinterpret_cast<char*>(prefix + 8), std::streamsize(length_bytes));
  if (!in) throw fail("ends inside its header length");
  uint64_t length = 0;  // little-endian whatever the host
  for (size_t i = 0; i < length_bytes; ++i) length |= uint64_t(prefix[8 + i]) << (8 * i);
  const uint64_t data_start = 8 + length_bytes + length;
  if (length > kMaxHeader)
    throw fail("declares a " + std::to_string(length) + "-byte header (at most " + std::to_string(kMaxHeader) + ")");
  if (data_start > file_size)
    throw fail("declares a " + std::to_string(length) + "-byte header, the file holds " +
               std::to_string(file_size - 8 - length_bytes) + " bytes after the header length");
  std::string header(size_t(length), '\0');
  in.read(header.data(), std::streamsize(length));
  if (!in) throw std::runtime_error("cannot read " + name);

  Array array;
  bool fortran_order = false;
  try {
    HeaderParser(header).parse(array.descr, fortran_order, array.shape);
  } catch (const std::runtime_error& e) {
    throw fail(e.what());
  }
  if (!array.descr.empty() && array.descr[0] == '>')
    throw fail("is big-endian ('" + printable(array.descr) + "'); save it little-endian (arr.astype(arr.dtype.newbyteorder('<')))");
  size_t itemsize = 0;
  try {
    itemsize = item_size(array.descr);
  } catch (const std::runtime_error& e) {
    throw fail(e.what());
  }
  if (fortran_order) throw fail("is in Fortran order; save it in C order (np.ascontiguousarray)");
  uint64_t bytes = 0;
  if (!byte_size(array.shape, itemsize, bytes))
    throw fail("has shape " + shape_text(array.shape) + ", whose size in bytes overflows");
  const uint64_t left = file_size - data_start;
  if (left < bytes)
    throw fail("holds " + std::to_string(left) + " bytes of data, its header declares " + std::to_string(bytes));
  if (left > bytes)
    throw fail("holds " + std::to_string(left - bytes) + " bytes after the " + std::to_string(bytes) +
               " its header declares (one array per file)");
  array.data.resize(size_t(bytes));
  in.read(array.data.data(), std::streamsize(bytes));
  if (!in) throw std::runtime_error("cannot read " + name);
  return array;
}

// Writes one array as a .npy 1.0 file: the descr must be one of dtypes(), every dim >= 0 and `bytes` exactly the
// shape's size. Written to PATH.part and renamed, so a failed write leaves no half-written PATH.
inline void save(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
                 const void* data, size_t bytes) {
  const std::string name = printable(path, 4096);
  size_t itemsize = 0;
  try {
    itemsize = item_size(descr);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("cannot write " + name + ": " + e.what());
  }
  uint64_t want = 0;
  if (shape.size() > kMaxRank || !byte_size(shape, itemsize, want))
    throw std::runtime_error("cannot write " + name + ": its shape has a negative dim, over " +
                             std::to_string(kMaxRank) + " dims or a size that overflows");
  if (want != bytes || (bytes && !data))
    throw std::runtime_error("cannot write " + name + ": its shape holds " + std::to_string(want) + " bytes, " +
                             std::to_string(bytes) + " were given");
  std::string dims;  // as NumPy writes it: (), (5,), (2, 3)
  for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) dims += ",";
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  if (header.size() > 65535) throw std::runtime_error("cannot write " + name + ": header over 65535 bytes");
  const std::string part = path + ".part";
  {
    std::ofstream out(part, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write " + name);
    out.write("\x93NUMPY\x01\x00", 8);
    const char length[2] = {char(header.size() & 0xff), char(header.size() >> 8)};
    out.write(length, 2);
    out << header;
    out.write(static_cast<const char*>(data), std::streamsize(bytes));
    out.close();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(part, ignored);
      throw std::runtime_error("cannot write " + name);
    }
  }
  std::error_code error;
  std::filesystem::rename(part, path, error);
  if (error) {
    std::error_code ignored;
    std::filesystem::remove(part, ignored);
    throw std::runtime_error("cannot write " + name + ": " + error.message());
  }
}

}  // namespace npy

namespace deploy {

// A model input or output as compiled: its name, its file stem (NAME.npy is file + ".npy": the name itself where it
// is a safe file name, else onnxsmith's safe form of it, see programs.json), the .npy dtype (e.g. "<f4") and shape
// (-1: a dynamic dimension).
struct Tensor {
  const char* name;
  const char* file;
  const char* descr;
  std::vector<int64_t> shape;
};

// The command line: ARTIFACT_DIR OUTPUT_DIR, then one .npy per input in the order of the program's inputs.
struct Arguments {
  std::filesystem::path artifact, output;
  std::vector<std::string> inputs;
};

// Loads an input's .npy and checks it has the declared dtype and shape.
inline npy::Array load_input(const Tensor& spec, const std::string& path) {
  npy::Array array = npy::load(path);
  if (array.descr != spec.descr || !npy::fits(array.shape, spec.shape))
    throw std::runtime_error(std::string("input '") + spec.name + "' must be " + spec.descr + " " +
                             npy::shape_text(spec.shape) + " (-1: any size); " + path + " holds " + array.descr +
                             " " + npy::shape_text(array.shape));
  return array;
}

// Writes an output as OUTPUT_DIR/FILE.npy (creating OUTPUT_DIR); the file stem comes from onnxsmith, never from
// the name, so no output lands outside OUTPUT_DIR.
inline void save_output(const Arguments& args, const Tensor& spec, const std::vector<int64_t>& shape,
                        const void* data, size_t bytes) {
  std::filesystem::create_directories(args.output);
  npy::save((args.output / (std::string(spec.file) + ".npy")).string(), spec.descr, shape, data, bytes);
}

// The whole of main(): checks the command line against `inputs` (usage: exit 2), runs `infer`, and turns an
// exception into "error: ..." on stderr and exit 1.
inline int main(int argc, char** argv, const std::vector<Tensor>& inputs, void (*infer)(const Arguments&)) {
  if (argc != 3 + int(inputs.size())) {
    std::cerr << "usage: " << argv[0] << " ARTIFACT_DIR OUTPUT_DIR";
    for (const auto& t : inputs) std::cerr << " " << t.file << ".npy";
    std::cerr << "\n";
    return 2;
  }
  try {
    infer(Arguments{argv[1], argv[2], std::vector<std::string>(argv + 3, argv + argc)});
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace deploy
