// The process backend: child processes that run a model on batches placed in shared memory.
#include "inferline/process_backend.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "inferline/clock.hpp"

extern char** environ;

namespace inferline {
namespace {

namespace pp = process_protocol;

constexpr std::size_t align64(std::size_t n) { return (n + 63) & ~std::size_t{63}; }
constexpr std::int64_t backoff_first_ns = 100'000'000;
constexpr std::int64_t backoff_max_ns = 5'000'000'000;

// The wait before the next start after `failures` consecutive failures (deaths or failed
// starts): none after one, then 100 ms doubling up to 5 s; a successful batch resets the count.
std::int64_t restart_delay(int failures) noexcept {
  if (failures <= 1) return 0;
  return std::min(backoff_max_ns, backoff_first_ns << std::min(failures - 2, 10));
}

std::int64_t add_saturating(std::int64_t stamp, std::int64_t duration) noexcept {
  return duration >= no_deadline - stamp ? no_deadline : stamp + duration;
}

std::string errno_text(const char* what) { return std::string(what) + ": " + strerror(errno); }

// "SIGKILL" for 9 (glibc names), else "signal 9".
std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev != nullptr ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) return "died with " + signal_name(WTERMSIG(status));
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  return "stopped (wait status " + std::to_string(status) + ")";
}

// A descriptor at 10 or above, close-on-exec, so the spawn's dup2 onto 3 and 4 never meets it.
int high_fd(int fd) {
  const int moved = fcntl(fd, F_DUPFD_CLOEXEC, 10);
  const int saved = errno;
  close(fd);
  if (moved < 0) {
    errno = saved;
    throw std::runtime_error(errno_text("process backend: fcntl"));
  }
  return moved;
}

// Waits for one message; false on timeout. Throws on EOF (the child is gone) via `eof`.
enum class got { message, eof, timeout };
got receive(int fd, std::int64_t deadline_ns, std::uint64_t* out) {
  for (;;) {
    int wait_ms = -1;
    if (deadline_ns != no_deadline) {
      const std::int64_t left = deadline_ns - now_ns();
      if (left <= 0) return got::timeout;
      wait_ms = static_cast<int>(std::min<std::int64_t>((left + 999'999) / 1'000'000, 1 << 30));
    }
    pollfd p{fd, POLLIN, 0};
    const int r = poll(&p, 1, wait_ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      return got::eof;
    }
    if (r == 0) continue;  // re-check the deadline
    const ssize_t n = recv(fd, out, sizeof *out, 0);
    if (n == static_cast<ssize_t>(sizeof *out)) return got::message;
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    return got::eof;  // 0 bytes (peer closed), a short message or an error
  }
}

}  // namespace

struct process_backend::instance {
  int index = 0;
  std::mutex run_mutex;  // one worker at a time (a replaced worker waits for the stuck one)
  std::mutex pid_mutex;  // guards pid between a signal and the reap (no signal to a reused pid)
  pid_t pid = -1;
  std::atomic<bool> ready{false};  // the child has loaded its model (written under run_mutex)
  int sock = -1;                // our end of the socket pair (run_mutex)
  int region_fd = -1;
  std::byte* base = nullptr;
  int failures = 0;             // consecutive failed starts or deaths (run_mutex)
  std::int64_t restart_at = 0;  // earliest next start (run_mutex)
};

process_backend::process_backend(process_config config) : config_(std::move(config)) {
  if (config_.argv.empty()) throw std::invalid_argument("process backend: empty command line");
  if (config_.instances == 0) throw std::invalid_argument("process backend: instances must be >= 1");
  if (config_.max_batch_size == 0) {
    throw std::invalid_argument("process backend: max_batch_size must be >= 1");
  }
  if (config_.input_bytes.empty() || config_.output_bytes.empty()) {
    throw std::invalid_argument("process backend: a process instance needs declared inputs and "
                                "outputs (their sizes shape the shared region)");
  }
  if (config_.input_bytes.size() > pp::max_tensors || config_.output_bytes.size() > pp::max_tensors) {
    throw std::invalid_argument("process backend: at most 64 inputs and 64 outputs");
  }
  std::size_t at = align64(pp::header_words * sizeof(std::uint64_t)) + pp::error_capacity;
  std::vector<std::size_t> out_regions;
  for (std::size_t b : config_.input_bytes) {
    in_offsets_.push_back(at);
    at += align64(b * config_.max_batch_size);
  }
  for (std::size_t b : config_.output_bytes) {
    out_offsets_.push_back(at);
    at += align64(b * config_.max_batch_size);
    out_regions.push_back(b * config_.max_batch_size);
  }
  region_bytes_ = at;
  outputs_ = block_pool::create(std::move(out_regions));
  try {
    for (std::size_t i = 0; i < config_.instances; ++i) {
      auto in = std::make_unique<instance>();
      in->index = static_cast<int>(i);
      const int fd = memfd_create("inferline-process", MFD_CLOEXEC);
      if (fd < 0) throw std::runtime_error(errno_text("process backend: memfd_create"));
      in->region_fd = high_fd(fd);
      if (ftruncate(in->region_fd, static_cast<off_t>(region_bytes_)) != 0) {
        close(in->region_fd);
        throw std::runtime_error(errno_text("process backend: ftruncate"));
      }
      void* p = mmap(nullptr, region_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, in->region_fd, 0);
      if (p == MAP_FAILED) {
        close(in->region_fd);
        throw std::runtime_error(errno_text("process backend: mmap"));
      }
      in->base = static_cast<std::byte*>(p);
      auto* h = reinterpret_cast<std::uint64_t*>(in->base);
      h[pp::w_magic] = pp::magic;
      h[pp::w_inputs] = config_.input_bytes.size();
      h[pp::w_outputs] = config_.output_bytes.size();
      h[pp::w_max_batch] = config_.max_batch_size;
      h[pp::w_err_off] = align64(pp::header_words * sizeof(std::uint64_t));
      h[pp::w_err_cap] = pp::error_capacity;
      h[pp::w_err_len] = 0;
      for (std::size_t k = 0; k < in_offsets_.size(); ++k) h[pp::w_offsets + k] = in_offsets_[k];
      for (std::size_t k = 0; k < out_offsets_.size(); ++k) {
        h[pp::w_offsets + in_offsets_.size() + k] = out_offsets_[k];
      }
      instances_.push_back(std::move(in));
    }
    // Start all, then wait for all: the children load their models in parallel.
    for (auto& in : instances_) start(*in);
    for (auto& in : instances_) wait_ready(*in);
    monitor_ = std::thread([this] { monitor_main(); });
  } catch (...) {
    on_shutdown();
    for (auto& in : instances_) {
      if (in->base != nullptr) munmap(in->base, region_bytes_);
      if (in->region_fd >= 0) close(in->region_fd);
    }
    outputs_->close();
    throw;
  }
}

process_backend::~process_backend() {
  on_shutdown();
  for (auto& in : instances_) {
    // A worker abandoned inside run() still holds its instance: leak that one region rather
    // than unmap memory it may touch (it returns once its child is gone).
    std::unique_lock lock(in->run_mutex, std::try_to_lock);
    if (!lock.owns_lock()) continue;
    munmap(in->base, region_bytes_);
    close(in->region_fd);
  }
  outputs_->close();
}

void process_backend::start(instance& in) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    throw std::runtime_error(errno_text("process backend: socketpair"));
  }
  const int ours = high_fd(sv[0]);
  const int theirs = high_fd(sv[1]);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in.region_fd, pp::child_region_fd);
  posix_spawn_file_actions_adddup2(&fa, theirs, pp::child_socket_fd);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  posix_spawnattr_setsigmask(&attr, &none);  // worker threads may block signals; children not
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> argv;
  for (auto& a : config_.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  close(theirs);
  if (rc != 0) {
    close(ours);
    throw std::runtime_error("model '" + config_.model + "' instance " +
                             std::to_string(in.index) + ": cannot start " + config_.argv[0] +
                             ": " + strerror(rc));
  }
  {
    std::lock_guard lock(in.pid_mutex);
    in.pid = pid;
  }
  in.ready.store(false, std::memory_order_relaxed);
  in.sock = ours;
}

std::string process_backend::child_error(const instance& in) const {
  const auto* h = reinterpret_cast<const std::uint64_t*>(in.base);
  const std::size_t len = std::min<std::uint64_t>(h[pp::w_err_len], pp::error_capacity);
  return std::string(reinterpret_cast<const char*>(in.base + h[pp::w_err_off]), len);
}

void process_backend::reap(instance& in, bool kill_first) noexcept {
  std::lock_guard lock(in.pid_mutex);
  if (in.pid > 0) {
    if (kill_first) kill(in.pid, SIGKILL);
    int status = 0;
    while (waitpid(in.pid, &status, 0) < 0 && errno == EINTR) {
    }
    in.pid = -1;
  }
  if (in.sock >= 0) close(in.sock);
  in.sock = -1;
}

void process_backend::lost(instance& in, const std::string& why) {
  std::string what = why;
  {
    std::lock_guard lock(in.pid_mutex);
    if (in.pid > 0) {
      int status = 0;
      pid_t r;
      while ((r = waitpid(in.pid, &status, 0)) < 0 && errno == EINTR) {
      }
      if (r == in.pid) what = describe_status(status);
      in.pid = -1;
    }
  }
  reap(in, false);
  ++in.failures;
  in.restart_at = now_ns() + restart_delay(in.failures);
  if (in.restart_at <= now_ns()) restart(in, false);
  throw std::runtime_error("model '" + config_.model + "' instance " + std::to_string(in.index) +
                           " " + what +
                           (stopping_.load(std::memory_order_acquire) ? "" : "; restarting"));
}

void process_backend::wait_ready(instance& in) {
  const std::int64_t deadline = add_saturating(now_ns(), config_.start_timeout_ns);
  std::uint64_t msg = 0;
  switch (receive(in.sock, deadline, &msg)) {
    case got::message:
      if (msg == pp::ready) {
        in.ready.store(true, std::memory_order_relaxed);
        return;
      }
      {
        const std::string err = child_error(in);
        reap(in, true);
        ++in.failures;
        in.restart_at = now_ns() + restart_delay(in.failures);
        throw std::runtime_error("model '" + config_.model + "' instance " +
                                 std::to_string(in.index) + " could not load: " + err);
      }
    case got::timeout:
      reap(in, true);
      throw std::runtime_error("model '" + config_.model + "' instance " +
                               std::to_string(in.index) + " was not ready within the start "
                               "timeout; killed");
    case got::eof:
      break;
  }
  lost(in, "exited while loading");
}

void process_backend::restart(instance& in, bool wait) noexcept {
  if (stopping_.load(std::memory_order_acquire)) return;
  try {
    start(in);
    restarts_.fetch_add(1, std::memory_order_relaxed);
    if (wait) wait_ready(in);
  } catch (...) {
    // Left dead: the instance's next batch tries again (and fails with the reason).
  }
}

bool process_backend::check_idle(instance& in) noexcept {
  if (in.sock < 0) return false;
  // A child never speaks unprompted: anything readable now is its death while idle, which
  // fails no batch; it is reaped here and restarted by the caller.
  pollfd p{in.sock, POLLIN, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (!in.ready.load(std::memory_order_relaxed)) {
    // A child still loading speaks once: READY (anything else: it failed; restart it).
    std::uint64_t msg = 0;
    if (recv(in.sock, &msg, sizeof msg, MSG_DONTWAIT) == static_cast<ssize_t>(sizeof msg) &&
        msg == pp::ready) {
      in.ready.store(true, std::memory_order_relaxed);
      return false;
    }
  }
  reap(in, true);
  ++in.failures;
  in.restart_at = now_ns() + restart_delay(in.failures);
  return true;
}

void process_backend::monitor_main() {
  std::unique_lock lock(monitor_mutex_);
  while (!stopping_.load(std::memory_order_acquire)) {
    monitor_cv_.wait_for(lock, std::chrono::milliseconds(100));
    for (auto& in : instances_) {
      if (stopping_.load(std::memory_order_acquire)) return;
      std::unique_lock run(in->run_mutex, std::try_to_lock);  // busy: its worker will see
      if (!run.owns_lock()) continue;
      if (check_idle(*in) && in->restart_at <= now_ns()) restart(*in, false);
    }
  }
}

void process_backend::run(batch& b) {
  if (b.instance < 0 || static_cast<std::size_t>(b.instance) >= instances_.size()) {
    throw std::runtime_error("process backend: instance index out of range");
  }
  if (b.size == 0) return;
  if (b.size > config_.max_batch_size) {
    throw std::runtime_error("process backend: batch of " + std::to_string(b.size) +
                             " exceeds max_batch_size " + std::to_string(config_.max_batch_size));
  }
  instance& in = *instances_[static_cast<std::size_t>(b.instance)];
  // Readying the instance (waiting for a predecessor's restart, the backoff, a fresh child's
  // load) is not this batch's execution: its clock starts once the child can take it.
  b.hold_clock();
  std::lock_guard hold(in.run_mutex);
  if (stopping_.load(std::memory_order_acquire)) {
    throw std::runtime_error("model '" + config_.model + "' is shutting down");
  }
  check_idle(in);
  if (in.sock < 0) {  // died earlier: restart now, after the backoff
    const std::int64_t delay = in.restart_at - now_ns();
    if (delay > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(delay));
    start(in);
    restarts_.fetch_add(1, std::memory_order_relaxed);
  }
  if (!in.ready.load(std::memory_order_relaxed)) wait_ready(in);
  const std::int64_t started = b.start_clock();  // the scheduler's watchdog and ours agree
  for (std::size_t k = 0; k < in_offsets_.size(); ++k) {
    std::memcpy(in.base + in_offsets_[k], b.input(k), b.size * config_.input_bytes[k]);
  }
  const std::uint64_t n = b.size;
  // MSG_NOSIGNAL: a dead child is an EPIPE here, not a SIGPIPE for the whole process.
  if (send(in.sock, &n, sizeof n, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof n)) {
    lost(in, "was gone before its batch");
  }
  const std::int64_t deadline =
      config_.execution_timeout_ns > 0 ? add_saturating(started, config_.execution_timeout_ns)
                                       : no_deadline;
  std::uint64_t msg = 0;
  switch (receive(in.sock, deadline, &msg)) {
    case got::timeout:
      reap(in, true);
      // The watchdog has answered this batch (same deadline) and replaced this worker, whose
      // successor waits for this instance: have it ready before letting go.
      restart(in, true);
      throw std::runtime_error(
          "model '" + config_.model + "' instance " + std::to_string(in.index) +
          ": batch of " + std::to_string(b.size) + " did not finish within the " +
          std::to_string(config_.execution_timeout_ns / 1'000'000) +
          " ms execution timeout; its process was killed (SIGKILL) and restarts");
    case got::eof:
      lost(in, "closed its socket");
    case got::message:
      break;
  }
  if (msg == pp::failed) throw std::runtime_error(child_error(in));
  if (msg != pp::ok) {
    reap(in, true);
    throw std::runtime_error("model '" + config_.model + "' instance " +
                             std::to_string(in.index) + " sent an unknown reply; killed");
  }
  in.failures = 0;  // a batch answered: the next death restarts at once again
  if (b.warmup()) return;
  block* out = outputs_->acquire();  // our reference; each answered request adds one
  for (std::size_t k = 0; k < out_offsets_.size(); ++k) {
    std::memcpy(out->region(k), in.base + out_offsets_[k], b.size * config_.output_bytes[k]);
  }
  for (std::size_t i = 0; i < b.size; ++i) {
    out->retain();
    b.requests[i]->output = out;
    b.requests[i]->row = static_cast<std::uint32_t>(i);
  }
  out->release();
}

void process_backend::on_shutdown() noexcept {
  std::call_once(shutdown_once_, [this] {
    {
      std::lock_guard lock(monitor_mutex_);
      stopping_.store(true, std::memory_order_release);
    }
    monitor_cv_.notify_all();
    if (monitor_.joinable()) monitor_.join();  // it never waits on a child
    for (auto& in : instances_) {
      std::lock_guard lock(in->pid_mutex);
      if (in->pid > 0) kill(in->pid, SIGTERM);
    }
    const std::int64_t until = add_saturating(now_ns(), config_.stop_grace_ns);
    for (auto& in : instances_) {
      std::unique_lock run(in->run_mutex, std::defer_lock);
      // A worker inside run() (stuck, or finishing) keeps its instance: its child is killed
      // below and that worker reaps it when its wait ends.
      while (!run.try_lock() && now_ns() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      std::lock_guard lock(in->pid_mutex);
      if (in->pid <= 0) continue;
      if (!run.owns_lock()) {
        kill(in->pid, SIGKILL);
        continue;
      }
      int status = 0;
      while (waitpid(in->pid, &status, WNOHANG) == 0 && now_ns() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      if (waitpid(in->pid, &status, WNOHANG) == 0) {
        kill(in->pid, SIGKILL);
        while (waitpid(in->pid, &status, 0) < 0 && errno == EINTR) {
        }
      }
      in->pid = -1;
      if (in->sock >= 0) close(in->sock);
      in->sock = -1;
    }
  });
}

std::vector<long> process_backend::pids() const {
  std::vector<long> out;
  for (const auto& in : instances_) {
    std::lock_guard lock(in->pid_mutex);
    out.push_back(in->ready.load(std::memory_order_relaxed) ? in->pid : -1);
  }
  return out;
}

}  // namespace inferline
