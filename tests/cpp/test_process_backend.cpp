// process_backend: the shared-memory protocol against a stdlib-only Python child (uint64 rows,
// out = 2 * in + 1), several threads on several instances at once, a model error, a SIGKILL
// mid-batch and while idle (named, then restarted), a child that cannot load, a hang past the execution timeout, and
// shutdown reaping every child.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "inferline/block_pool.hpp"
#include "inferline/process_backend.hpp"
#include "inferline/request.hpp"
#include "stress_scale.hpp"

namespace {

using inferline::batch;
using inferline::block;
using inferline::block_pool;
using inferline::process_backend;
using inferline::process_config;
using inferline::request;

constexpr std::uint64_t fail_value = 57005;  // the child fails a batch holding this row
constexpr std::uint64_t hang_value = 48879;  // the child sleeps on a batch holding this row
constexpr std::uint64_t die_value = 3358;    // the child SIGKILLs itself in such a batch

// The child side of the protocol in a few lines of stdlib Python (the real one is
// inferline.backends.process_worker; this one keeps the C++ test free of the package).
const char* const child = R"(
import mmap, os, signal, socket, struct, sys, time
sock = socket.socket(fileno=4)
m = mmap.mmap(3, 0)
h = struct.unpack_from('<135Q', m, 0)
n_in, n_out, err_off = h[1], h[2], h[4]
offs = h[7:7 + n_in + n_out]
def reply(code, msg=b''):
    m[err_off:err_off + len(msg)] = msg
    struct.pack_into('<Q', m, 6 * 8, len(msg))
    sock.send(struct.pack('<Q', code))
if sys.argv[1] == 'bad':
    reply(3, b'ImportError: no model here')
    sys.exit(1)
reply(2)
while True:
    d = sock.recv(8)
    if len(d) < 8:
        sys.exit(0)
    n = struct.unpack('<Q', d)[0]
    rows = struct.unpack_from('<%dQ' % n, m, offs[0])
    if 48879 in rows:
        time.sleep(60)
    if 3358 in rows:
        os.kill(os.getpid(), signal.SIGKILL)
    if 57005 in rows:
        reply(1, b'ValueError: bad row')
        continue
    struct.pack_into('<%dQ' % n, m, offs[1], *[2 * v + 1 for v in rows])
    reply(0)
)";

process_config config(std::size_t instances, const std::string& mode = "echo") {
  process_config c;
  c.model = std::string("m");  // not operator=(const char*): GCC 12 warns falsely (-Wrestrict)
  for (const char* a : {"/usr/bin/env", "python3", "-c", child}) c.argv.emplace_back(a);
  c.argv.push_back(mode);
  c.input_bytes = {8};
  c.output_bytes = {8};
  c.max_batch_size = 16;
  c.instances = instances;
  c.stop_grace_ns = 2'000'000'000;
  return c;
}

// Runs `rows` as one batch on `instance`; returns the outputs (throws as run does).
std::vector<std::uint64_t> run(process_backend& be, block_pool* inputs, int instance,
                               const std::vector<std::uint64_t>& rows) {
  block* in = inputs->acquire();
  std::memcpy(in->region(0), rows.data(), rows.size() * 8);
  std::vector<request> reqs(rows.size());
  std::vector<request*> ptrs;
  for (auto& r : reqs) ptrs.push_back(&r);
  batch b;
  b.size = rows.size();
  b.requests = ptrs;
  b.inputs = in;
  b.instance = instance;
  struct releaser {
    block* b;
    ~releaser() { b->release(); }
  } hold{in};
  be.run(b);
  std::vector<std::uint64_t> out;
  for (auto* r : ptrs) {
    std::uint64_t v = 0;
    std::memcpy(&v, r->output->region(0) + r->row * 8, 8);
    out.push_back(v);
    r->output->release();
  }
  return out;
}

// True once `pid` is dead (a zombie not yet reaped, or gone).
bool dead(long pid) {
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
  if (f == nullptr) return true;
  char buf[512] = {};
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  const char* paren = std::strrchr(buf, ')');
  return n == 0 || (paren != nullptr && paren[1] == ' ' && paren[2] == 'Z');
}

bool reaped(long pid) { return waitpid(static_cast<pid_t>(pid), nullptr, WNOHANG) < 0 && errno == ECHILD; }

TEST(ProcessBackend, ManyThreadsOnSeveralInstancesGetTheirOwnAnswers) {
  block_pool* inputs = block_pool::create({16 * 8});
  {
    process_backend be(config(2));
    ASSERT_EQ(be.pids().size(), 2u);
    std::atomic<int> wrong{0};
    std::vector<std::thread> threads;
    const int batches = static_cast<int>(inferline::testing::scaled(200, 40));
    // Two threads per instance: the instance's mutex serialises them, as a replaced worker.
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < batches; ++i) {
          std::vector<std::uint64_t> rows;
          for (int k = 0; k <= i % 16; ++k) rows.push_back(1000u * t + k + i);
          auto out = run(be, inputs, t % 2, rows);
          for (std::size_t k = 0; k < rows.size(); ++k) {
            if (out[k] != 2 * rows[k] + 1) wrong.fetch_add(1, std::memory_order_relaxed);
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_EQ(be.restarts(), 0u);
  }
  inputs->close();
}

TEST(ProcessBackend, ModelErrorFailsTheBatchWithItsMessage) {
  block_pool* inputs = block_pool::create({16 * 8});
  {
    process_backend be(config(1));
    try {
      run(be, inputs, 0, {1, fail_value});
      FAIL() << "expected the batch to fail";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "ValueError: bad row");
    }
    EXPECT_EQ(run(be, inputs, 0, {3}), std::vector<std::uint64_t>{7});
  }
  inputs->close();
}

TEST(ProcessBackend, SigkillIsNamedAndTheInstanceRestarts) {
  block_pool* inputs = block_pool::create({16 * 8});
  {
    process_backend be(config(1));
    const long first = be.pids()[0];
    // Killed while idle: the next batch finds it gone, restarts it and is answered.
    ASSERT_EQ(kill(static_cast<pid_t>(first), SIGKILL), 0);
    // kill() returns before the child is gone; a batch sent in between would fail with it.
    for (int i = 0; i < 10'000 && !dead(first); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_TRUE(dead(first));
    // The monitor reaps it and starts a successor with no batch asking.
    long second = -1;
    for (int i = 0; i < 10'000 && ((second = be.pids()[0]) <= 0 || second == first); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_TRUE(reaped(first));
    EXPECT_GT(second, 0);
    EXPECT_NE(second, first);
    EXPECT_EQ(run(be, inputs, 0, {5}), std::vector<std::uint64_t>{11});
    // Killed during a batch: that batch fails naming the signal.
    try {
      run(be, inputs, 0, {die_value});
      FAIL() << "expected the batch to fail";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "model 'm' instance 0 died with SIGKILL; restarting");
    }
    EXPECT_TRUE(reaped(second));
    EXPECT_EQ(run(be, inputs, 0, {1}), std::vector<std::uint64_t>{3});
    EXPECT_EQ(be.restarts(), 2u);
  }
  inputs->close();
}

TEST(ProcessBackend, ExecutionTimeoutKillsTheChildAndRestartsIt) {
  block_pool* inputs = block_pool::create({16 * 8});
  {
    auto c = config(1);
    c.execution_timeout_ns = 300'000'000;
    process_backend be(c);
    const long first = be.pids()[0];
    try {
      run(be, inputs, 0, {hang_value});
      FAIL() << "expected the batch to time out";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(),
                   "model 'm' instance 0: batch of 1 did not finish within the 300 ms execution "
                   "timeout; its process was killed (SIGKILL) and restarts");
    }
    EXPECT_TRUE(reaped(first));
    EXPECT_NE(be.pids()[0], -1);  // restarted before the batch failed
    EXPECT_EQ(run(be, inputs, 0, {2}), std::vector<std::uint64_t>{5});
  }
  inputs->close();
}

TEST(ProcessBackend, AChildThatCannotLoadFailsConstructionWithItsMessage) {
  try {
    process_backend be(config(2, "bad"));
    FAIL() << "expected construction to fail";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "model 'm' instance 0 could not load: ImportError: no model here");
  }
}

TEST(ProcessBackend, ShutdownReapsEveryChildAndRefusesLaterBatches) {
  block_pool* inputs = block_pool::create({16 * 8});
  {
    process_backend be(config(3));
    const auto pids = be.pids();
    be.on_shutdown();
    for (long p : pids) EXPECT_TRUE(reaped(p)) << p;
    EXPECT_THROW(run(be, inputs, 0, {1}), std::runtime_error);
  }
  inputs->close();
}

}  // namespace
