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
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

struct Array {
  std::string descr;            // e.g. "<f4", "|u1"
  std::vector<int64_t> shape;
  std::vector<char> data;       // raw bytes, C order
  size_t count() const {
    return std::accumulate(shape.begin(), shape.end(), size_t{1}, [](size_t a, int64_t b) { return a * size_t(b); });
  }
};

// Whether a loaded shape fits a declared one (-1: a dynamic dimension, any size).
inline bool fits(const std::vector<int64_t>& shape, const std::vector<int64_t>& declared) {
  if (shape.size() != declared.size()) return false;
  for (size_t i = 0; i < shape.size(); ++i)
    if (declared[i] >= 0 && shape[i] != declared[i]) return false;
  return true;
}

inline size_t item_size(const std::string& descr) {
  if (descr.size() < 3) throw std::runtime_error("unknown dtype " + descr);
  return std::stoul(descr.substr(2));
}

inline std::string header_value(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw std::runtime_error("npy header has no '" + key + "'");
  at = header.find(':', at) + 1;
  while (header[at] == ' ') ++at;
  if (header[at] == '\'') return header.substr(at + 1, header.find('\'', at + 1) - at - 1);
  if (header[at] == '(') return header.substr(at + 1, header.find(')', at) - at - 1);
  return header.substr(at, header.find_first_of(",}", at) - at);
}

inline Array load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + " is not a .npy file");
  uint32_t length = 0;
  if (magic[6] == 1) {
    uint16_t short_length = 0;
    in.read(reinterpret_cast<char*>(&short_length), 2);
    length = short_length;
  } else {
    in.read(reinterpret_cast<char*>(&length), 4);
  }
  std::string header(length, '\0');
  in.read(header.data(), length);
  Array array;
  array.descr = header_value(header, "descr");
  if (array.descr[0] == '>') throw std::runtime_error(path + " is big-endian; save it little-endian");
  if (header_value(header, "fortran_order") != "False") throw std::runtime_error(path + " is not in C order");
  std::string dims = header_value(header, "shape");
  for (size_t pos = 0; pos < dims.size();) {
    size_t end = dims.find(',', pos);
    std::string dim = dims.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    if (dim.find_first_not_of(' ') != std::string::npos) array.shape.push_back(std::stoll(dim));
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  array.data.resize(array.count() * item_size(array.descr));
  in.read(array.data.data(), std::streamsize(array.data.size()));
  if (!in) throw std::runtime_error(path + " holds less data than its header declares");
  return array;
}

inline void save(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
                 const void* data, size_t bytes) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ",";
  if (shape.size() > 1) dims.pop_back();
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write " + path);
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t length = uint16_t(header.size());
  out.write(reinterpret_cast<const char*>(&length), 2);
  out << header;
  out.write(static_cast<const char*>(data), std::streamsize(bytes));
  if (!out) throw std::runtime_error("cannot write " + path);
}

inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
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
