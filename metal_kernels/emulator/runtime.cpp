// The emulator's runtime: runs a compiled kernel over a grid the way a Metal GPU may, one fiber per GPU thread.
//
// Threadgroups run one at a time; inside one, every thread is a cooperative fiber (ucontext) that runs until it
// reaches a threadgroup barrier, a SIMD-group operation or its end. The order in which runnable fibers (and
// threadgroups) are resumed is forward, reversed or shuffled, so a race that depends on which thread writes
// first gives different results under different orders. Threadgroup memory and outputs start as NaN (all bits
// set) and inputs are read-only, so reading what nobody wrote and writing an input are visible.
//
// Guard zones: every buffer and threadgroup array lies between two unmapped pages. Run r places the data against
// the page after it (even r) or the one before it (odd r), so the default three orders fault on the first element
// read or written past either end; the rest of those pages is filled with NaN and checked after each run for
// writes. Threadgroup arrays are also bounds-checked element by element (prelude.h's mtl_tg).
// Races: a shadow record per threadgroup array element holds who read and wrote it since the last
// threadgroup_barrier(mem_flags::mem_threadgroup); two threads touching it, one writing, stop the run (see access).
// Barrier divergence, deadlock and races stop the run with a message on stderr and exit code 3; memory faults
// and out-of-bounds accesses exit with 4.
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
  int line = 0, flags = 0;  // where it waits; the barrier's mem_flags
  unsigned simd_ops = 0, wait_k = 0, sg = 0, lane = 0, tid = 0;
  unsigned tg_fences = 0, simd_fences = 0;  // threadgroup / SIMD-group barriers passed that order threadgroup memory
  mtl_attrs attrs;
};

struct SimdGroup {
  unsigned n = 0;
  unsigned arrived[2] = {0, 0};
  int line[2] = {0, 0};
  const char* op[2] = {nullptr, nullptr};
  unsigned char slots[2][32][MTL_SLOT];
};

// Memory between two unmapped guard pages; the data sits against one of them (place).
struct Region {
  char* base = nullptr;  // the first guard page
  size_t pages = 0, nbytes = 0;
  char* data = nullptr;
  void map(size_t n) {
    nbytes = n;
    pages = n ? (n + kPage - 1) / kPage : 1;
    void* p = mmap(nullptr, (pages + 2) * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      fprintf(stderr, "emulator: cannot map %zu bytes\n", n);
      _exit(2);
    }
    base = static_cast<char*>(p);
    mprotect(base, kPage, PROT_NONE);
    mprotect(base + (pages + 1) * kPage, kPage, PROT_NONE);
  }
  char* first() const { return base + kPage; }
  char* end() const { return base + (pages + 1) * kPage; }
  // NaN everywhere, data against the front guard page or the back one. At the back, alignment is that of the
  // size (a multiple of the element size), which is all scalar loads need; at the front, a page.
  void place(bool at_front) {
    mprotect(first(), pages * kPage, PROT_READ | PROT_WRITE);
    memset(first(), 0xFF, pages * kPage);
    data = at_front ? first() : end() - nbytes;
  }
  // Where `addr` is: -1 in the front guard page, 1 in the back one, 2 in the slack beside the data, 0 in the data.
  int where(const char* addr) const {
    if (addr < first()) return -1;
    if (addr >= end()) return 1;
    return addr < data || addr >= data + nbytes ? 2 : 0;
  }
  bool contains(const char* addr) const { return addr >= base && addr < end() + kPage; }
  // The first byte of the slack that is not NaN fill (a write out of bounds), or nullptr.
  const char* dirty_slack() const {
    for (const char* c = first(); c < end(); c++) {
      if (c == data) c += nbytes;
      if (c < end() && static_cast<unsigned char>(*c) != 0xFF) return c;
    }
    return nullptr;
  }
};

struct Buffer {
  std::string name, path, fill;
  bool output = false;
  Region mem;
  std::vector<char> content;  // an input's bytes, placed anew for each run
};

struct Access {
  int tid = -1, line = 0;
  unsigned simd_fences = 0;
};

// Who touched one threadgroup element since the last barrier that orders threadgroup memory (tg_fences).
struct Shadow {
  bool used = false;
  unsigned tg_fences = 0;
  Access writer, reader, other_reader;  // other_reader: a reader that is not `reader`
  int readers_sg = -1;  // the SIMD-group of every reader, or -1 when they are in several
  unsigned readers_fences = 0;  // the most SIMD-group fences any reader had passed
};

struct TgSite {
  std::string name;
  Region mem;
  size_t elem = 1;
  unsigned generation = 0;  // the threadgroup it was last set up for
  std::vector<unsigned char> snapshot;  // element values as last seen, to tell a write from a read
  std::vector<Shadow> shadow;
};

struct Touch {
  int site;
  long elem;
  int line;
};

std::vector<Buffer> buffers;
std::vector<Fiber> fibers;
std::vector<SimdGroup> groups;
std::vector<TgSite> tg_sites;  // by declaration site (1, 2, ...); 0 unused
std::vector<Touch> touches;  // the running fiber's threadgroup accesses since its last flush
std::vector<void*> bufptrs;
Fiber* current = nullptr;
ucontext_t scheduler;
char* stack_pool = nullptr;
size_t stack_pool_threads = 0;
unsigned generation = 0;  // counts threadgroups
bool data_at_front = false;  // this run's placement
unsigned tg_pos[3];

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

// One line for an address in a region's guard zone, written with async-signal-safe calls.
bool report_guard(const Region& r, const char* kind, const std::string& name, char* addr, const char* access) {
  if (!r.base || !r.contains(addr)) return false;
  char msg[512];
  int w = r.where(addr);
  if (w == 0) {
    snprintf(msg, sizeof msg, "emulator: write to input buffer '%s' (inputs are read-only)\n", name.c_str());
  } else if (addr < r.data) {
    snprintf(msg, sizeof msg, "emulator: out-of-bounds %s %ld bytes before the start of %s '%s' (%zu bytes)\n",
             access, static_cast<long>(r.data - addr), kind, name.c_str(), r.nbytes);
  } else {
    snprintf(msg, sizeof msg, "emulator: out-of-bounds %s %ld bytes past the end of %s '%s' (%zu bytes)\n", access,
             static_cast<long>(addr - (r.data + r.nbytes)), kind, name.c_str(), r.nbytes);
  }
  ssize_t n = write(2, msg, strlen(msg));
  (void)n;
  return true;
}

void fault(int, siginfo_t* info, void* uctx) {
  char* addr = static_cast<char*>(info->si_addr);
  const char* access = "access";
#ifdef REG_ERR
  access = (static_cast<ucontext_t*>(uctx)->uc_mcontext.gregs[REG_ERR] & 2) ? "write" : "read";
#else
  (void)uctx;
#endif
  for (auto& b : buffers)
    if (report_guard(b.mem, "buffer", b.name, addr, access)) _exit(4);
  for (auto& t : tg_sites)
    if (report_guard(t.mem, "threadgroup array", t.name, addr, access)) _exit(4);
  char msg[512];
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

void init_output(Buffer& b) {
  if (b.fill == "nan") return;  // place() filled it
  std::vector<unsigned char> one;
  for (size_t i = 0; i + 1 < b.fill.size(); i += 2) one.push_back(static_cast<unsigned char>(strtoul(b.fill.substr(i, 2).c_str(), nullptr, 16)));
  for (size_t i = 0; i < b.mem.nbytes; i++) b.mem.data[i] = static_cast<char>(one[i % one.size()]);
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

[[noreturn]] void race(const TgSite& t, long elem, const Access& a, const char* a_does, const Access& b,
                       const char* b_does) {
  die(3, "threadgroup memory race on '%s' element %ld: thread %d %s it (line %d) and thread %d %s it (line %d) with no "
      "threadgroup_barrier(mem_flags::mem_threadgroup) between them (threads numbered by thread_index_in_threadgroup, "
      "threadgroup (%u, %u, %u))", t.name.c_str(), elem, a.tid, a_does, a.line, b.tid, b_does, b.line, tg_pos[0],
      tg_pos[1], tg_pos[2]);
}

// Thread f read or wrote an element. Two accesses by different threads, one a write, race unless a barrier that
// orders threadgroup memory lies between them: a threadgroup_barrier with mem_threadgroup (which ends the shadow's
// epoch), or a simdgroup_barrier with mem_threadgroup when both threads are in one SIMD-group. The SIMD-group
// functions (simd_sum, simd_shuffle, ...) exchange registers and, in Metal's specification, order no memory, so they
// order nothing here either; a barrier without mem_threadgroup synchronizes execution but not threadgroup memory.
void access(TgSite& t, long elem, const Fiber& f, bool write, int line) {
  Shadow& sh = t.shadow[elem];
  if (!sh.used || sh.tg_fences != f.tg_fences) {
    sh = Shadow();
    sh.used = true;
    sh.tg_fences = f.tg_fences;
  }
  Access me{static_cast<int>(f.tid), line, f.simd_fences};
  auto ordered = [&](const Access& a) { return fibers[a.tid].sg == f.sg && a.simd_fences < f.simd_fences; };
  if (sh.writer.tid >= 0 && sh.writer.tid != me.tid && !ordered(sh.writer))
    race(t, elem, sh.writer, "writes", me, write ? "writes" : "reads");
  if (write) {
    const Access* other = sh.reader.tid >= 0 && sh.reader.tid != me.tid ? &sh.reader
                          : sh.other_reader.tid >= 0 && sh.other_reader.tid != me.tid ? &sh.other_reader
                                                                                       : nullptr;
    bool all_ordered = sh.readers_sg == static_cast<int>(f.sg) && sh.readers_fences < f.simd_fences;
    if (other && !all_ordered) race(t, elem, *other, "reads", me, "writes");
    sh.writer = me;
    return;
  }
  if (sh.reader.tid < 0) {
    sh.reader = me;
    sh.readers_sg = static_cast<int>(f.sg);
  } else if (sh.reader.tid != me.tid && sh.other_reader.tid < 0) {
    sh.other_reader = me;
  }
  if (sh.readers_sg != static_cast<int>(f.sg)) sh.readers_sg = -1;
  if (f.simd_fences > sh.readers_fences) sh.readers_fences = f.simd_fences;
}

// The running fiber's accesses since its last flush: an element whose bytes changed was written, else read.
// Called whenever the fiber may stop running (barrier, SIMD-group operation, end), so that no other thread ran
// between its accesses and this classification.
void flush_touches() {
  for (const Touch& x : touches) {
    TgSite& t = tg_sites[x.site];
    unsigned char* now = reinterpret_cast<unsigned char*>(t.mem.data) + x.elem * t.elem;
    unsigned char* seen = t.snapshot.data() + x.elem * t.elem;
    bool write = memcmp(now, seen, t.elem) != 0;
    if (write) memcpy(seen, now, t.elem);
    access(t, x.elem, *current, write, x.line);
  }
  touches.clear();
}

void fiber_main() {
  mtl_kernel_entry(bufptrs.data(), &current->attrs);
  flush_touches();
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
  generation++;  // threadgroup memory is set up anew at its first use in this threadgroup
  tg_pos[0] = bx, tg_pos[1] = by, tg_pos[2] = bz;
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
    int line = -1, flags = ~0;
    for (auto& f : fibers) {
      if (f.state == DONE) done++;
      if (f.state == AT_SIMD) at_simd++;
      if (f.state == AT_BARRIER) {
        flags &= f.flags;
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
    // Every thread is at the barrier. With mem_threadgroup it orders threadgroup memory: a new epoch for the
    // shadow (each fiber's tg_fences), and the snapshot takes in what was written through pointers.
    for (auto& f : fibers) {
      f.state = RUNNABLE;
      if (flags & 2) f.tg_fences++;
    }
    if (flags & 2)
      for (auto& t : tg_sites)
        if (t.generation == generation) memcpy(t.snapshot.data(), t.mem.data, t.mem.nbytes);
  }
}

}  // namespace

extern "C" const void* mtl_rt_simd_exchange(const void* value, unsigned size, int line, const char* op) {
  flush_touches();
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

extern "C" void mtl_rt_threadgroup_barrier(int line, int flags) {
  flush_touches();
  current->state = AT_BARRIER;
  current->line = line;
  current->flags = flags;
  yield();
}

// Metal: with mem_threadgroup, a simdgroup_barrier orders threadgroup memory among the SIMD-group's threads.
extern "C" void mtl_rt_simdgroup_barrier(int line, int flags) {
  mtl_rt_simd_exchange(nullptr, 0, line, "simdgroup_barrier");
  if (flags & 2) current->simd_fences++;
}

extern "C" void* mtl_rt_tg_alloc(int site, unsigned long bytes, unsigned long, const char* name, unsigned long elem) {
  if (site >= static_cast<int>(tg_sites.size())) tg_sites.resize(site + 1);
  TgSite& t = tg_sites[site];
  if (!t.mem.base) {
    t.name = name;
    t.elem = elem ? elem : 1;
    t.mem.map(bytes);
  }
  if (t.generation != generation) {  // first use in this threadgroup: NaN, placed as this run places buffers
    t.generation = generation;
    t.mem.place(data_at_front);
    t.snapshot.assign(t.mem.nbytes, 0xFF);
    t.shadow.assign(t.mem.nbytes / t.elem, Shadow());
  }
  return t.mem.data;
}

extern "C" void mtl_rt_tg_touch(int site, long elem, int line) { touches.push_back({site, elem, line}); }

extern "C" void mtl_rt_tg_out_of_bounds(int site, long elem, int line) {
  const TgSite& t = tg_sites[site];
  die(4, "out-of-bounds access to threadgroup array '%s': element %ld of %zu (line %d)", t.name.c_str(), elem,
      t.mem.nbytes / t.elem, line);
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
      buf.mem.nbytes = strtoull(c, nullptr, 10);
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
    b.mem.map(b.mem.nbytes);
    if (!b.output) {
      b.content.resize(b.mem.nbytes);
      read_file(b.path, b.content.data(), b.content.size());
    }
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
    data_at_front = r % 2 == 1;
    bufptrs.clear();
    for (auto& b : buffers) {
      b.mem.place(data_at_front);
      if (b.output) {
        init_output(b);
      } else {
        memcpy(b.mem.data, b.content.data(), b.content.size());
        mprotect(b.mem.first(), b.mem.pages * kPage, PROT_READ);
      }
      bufptrs.push_back(b.mem.data);
    }
    std::vector<unsigned> ids(tgs[0] * tgs[1] * tgs[2]);
    for (unsigned i = 0; i < ids.size(); i++) ids[i] = orders[r].first == REVERSE ? ids.size() - 1 - i : i;
    Rng rng(orders[r].second);
    if (orders[r].first == SHUFFLE) rng.shuffle(ids);
    for (unsigned id : ids)
      run_threadgroup(id % tgs[0], (id / tgs[0]) % tgs[1], id / (tgs[0] * tgs[1]), grid, tg, orders[r].first, rng);
    for (auto& b : buffers) {
      if (!b.output) continue;
      if (const char* c = b.mem.dirty_slack()) {
        if (c < b.mem.data)
          die(4, "out-of-bounds write %ld bytes before the start of buffer '%s' (%zu bytes)",
              static_cast<long>(b.mem.data - c), b.name.c_str(), b.mem.nbytes);
        die(4, "out-of-bounds write %ld bytes past the end of buffer '%s' (%zu bytes)",
            static_cast<long>(c - (b.mem.data + b.mem.nbytes)), b.name.c_str(), b.mem.nbytes);
      }
      write_file(b.path + "." + std::to_string(r), b.mem.data, b.mem.nbytes);
    }
  }
  return 0;
}
