// What the emulator runtime (runtime.cpp) and a compiled kernel (prelude.h + generated source) share.
// Plain C so both sides agree on the layout without including each other.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

// The thread-position attributes MLX can add to a kernel signature, per GPU thread.
typedef struct {
  unsigned dispatch_quadgroups_per_threadgroup;
  unsigned dispatch_simdgroups_per_threadgroup;
  unsigned dispatch_threads_per_threadgroup[3];
  unsigned grid_origin[3];
  unsigned grid_size[3];
  unsigned quadgroup_index_in_threadgroup;
  unsigned quadgroups_per_threadgroup;
  unsigned simdgroup_index_in_threadgroup;
  unsigned simdgroups_per_threadgroup;
  unsigned thread_execution_width;
  unsigned thread_index_in_quadgroup;
  unsigned thread_index_in_simdgroup;
  unsigned thread_index_in_threadgroup;
  unsigned thread_position_in_grid[3];
  unsigned thread_position_in_threadgroup[3];
  unsigned threadgroup_position_in_grid[3];
  unsigned threadgroups_per_grid[3];
  unsigned threads_per_grid[3];
  unsigned threads_per_simdgroup;
  unsigned threads_per_threadgroup[3];
} mtl_attrs;

// Defined by the generated launcher: runs the kernel body for one GPU thread. bufs[i] is [[buffer(i)]].
void mtl_kernel_entry(void** bufs, const mtl_attrs* attrs);

// Defined by the runtime; called from the kernel's fiber.
// Deposit `size` bytes (<= MTL_SLOT) for this lane, wait until every lane of the SIMD-group has done the same
// at the same call site, then return the 32 slots (slot i at base + i * MTL_SLOT) until this lane's next SIMD op.
const void* mtl_rt_simd_exchange(const void* value, unsigned size, int line, const char* op);
void mtl_rt_simd_info(unsigned* lane, unsigned* width);
// `flags` are Metal's mem_flags; only mem_threadgroup (2) orders threadgroup memory.
void mtl_rt_threadgroup_barrier(int line, int flags);
void mtl_rt_simdgroup_barrier(int line, int flags);
// Threadgroup memory of one declaration site: shared by the threads of a threadgroup, NaN-filled at its start,
// between two unmapped guard pages. `elem` is the element size that touches count in.
void* mtl_rt_tg_alloc(int site, unsigned long bytes, unsigned long align, const char* name, unsigned long elem);
// Element `elem` of the site's array is read or written by the running thread (race check); out of bounds fails.
void mtl_rt_tg_touch(int site, long elem, int line);
void mtl_rt_tg_out_of_bounds(int site, long elem, int line);
void mtl_rt_fail(const char* message, int line);

#define MTL_SLOT 32

#ifdef __cplusplus
}
#endif
