// The emulator's runtime: runs a compiled kernel over a grid the way a Metal GPU may, one fiber per GPU thread.
//
// Threadgroups run one at a time; inside one, every thread is a cooperative fiber (ucontext) that runs until it
// reaches a threadgroup barrier, a SIMD-group operation or its end. The order in which runnable fibers (and
// threadgroups) are resumed is forward, reversed or shuffled, so a race that depends on which thread writes
// first gives different results under different orders. Threadgroup memory and outputs start as NaN (all bits
// set), inputs are read-only and every buffer ends at an unmapped page, so reading what nobody wrote, writing an
// input and running past a buffer's end are all visible. Barrier divergence and deadlock stop the run with a
// message on stderr and exit code 3; memory faults exit with 4.
//
// Usage: runner MANIFEST, where MANIFEST has lines
//   grid GX GY GZ | threadgroup TX TY TZ
//   buffer NAME in NBYTES PATH | buffer NAME out NBYTES PATH nan|fill HEXBYTES   (in [[buffer(i)]] order)
//   order forward|reverse|shuffle SEED       (one run per line; output k of run r is written to PATH.r)
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "abi.h"

namespace {

const size_t kStack = 256 * 1024;
const long kPage = 4096;

enum State { RUNNABLE, AT_BARRIER, AT_SIMD, DONE };

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  State state = RUNNABLE;
  int line = 0;  // where it waits
  unsigned simd_ops = 0, wait_k = 0, sg = 0, lane = 0, tid = 0;
  mtl_attrs attrs;
};

struct SimdGroup {
  unsigned n = 0;
  unsigned arrived[2] = {0, 0};
  int line[2] = {0, 0};
  const char* op[2] = {nullptr, nullptr};
  unsigned char slots[2][32][MTL_SLOT];
};

struct Buffer {
  std::string name, path, fill;
  bool output = false;
  size_t nbytes = 0;
  char* base = nullptr;  // mapping start
  char* data = nullptr;  // data ends where the guard page begins
  size_t mapped = 0;
};

struct TgSite {
  int site;
  size_t bytes;
  void* ptr;
};

std::vector<Buffer> buffers;
std::vector<Fiber> fibers;
std::vector<SimdGroup> groups;
std::vector<TgSite> tg_sites;
std::vector<void*> bufptrs;
Fiber* current = nullptr;
ucontext_t scheduler;
char* stack_pool = nullptr;
size_t stack_pool_threads = 0;

[[noreturn]] __attribute__((format(printf, 2, 3))) void die(int code, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  fprintf(stderr, "emulator: ");
  vfprintf(stderr, fmt, args);
  fprintf(stderr, "\n");
  va_end(args);
  fflush(stderr);
  _exit(code);
}

void fault(int, siginfo_t* info, void*) {
  char* addr = static_cast<char*>(info->si_addr);
  char msg[512];
  for (auto& b : buffers) {
    if (addr >= b.base && addr < b.base + b.mapped) {
      if (addr >= b.data + b.nbytes) {
        snprintf(msg, sizeof msg, "emulator: out-of-bounds access %ld bytes past the end of buffer '%s' (%zu bytes)\n",
                 static_cast<long>(addr - (b.data + b.nbytes)), b.name.c_str(), b.nbytes);
      } else {
        snprintf(msg, sizeof msg, "emulator: write to input buffer '%s' (inputs are read-only)\n", b.name.c_str());
      }
      ssize_t r = write(2, msg, strlen(msg));
      (void)r;
      _exit(4);
    }
  }
  if (stack_pool && addr >= stack_pool && addr < stack_pool + stack_pool_threads * (kStack + kPage)) {
    snprintf(msg, sizeof msg, "emulator: a GPU thread overflowed its %zu KiB stack\n", kStack / 1024);
  } else {
    snprintf(msg, sizeof msg, "emulator: memory fault at %p (outside every buffer)\n", static_cast<void*>(addr));
  }
  ssize_t r = write(2, msg, strlen(msg));
  (void)r;
  _exit(4);
}

void install_fault_handler() {
  static char altstack[64 * 1024];
  stack_t ss;
  ss.ss_sp = altstack;
  ss.ss_size = sizeof altstack;
  ss.ss_flags = 0;
  sigaltstack(&ss, nullptr);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
}

// Each buffer ends exactly at an unmapped guard page.
void map_buffer(Buffer& b) {
  size_t pages = (b.nbytes + kPage - 1) / kPage;
  b.mapped = (pages + 1) * kPage;
  void* p = mmap(nullptr, b.mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die(2, "cannot map %s", b.name.c_str());
  b.base = static_cast<char*>(p);
  mprotect(b.base + pages * kPage, kPage, PROT_NONE);
  // The last byte sits right before the guard page, so reading one element too far faults. Alignment is then
  // that of the size (a multiple of the element size), which is all scalar loads need.
  b.data = b.base + (pages * kPage - b.nbytes);
  memset(b.base, 0xFF, pages * kPage);
}

void init_output(Buffer& b) {
  if (b.fill == "nan") {
    memset(b.data, 0xFF, b.nbytes);
    return;
  }
  std::vector<unsigned char> one;
  for (size_t i = 0; i + 1 < b.fill.size(); i += 2) one.push_back(static_cast<unsigned char>(strtoul(b.fill.substr(i, 2).c_str(), nullptr, 16)));
  for (size_t i = 0; i < b.nbytes; i++) b.data[i] = static_cast<char>(one[i % one.size()]);
}

void read_file(const std::string& path, char* dst, size_t n) {
  FILE* f = fopen(path.c_str(), "rb");
  if (!f || fread(dst, 1, n, f) != n) die(2, "cannot read %s", path.c_str());
  fclose(f);
}

void write_file(const std::string& path, const char* src, size_t n) {
  FILE* f = fopen(path.c_str(), "wb");
  if (!f || fwrite(src, 1, n, f) != n) die(2, "cannot write %s", path.c_str());
  fclose(f);
}

struct Rng {  // xorshift64*, so a seed names one shuffle on every machine
  unsigned long long s;
  explicit Rng(unsigned long long seed) : s(seed * 2654435761ULL + 0x9E3779B97F4A7C15ULL) {}
  unsigned long long next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ULL;
  }
  template <typename V>
  void shuffle(V& v) {
    for (size_t i = v.size(); i > 1; i--) {
      size_t j = next() % i;
      auto t = v[i - 1];
      v[i - 1] = v[j];
      v[j] = t;
    }
  }
};

void fiber_main() {
  mtl_kernel_entry(bufptrs.data(), &current->attrs);
  current->state = DONE;
  swapcontext(&current->ctx, &scheduler);
}

void yield() { swapcontext(&current->ctx, &scheduler); }

void describe_deadlock() {
  for (size_t s = 0; s < groups.size(); s++) {
    int waiting = 0, done = 0, barrier = 0, line = 0, bline = 0;
    const char* op = "";
    for (auto& f : fibers) {
      if (f.sg != s) continue;
      if (f.state == AT_SIMD) waiting++, line = f.line, op = groups[s].op[f.wait_k];
      if (f.state == DONE) done++;
      if (f.state == AT_BARRIER) barrier++, bline = f.line;
    }
    if (waiting) {
      fprintf(stderr, "emulator: deadlock: in SIMD-group %zu, %d lanes wait at %s (line %d) while %d lanes have exited "
              "and %d wait at threadgroup_barrier (line %d)\n", s, waiting, op, line, done, barrier, bline);
      fflush(stderr);
      _exit(3);
    }
  }
  die(3, "deadlock");
}

enum Order { FORWARD, REVERSE, SHUFFLE };

void run_threadgroup(unsigned bx, unsigned by, unsigned bz, const unsigned grid[3], const unsigned tg[3], Order order, Rng& rng) {
  unsigned origin[3] = {bx * tg[0], by * tg[1], bz * tg[2]};
  unsigned dims[3];
  for (int i = 0; i < 3; i++) dims[i] = (grid[i] - origin[i] < tg[i]) ? grid[i] - origin[i] : tg[i];
  unsigned n = dims[0] * dims[1] * dims[2];
  unsigned requested = tg[0] * tg[1] * tg[2];
  unsigned n_sg = (n + 31) / 32;
  fibers.assign(n, Fiber());
  groups.assign(n_sg, SimdGroup());
  for (unsigned s = 0; s < n_sg; s++) groups[s].n = (s + 1) * 32 <= n ? 32 : n - s * 32;
  for (auto& site : tg_sites) free(site.ptr);
  tg_sites.clear();
  unsigned tgs[3] = {(grid[0] + tg[0] - 1) / tg[0], (grid[1] + tg[1] - 1) / tg[1], (grid[2] + tg[2] - 1) / tg[2]};
  for (unsigned t = 0; t < n; t++) {
    Fiber& f = fibers[t];
    unsigned x = t % dims[0], y = (t / dims[0]) % dims[1], z = t / (dims[0] * dims[1]);
    mtl_attrs& a = f.attrs;
    memset(&a, 0, sizeof a);
    a.dispatch_quadgroups_per_threadgroup = (requested + 3) / 4;
    a.dispatch_simdgroups_per_threadgroup = (requested + 31) / 32;
    for (int i = 0; i < 3; i++) {
      a.dispatch_threads_per_threadgroup[i] = tg[i];
      a.grid_size[i] = grid[i];
      a.threadgroups_per_grid[i] = tgs[i];
      a.threads_per_grid[i] = grid[i];
      a.threads_per_threadgroup[i] = dims[i];
    }
    unsigned pos[3] = {x, y, z}, gpos[3] = {bx, by, bz};
    for (int i = 0; i < 3; i++) {
      a.thread_position_in_threadgroup[i] = pos[i];
      a.thread_position_in_grid[i] = origin[i] + pos[i];
      a.threadgroup_position_in_grid[i] = gpos[i];
    }
    a.thread_index_in_threadgroup = t;
    a.simdgroup_index_in_threadgroup = t / 32;
    a.simdgroups_per_threadgroup = n_sg;
    a.thread_index_in_simdgroup = t % 32;
    a.threads_per_simdgroup = 32;
    a.thread_execution_width = 32;
    a.quadgroup_index_in_threadgroup = t / 4;
    a.quadgroups_per_threadgroup = (n + 3) / 4;
    a.thread_index_in_quadgroup = t % 4;
    f.tid = t;
    f.sg = t / 32;
    f.lane = t % 32;
    f.stack = stack_pool + t * (kStack + kPage) + kPage;  // a guard page below each stack
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
  }
  std::vector<unsigned> ord(n);
  for (unsigned t = 0; t < n; t++) ord[t] = order == REVERSE ? n - 1 - t : t;
  for (;;) {
    if (order == SHUFFLE) rng.shuffle(ord);
    bool ran = false;
    for (unsigned t : ord) {
      Fiber& f = fibers[t];
      if (f.state != RUNNABLE) continue;
      ran = true;
      current = &f;
      swapcontext(&scheduler, &f.ctx);
      current = nullptr;
    }
    if (ran) continue;
    unsigned done = 0, at_barrier = 0, at_simd = 0;
    int line = -1;
    for (auto& f : fibers) {
      if (f.state == DONE) done++;
      if (f.state == AT_SIMD) at_simd++;
      if (f.state == AT_BARRIER) {
        if (at_barrier && f.line != line)
          die(3, "barrier divergence: threads of one threadgroup wait at different threadgroup_barrier calls (lines %d and %d)",
              line, f.line);
        at_barrier++;
        line = f.line;
      }
    }
    if (done == n) break;
    if (at_simd) describe_deadlock();
    if (done)
      die(3, "barrier divergence: %u threads wait at threadgroup_barrier (line %d) but %u threads of the threadgroup have exited",
          at_barrier, line, done);
    for (auto& f : fibers) f.state = RUNNABLE;
  }
}

}  // namespace

extern "C" const void* mtl_rt_simd_exchange(const void* value, unsigned size, int line, const char* op) {
  Fiber& f = *current;
  SimdGroup& g = groups[f.sg];
  unsigned k = f.simd_ops & 1;
  if (size > MTL_SLOT) mtl_rt_fail("SIMD-group operation on a value larger than 32 bytes", line);
  if (g.arrived[k] == 0) {
    g.line[k] = line;
    g.op[k] = op;
  } else if (g.line[k] != line || strcmp(g.op[k], op) != 0) {
    fprintf(stderr, "emulator: SIMD-group divergence: lanes of SIMD-group %u reach %s (line %d) and %s (line %d)\n",
            f.sg, g.op[k], g.line[k], op, line);
    fflush(stderr);
    _exit(3);
  }
  memcpy(g.slots[k][f.lane], value, size);
  f.simd_ops++;
  if (++g.arrived[k] == g.n) {
    g.arrived[k] = 0;
    for (auto& other : fibers)
      if (other.sg == f.sg && other.state == AT_SIMD && other.wait_k == k) other.state = RUNNABLE;
  } else {
    f.state = AT_SIMD;
    f.wait_k = k;
    f.line = line;
    yield();
  }
  return g.slots[k];
}

extern "C" void mtl_rt_simd_info(unsigned* lane, unsigned* width) {
  *lane = current->lane;
  *width = groups[current->sg].n;
}

extern "C" void mtl_rt_threadgroup_barrier(int line) {
  current->state = AT_BARRIER;
  current->line = line;
  yield();
}

extern "C" void* mtl_rt_tg_alloc(int site, unsigned long bytes, unsigned long align, const char*, unsigned long) {
  for (auto& s : tg_sites)
    if (s.site == site) return s.ptr;
  void* p = nullptr;
  if (posix_memalign(&p, align < 16 ? 16 : align, bytes ? bytes : 1) != 0) mtl_rt_fail("out of memory", 0);
  memset(p, 0xFF, bytes);  // NaN in every float type
  tg_sites.push_back({site, bytes, p});
  return p;
}

extern "C" void mtl_rt_fail(const char* message, int line) { die(3, "%s (line %d)", message, line); }

int main(int argc, char** argv) {
  if (argc != 2) die(2, "usage: runner MANIFEST");
  FILE* m = fopen(argv[1], "r");
  if (!m) die(2, "cannot open %s", argv[1]);
  unsigned grid[3] = {1, 1, 1}, tg[3] = {1, 1, 1};
  std::vector<std::pair<Order, unsigned long>> orders;
  char line[4096];
  while (fgets(line, sizeof line, m)) {
    char key[32], a[1024], b[1024], c[1024], d[1024], e[1024];
    int k = sscanf(line, "%31s %1023s %1023s %1023s %1023s %1023s", key, a, b, c, d, e);
    if (k < 1) continue;
    std::string w = key;
    if (w == "grid") {
      sscanf(line, "grid %u %u %u", &grid[0], &grid[1], &grid[2]);
    } else if (w == "threadgroup") {
      sscanf(line, "threadgroup %u %u %u", &tg[0], &tg[1], &tg[2]);
    } else if (w == "buffer") {
      Buffer buf;
      buf.name = a;
      buf.output = std::string(b) == "out";
      buf.nbytes = strtoull(c, nullptr, 10);
      buf.path = d;
      if (buf.output) buf.fill = std::string(e) == "fill" ? std::string(line).substr(std::string(line).rfind(' ') + 1) : "nan";
      while (!buf.fill.empty() && (buf.fill.back() == '\n' || buf.fill.back() == '\r')) buf.fill.pop_back();
      buffers.push_back(buf);
    } else if (w == "order") {
      std::string o = a;
      orders.push_back({o == "reverse" ? REVERSE : o == "shuffle" ? SHUFFLE : FORWARD, k > 2 ? strtoul(b, nullptr, 10) : 0});
    } else {
      die(2, "bad manifest line: %s", line);
    }
  }
  fclose(m);
  install_fault_handler();
  for (auto& b : buffers) {
    map_buffer(b);
    if (!b.output) {
      read_file(b.path, b.data, b.nbytes);
      size_t pages = (b.nbytes + kPage - 1) / kPage;
      mprotect(b.base, pages * kPage, PROT_READ);
    }
    bufptrs.push_back(b.data);
  }
  // MLX clips the threadgroup to the grid.
  for (int i = 0; i < 3; i++) tg[i] = tg[i] < grid[i] ? tg[i] : grid[i];
  stack_pool_threads = tg[0] * tg[1] * tg[2];
  if (stack_pool_threads > 1024) die(2, "threadgroup of %zu threads exceeds Metal's 1024", stack_pool_threads);
  size_t pool_bytes = stack_pool_threads * (kStack + kPage);
  void* sp = mmap(nullptr, pool_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (sp == MAP_FAILED) die(2, "cannot map fiber stacks");
  stack_pool = static_cast<char*>(sp);
  for (size_t t = 0; t < stack_pool_threads; t++) mprotect(stack_pool + t * (kStack + kPage), kPage, PROT_NONE);
  unsigned tgs[3] = {(grid[0] + tg[0] - 1) / tg[0], (grid[1] + tg[1] - 1) / tg[1], (grid[2] + tg[2] - 1) / tg[2]};
  for (size_t r = 0; r < orders.size(); r++) {
    for (auto& b : buffers)
      if (b.output) init_output(b);
    std::vector<unsigned> ids(tgs[0] * tgs[1] * tgs[2]);
    for (unsigned i = 0; i < ids.size(); i++) ids[i] = orders[r].first == REVERSE ? ids.size() - 1 - i : i;
    Rng rng(orders[r].second);
    if (orders[r].first == SHUFFLE) rng.shuffle(ids);
    for (unsigned id : ids)
      run_threadgroup(id % tgs[0], (id / tgs[0]) % tgs[1], id / (tgs[0] * tgs[1]), grid, tg, orders[r].first, rng);
    for (auto& b : buffers)
      if (b.output) write_file(b.path + "." + std::to_string(r), b.data, b.nbytes);
  }
  return 0;
}
