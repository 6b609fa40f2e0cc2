// One declared tensor as the bindings see it: construction checks and the exact-input test.
#include "tensor_spec.hpp"

#include <stdexcept>
#include <utility>

#include "inferline/limits.hpp"

namespace py = pybind11;

namespace inferline::bindings {
namespace {

float_kind kind_of(const py::dtype& dt, bool bf16) {
  if (bf16) return float_kind::bf16;
  if (dt.kind() != 'f') return float_kind::none;
  switch (dt.itemsize()) {
    case 2: return float_kind::fp16;
    case 4: return float_kind::fp32;
    case 8: return float_kind::fp64;
    default: return float_kind::none;  // long double: no protocol datatype, no check
  }
}

std::string type_name(py::handle o) {
  return py::str(py::type::handle_of(o).attr("__name__")).cast<std::string>();
}

}  // namespace

tensor_spec make_tensor_spec(std::string name, const py::object& dtype,
                             const std::vector<py::ssize_t>& shape, bool finite, bool bf16) {
  if (name.empty()) throw std::invalid_argument("tensor name must be a non-empty string");
  tensor_spec t;
  t.name = std::move(name);
  t.dtype = py::dtype::from_args(dtype);
  const char k = t.dtype.kind();
  if (k == 'O' || k == 'S' || k == 'U' || k == 'V') {
    throw std::invalid_argument("tensor '" + t.name +
                                "': BYTES tensors cannot be batched natively; declare a "
                                "fixed-size numeric datatype");
  }
  if (shape.size() > limits.max_ndim) {
    throw std::invalid_argument("tensor '" + t.name + "': at most " +
                                std::to_string(limits.max_ndim) + " dimensions per item, got " +
                                std::to_string(shape.size()));
  }
  for (const py::ssize_t d : shape) {
    if (d < 1) {
      throw std::invalid_argument("tensor '" + t.name +
                                  "': every dimension must be a positive int, got shape " +
                                  shape_str(shape));
    }
    t.count *= static_cast<std::size_t>(d);
  }
  if (bf16 && !t.dtype.equal(py::dtype::of<std::uint16_t>())) {
    throw std::invalid_argument("tensor '" + t.name + "': bf16=True needs dtype uint16 (the "
                                "bit patterns), got " + py::str(t.dtype).cast<std::string>());
  }
  t.shape = shape;
  t.finite = finite;
  t.bf16 = bf16;
  t.kind = kind_of(t.dtype, bf16);
  t.item_bytes = t.count * static_cast<std::size_t>(t.dtype.itemsize());
  return t;
}

std::string shape_str(const std::vector<py::ssize_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

bool is_exact(const tensor_spec& t, py::handle x) {
  if (!py::isinstance<py::array>(x)) return false;
  auto a = py::reinterpret_borrow<py::array>(x);
  if (a.ndim() != static_cast<py::ssize_t>(t.shape.size())) return false;
  for (std::size_t i = 0; i < t.shape.size(); ++i) {
    if (a.shape(static_cast<py::ssize_t>(i)) != t.shape[i]) return false;
  }
  if (!(a.flags() & py::array::c_style)) return false;
  return a.dtype().equal(t.dtype);
}

namespace {

// "has dtype D and shape S; expected `want`" (or the type when `x` is not an array).
std::string got_vs(py::handle x, const std::string& want) {
  if (!py::isinstance<py::array>(x)) return "is " + type_name(x) + "; expected an array of " + want;
  auto a = py::reinterpret_borrow<py::array>(x);
  const std::vector<py::ssize_t> got(a.shape(), a.shape() + a.ndim());
  std::string s = "has dtype " + py::str(a.dtype()).cast<std::string>() + " and shape " +
                  shape_str(got) + "; expected " + want;
  if (!(a.flags() & py::array::c_style)) s += ", C-contiguous";
  return s;
}

}  // namespace

std::string mismatch(const tensor_spec& t, py::handle x) {
  return got_vs(x, py::str(t.dtype).cast<std::string>() + " and shape " + shape_str(t.shape));
}

bool is_exact_rows(const tensor_spec& t, py::handle x, py::ssize_t* rows) {
  if (!py::isinstance<py::array>(x)) return false;
  auto a = py::reinterpret_borrow<py::array>(x);
  if (a.ndim() != static_cast<py::ssize_t>(t.shape.size()) + 1) return false;
  for (std::size_t i = 0; i < t.shape.size(); ++i) {
    if (a.shape(static_cast<py::ssize_t>(i) + 1) != t.shape[i]) return false;
  }
  if (!(a.flags() & py::array::c_style) || !a.dtype().equal(t.dtype)) return false;
  *rows = a.shape(0);
  return true;
}

std::string mismatch_rows(const tensor_spec& t, py::handle x) {
  std::string want = "(N";
  for (auto d : t.shape) want += ", " + std::to_string(d);
  want += t.shape.empty() ? ",)" : ")";
  return got_vs(x, py::str(t.dtype).cast<std::string>() + " and shape " + want +
                       " (a leading batch dimension N)");
}

}  // namespace inferline::bindings
