// Typed-seam bindings: the limits and defaults table, TensorSpec and SchedulerConfig.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "inferline/limits.hpp"
#include "inferline/scheduler_config.hpp"
#include "tensor_spec.hpp"

namespace py = pybind11;

namespace inferline::bindings {
namespace {

// `value` (in units of `ns_per_unit` nanoseconds) as whole nanoseconds; ValueError unless it
// is a finite number >= 0 that fits.
std::int64_t to_ns(double value, double ns_per_unit, const char* what) {
  const double ns = value * ns_per_unit;
  if (!(value >= 0) || !std::isfinite(ns) || ns >= 9.2e18) {
    throw py::value_error(std::string(what) + " must be a finite number >= 0, got " +
                          py::repr(py::float_(value)).cast<std::string>());
  }
  return static_cast<std::int64_t>(ns);
}

}  // namespace

void register_types(py::module_& m) {
  py::class_<limits_table>(m, "LimitsTable",
                           "The largest values a model configuration may ask for (read-only).")
      .def_readonly("max_batch_size", &limits_table::max_batch_size)
      .def_readonly("max_queue_size", &limits_table::max_queue_size)
      .def_readonly("max_priority_levels", &limits_table::max_priority_levels)
      .def_readonly("max_instances", &limits_table::max_instances)
      .def_readonly("max_ndim", &limits_table::max_ndim)
      .def_readonly("max_queue_memory_bytes", &limits_table::max_queue_memory_bytes)
      .def_readonly("max_batch_tokens", &limits_table::max_batch_tokens)
      .def_readonly("max_execution_timeout_ms", &limits_table::max_execution_timeout_ms);
  py::class_<defaults_table>(m, "DefaultsTable",
                             "What a model gets for every setting it leaves out (read-only).")
      .def_readonly("max_batch_size", &defaults_table::max_batch_size)
      .def_readonly("max_queue_delay_ms", &defaults_table::max_queue_delay_ms)
      .def_readonly("max_queue_size", &defaults_table::max_queue_size)
      .def_readonly("priority_levels", &defaults_table::priority_levels)
      .def_readonly("instances", &defaults_table::instances)
      .def_readonly("idle_spin_us", &defaults_table::idle_spin_us)
      .def_readonly("execution_timeout_ms", &defaults_table::execution_timeout_ms)
      .def_readonly("shutdown_grace_ms", &defaults_table::shutdown_grace_ms);
  m.attr("limits") = py::cast(limits_table{});
  m.attr("defaults") = py::cast(defaults_table{});

  py::class_<tensor_spec>(m, "TensorSpec",
                          "One declared input or output per item (immutable). The float kind "
                          "of the finite check is derived from the dtype; BF16 travels as "
                          "uint16 bit patterns, so it is declared with bf16=True.")
      .def(py::init(&make_tensor_spec), py::arg("name"), py::arg("dtype"),
           py::arg("shape") = std::vector<py::ssize_t>{}, py::arg("finite") = false,
           py::kw_only(), py::arg("bf16") = false)
      .def_readonly("name", &tensor_spec::name)
      .def_readonly("dtype", &tensor_spec::dtype)
      .def_property_readonly("shape",
                             [](const tensor_spec& t) { return py::tuple(py::cast(t.shape)); })
      .def_readonly("finite", &tensor_spec::finite)
      .def_readonly("bf16", &tensor_spec::bf16)
      .def_readonly("item_bytes", &tensor_spec::item_bytes, "Bytes of one item.")
      .def("__repr__", [](const tensor_spec& t) {
        return "TensorSpec('" + t.name + "', " + py::str(t.dtype).cast<std::string>() + ", " +
               shape_str(t.shape) + (t.finite ? ", finite=True" : "") +
               (t.bf16 ? ", bf16=True" : "") + ")";
      });

  py::class_<scheduler_config>(m, "SchedulerConfig",
                               "Batching and capacity settings of one model version "
                               "(immutable; defaults and limits from _core.defaults/limits).")
      .def(py::init([](std::string name, std::size_t max_batch_size, double max_queue_delay_ms,
                       std::size_t max_queue_size, std::size_t priority_levels,
                       std::size_t instances, double idle_spin_us, const std::string& policy,
                       double max_latency_ms, double execution_timeout_ms,
                       std::size_t max_batch_tokens, int cost_input, bool on_loop) {
             scheduler_config c;
             c.name = std::move(name);
             c.max_batch_size = max_batch_size;
             c.max_queue_delay_ns = to_ns(max_queue_delay_ms, 1e6, "max_queue_delay_ms");
             c.max_queue_size = max_queue_size;
             c.priority_levels = priority_levels;
             c.instances = instances;
             c.idle_spin_ns = to_ns(idle_spin_us, 1e3, "idle_spin_us");
             const auto p = batch_policy_from_name(policy);
             if (!p) {
               throw py::value_error("policy must be 'work_conserving', 'fixed_window' or "
                                     "'latency_target', got '" + policy + "'");
             }
             c.policy = *p;
             c.max_latency_ns = to_ns(max_latency_ms, 1e6, "max_latency_ms");
             c.execution_timeout_ns = to_ns(execution_timeout_ms, 1e6, "execution_timeout_ms");
             c.max_batch_tokens = max_batch_tokens;
             c.cost_input = cost_input;
             c.on_loop = on_loop;
             validate(c);  // std::invalid_argument -> ValueError naming the setting
             return c;
           }),
           py::arg("name") = std::string(), py::kw_only(),
           py::arg("max_batch_size") = defaults.max_batch_size,
           py::arg("max_queue_delay_ms") = defaults.max_queue_delay_ms,
           py::arg("max_queue_size") = defaults.max_queue_size,
           py::arg("priority_levels") = defaults.priority_levels,
           py::arg("instances") = defaults.instances,
           py::arg("idle_spin_us") = defaults.idle_spin_us,
           py::arg("policy") = std::string(batch_policy_name(batch_policy::work_conserving)),
           py::arg("max_latency_ms") = 0.0,
           py::arg("execution_timeout_ms") = defaults.execution_timeout_ms,
           py::arg("max_batch_tokens") = std::size_t{0}, py::arg("cost_input") = -1,
           py::arg("on_loop") = false)
      .def_readonly("on_loop", &scheduler_config::on_loop)
      .def_readonly("max_batch_tokens", &scheduler_config::max_batch_tokens)
      .def_readonly("cost_input", &scheduler_config::cost_input)
      .def_readonly("name", &scheduler_config::name)
      .def_readonly("max_batch_size", &scheduler_config::max_batch_size)
      .def_property_readonly("max_queue_delay_ms",
                             [](const scheduler_config& c) {
                               return static_cast<double>(c.max_queue_delay_ns) / 1e6;
                             })
      .def_readonly("max_queue_size", &scheduler_config::max_queue_size)
      .def_readonly("priority_levels", &scheduler_config::priority_levels)
      .def_readonly("instances", &scheduler_config::instances)
      .def_property_readonly(
          "idle_spin_us",
          [](const scheduler_config& c) { return static_cast<double>(c.idle_spin_ns) / 1e3; })
      .def_property_readonly(
          "policy",
          [](const scheduler_config& c) { return std::string(batch_policy_name(c.policy)); })
      .def_property_readonly(
          "max_latency_ms",
          [](const scheduler_config& c) { return static_cast<double>(c.max_latency_ns) / 1e6; })
      .def_property_readonly("execution_timeout_ms",
                             [](const scheduler_config& c) {
                               return static_cast<double>(c.execution_timeout_ns) / 1e6;
                             })
      .def("__repr__", [](const scheduler_config& c) {
        return "SchedulerConfig(name='" + c.name + "', max_batch_size=" +
               std::to_string(c.max_batch_size) + ", max_queue_delay_ms=" +
               py::repr(py::float_(static_cast<double>(c.max_queue_delay_ns) / 1e6))
                   .cast<std::string>() +
               ", max_queue_size=" + std::to_string(c.max_queue_size) +
               ", priority_levels=" + std::to_string(c.priority_levels) +
               ", instances=" + std::to_string(c.instances) + ", idle_spin_us=" +
               py::repr(py::float_(static_cast<double>(c.idle_spin_ns) / 1e3))
                   .cast<std::string>() +
               ", policy='" + std::string(batch_policy_name(c.policy)) + "', max_latency_ms=" +
               py::repr(py::float_(static_cast<double>(c.max_latency_ns) / 1e6))
                   .cast<std::string>() +
               ", execution_timeout_ms=" +
               py::repr(py::float_(static_cast<double>(c.execution_timeout_ns) / 1e6))
                   .cast<std::string>() +
               ", max_batch_tokens=" + std::to_string(c.max_batch_tokens) +
               ", cost_input=" + std::to_string(c.cost_input) +
               (c.on_loop ? ", on_loop=True" : "") + ")";
      });
}

}  // namespace inferline::bindings
