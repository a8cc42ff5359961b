// Quantized matrix-vector product y = x . W^T on MLX's affine layout, as mx.quantized_matmul(x, w, scales,
// biases, transpose=True) computes it, for the few rows of x of decode steps. MLX's qmv_fast design
// (mlx/backend/metal/kernels/quantized.h):
// - Grid: threadgroup (32, NSG, 1) = NSG SIMD-groups; grid (32 * M, NSG * ceil(N / (ROWS * NSG)), 1), so
//   threadgroup_position_in_grid.x is the row m of x, in the fastest grid dimension: the threadgroups of all M rows
//   for one tile of outputs run side by side and share the tile's weight reads in cache, where a grid with m
//   slowest would stream the whole matrix once per row.
// - Each SIMD-group computes ROWS outputs n of row m. Per step each lane takes VPT = two packed words of K (16
//   values at 4 bits, 8 at 8 bits), so a SIMD-group reads 32 * 2 neighbouring words of each of its rows at once;
//   a lane's chunk lies inside one group, so one scale and bias per row per step. The last step may be partial
//   (K is any multiple of GS, not of 32 * VPT): lanes whose chunk starts at or past K sit it out.
// - Ragged N: a SIMD-group wholly past N returns (there are no barriers); one partly past N re-reads row N - 1
//   for its missing rows, keeping the inner loop free of branches, and writes only rows below N.
// - simd_sum reduces each output over the lanes; lane 0 writes it.
//
// Template: T activation/scale type; BITS 4 or 8; GS group size (32, 64, 128); ROWS outputs per SIMD-group;
//   NSG SIMD-groups per threadgroup.
// Inputs: x (M, K) with K a multiple of GS; w (N, K * BITS / 32) uint32; scales, biases (N, K / GS). w, scales and
//   biases may be in the constant address space (fewer than 8 elements): they are only indexed or handed to the
//   templated helpers.
// Output: y (M, N).

constexpr int PACK = 32 / BITS;
constexpr int VPT = 2 * PACK;
static_assert(BITS == 4 || BITS == 8, "4- or 8-bit weights");
static_assert(GS % VPT == 0, "a lane's chunk lies inside one group");
const uint lane = thread_index_in_simdgroup;
const int K = x_shape[1];
const int N = w_shape[0];
const int m = threadgroup_position_in_grid.x;
const int row0 = (threadgroup_position_in_grid.y * NSG + simdgroup_index_in_threadgroup) * ROWS;
if (row0 >= N) {
  return;
}
const int words = K / PACK;
const int groups = K / GS;
const auto xr = x + (size_t)m * K;

float acc[ROWS];
for (int r = 0; r < ROWS; r++) {
  acc[r] = 0.0f;
}
for (int k = lane * VPT; k < K; k += 32 * VPT) {
  float xt[VPT];
  const float xsum = load_x<BITS, VPT>(xr + k, xt);
  const int g = k / GS;
  for (int r = 0; r < ROWS; r++) {
    const size_t n = min(row0 + r, N - 1);
    acc[r] += qdot<BITS>(w + n * words + k / PACK, xt, float(scales[n * groups + g]), float(biases[n * groups + g]),
                         xsum);
  }
}
for (int r = 0; r < ROWS; r++) {
  const float s = simd_sum(acc[r]);
  if (lane == 0 && row0 + r < N) {
    y[(size_t)m * N + row0 + r] = T(s);
  }
}
