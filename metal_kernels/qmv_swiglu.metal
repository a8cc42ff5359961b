// Fused gate/up projection of a SwiGLU MLP for decode: y = silu(x . Wg^T) * (x . Wu^T), both matrices quantized
// on MLX's affine layout. One pass over x computes both dot products of an output, so the activation is read once
// and the (M, N) gate and up intermediates never reach memory.
// Same grid and lanes as qmv.metal (MLX's qmv_fast design): threadgroup (32, NSG, 1); grid (32 * M,
// NSG * ceil(N / (ROWS * NSG)), 1), the row m of x in the fastest dimension so the M threadgroups of a tile share
// its weight reads; each lane takes two packed words of each matrix per step (VPT values of K), the last step
// partial when K is not a multiple of 32 * VPT; a SIMD-group wholly past N returns, one partly past it re-reads
// row N - 1 and writes only rows below N.
//
// Template: T; BITS 4 or 8; GS group size; ROWS outputs per SIMD-group; NSG SIMD-groups per threadgroup.
// Inputs: x (M, K); w_gate, w_up (N, K * BITS / 32) uint32; scales_gate, biases_gate, scales_up, biases_up
//   (N, K / GS); any but x may be in the constant address space (fewer than 8 elements).
// Output: y (M, N).

constexpr int PACK = 32 / BITS;
constexpr int VPT = 2 * PACK;
static_assert(BITS == 4 || BITS == 8, "4- or 8-bit weights");
static_assert(GS % VPT == 0, "a lane's chunk lies inside one group");
const uint lane = thread_index_in_simdgroup;
const int K = x_shape[1];
const int N = w_gate_shape[0];
const int m = threadgroup_position_in_grid.x;
const int row0 = (threadgroup_position_in_grid.y * NSG + simdgroup_index_in_threadgroup) * ROWS;
if (row0 >= N) {
  return;
}
const int words = K / PACK;
const int groups = K / GS;
const auto xr = x + (size_t)m * K;

float gate[ROWS];
float up[ROWS];
for (int r = 0; r < ROWS; r++) {
  gate[r] = 0.0f;
  up[r] = 0.0f;
}
for (int k = lane * VPT; k < K; k += 32 * VPT) {
  float xt[VPT];
  const float xsum = load_x<BITS, VPT>(xr + k, xt);
  const int g = k / GS;
  for (int r = 0; r < ROWS; r++) {
    const size_t n = min(row0 + r, N - 1);
    const size_t at = n * groups + g;
    const size_t word = n * words + k / PACK;
    gate[r] += qdot<BITS>(w_gate + word, xt, float(scales_gate[at]), float(biases_gate[at]), xsum);
    up[r] += qdot<BITS>(w_up + word, xt, float(scales_up[at]), float(biases_up[at]), xsum);
  }
}
for (int r = 0; r < ROWS; r++) {
  const float a = simd_sum(gate[r]);
  const float u = simd_sum(up[r]);
  if (lane == 0 && row0 + r < N) {
    y[(size_t)m * N + row0 + r] = T(a / (1.0f + metal::exp(-a)) * u);
  }
}
