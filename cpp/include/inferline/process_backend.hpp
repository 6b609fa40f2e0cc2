// A backend whose model instances are child processes fed through shared memory: one region
// per instance holds a batch's inputs and outputs, one socket message wakes each side.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <sys/types.h>
#include <thread>
#include <vector>

#include "inferline/backend.hpp"
#include "inferline/block_pool.hpp"

namespace inferline {

/// The shared region's layout, read by both sides: `header_words` little-endian uint64 at
/// offset 0 — magic, inputs, outputs, max batch, error offset, error capacity, error length,
/// then one offset per input and per output. Every area is 64-byte aligned.
namespace process_protocol {
inline constexpr std::uint64_t magic = 0x314c4e49464e4950ULL;  // "PINFNIL1"
inline constexpr std::size_t max_tensors = 64;
inline constexpr std::size_t header_words = 7 + 2 * max_tensors;
inline constexpr std::size_t error_capacity = 4096;
/// Words of the header (indices into the uint64 array at offset 0).
enum word : std::size_t { w_magic, w_inputs, w_outputs, w_max_batch, w_err_off, w_err_cap,
                          w_err_len, w_offsets };
/// Messages (one uint64 each) on the instance's socket. Parent -> child: the batch size.
/// Child -> parent: one of these.
enum reply : std::uint64_t { ok = 0, failed = 1, ready = 2, load_failed = 3 };
/// File descriptors the child finds open: the region (memfd) and its socket.
inline constexpr int child_region_fd = 3;
inline constexpr int child_socket_fd = 4;
}  // namespace process_protocol

/// What a process backend runs and how its batches are shaped.
struct process_config {
  std::string model;                     ///< the model's name, for messages
  std::vector<std::string> argv;         ///< the child's command line (argv[0] a path)
  std::vector<std::size_t> input_bytes;  ///< bytes per item of each input
  std::vector<std::size_t> output_bytes;  ///< bytes per item of each declared output
  std::size_t max_batch_size = 1;        ///< rows per batch at most
  std::size_t instances = 1;             ///< child processes (one per scheduler instance)
  std::int64_t execution_timeout_ns = 0;  ///< a batch running longer kills its child; 0: none
  std::int64_t start_timeout_ns = 60'000'000'000;  ///< a child must be ready within this
  std::int64_t stop_grace_ns = 2'000'000'000;      ///< SIGTERM, then SIGKILL after this
};

/// Runs each batch in the child process of its instance (`batch::instance`): the worker copies
/// the inputs into the instance's shared region, sends the batch size, and waits (no GIL, no
/// lock another instance needs) for the child's reply; outputs are copied from the region into
/// a pooled output block that the batch's requests share (`request::output`, `row`). A child
/// that dies fails its batch with a message naming the signal or exit code and is restarted:
/// at once after one failure, then on the instance's next batch after 100 ms doubling up to
/// 5 s while failures repeat. One that dies while idle fails nothing: a monitor thread looks
/// every 100 ms, reaps it and starts its successor. A batch past `execution_timeout_ns` kills
/// its child (SIGKILL); its clock (and the scheduler's, through `batch::start_clock`) starts
/// when the instance's child is ready to take it, so a restart (spawn, import, model load) is
/// never charged to the batch that waits for it. `on_shutdown` (and
/// the destructor) ends every child: SIGTERM, SIGKILL after the grace, each reaped.
/// Thread-safe: instances are independent; each is used by one worker at a time (a mutex).
class process_backend final : public backend {
 public:
  /// Creates the regions and starts every child, waiting until each has loaded its model.
  /// Throws std::invalid_argument for a bad config and std::runtime_error (with the child's
  /// message) when a child cannot start. Blocks: call without the GIL.
  explicit process_backend(process_config config);
  /// Ends the children (see on_shutdown) and unmaps the regions.
  ~process_backend() override;

  /// Runs `b` in instance `b.instance`'s child (see the class comment).
  void run(batch& b) override;
  /// Ends every child and refuses later batches. Idempotent; blocks up to the grace.
  void on_shutdown() noexcept override;
  /// "process".
  std::string platform() const override { return "process"; }

  /// The pid of each instance's child once it has loaded its model (-1 while none is ready).
  /// Thread-safe (a snapshot).
  std::vector<long> pids() const;
  /// Children started after the first ones (restarts). Thread-safe.
  std::uint64_t restarts() const noexcept { return restarts_.load(std::memory_order_relaxed); }

 private:
  struct instance;
  void start(instance& in);
  void wait_ready(instance& in);
  [[noreturn]] void lost(instance& in, const std::string& why);
  void reap(instance& in, bool kill_first) noexcept;
  void restart(instance& in, bool wait) noexcept;
  bool check_idle(instance& in) noexcept;
  std::string child_error(const instance& in) const;

  process_config config_;
  std::vector<std::size_t> in_offsets_, out_offsets_;
  std::size_t region_bytes_ = 0;
  std::vector<std::unique_ptr<instance>> instances_;
  block_pool* outputs_ = nullptr;
  void monitor_main();

  std::atomic<bool> stopping_{false};
  std::thread monitor_;  // reaps and restarts children that die while idle
  std::mutex monitor_mutex_;
  std::condition_variable monitor_cv_;
  std::atomic<std::uint64_t> restarts_{0};
  std::once_flag shutdown_once_;
};

}  // namespace inferline
