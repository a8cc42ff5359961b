// Fused gate/up projection of a SwiGLU MLP for decode: y = silu(x . Wg^T) * (x . Wu^T), both matrices quantized
// on MLX's affine layout. One pass over x computes both dot products of a row, so the activation is read once
// and the (M, N) gate and up intermediates never reach memory. Same scheme and layout as qmv.metal.
//
// Template: T; BITS 4 or 8; GS group size; ROWS outputs per SIMD-group; NSG SIMD-groups per threadgroup.
// Inputs: x (M, K); w_gate, w_up (N, K * BITS / 32) uint32; scales_gate, biases_gate, scales_up, biases_up
//   (N, K / GS).
// Output: y (M, N). Grid (32 * NSG, ceil(N / (ROWS * NSG)), M), threadgroup (32 * NSG, 1, 1).

constexpr int VPT = 8;
constexpr int PACK = 32 / BITS;
static_assert(BITS == 4 || BITS == 8, "4- or 8-bit weights");
static_assert(GS % VPT == 0, "a lane's chunk lies inside one group");
const uint lane = thread_index_in_simdgroup;
const int K = x_shape[1];
const int N = w_gate_shape[0];
const int m = threadgroup_position_in_grid.z;
const int row0 = (threadgroup_position_in_grid.y * NSG + simdgroup_index_in_threadgroup) * ROWS;
const int words = K / PACK;
const int groups = K / GS;
const device T* xr = x + (size_t)m * K;

float gate[ROWS];
float up[ROWS];
for (int r = 0; r < ROWS; r++) {
  gate[r] = 0.0f;
  up[r] = 0.0f;
}
for (int k = lane * VPT; k < K; k += 32 * VPT) {
  float xv[VPT];
  float xsum = 0.0f;
  for (int j = 0; j < VPT; j++) {
    xv[j] = float(xr[k + j]);
    xsum += xv[j];
  }
  const int g = k / GS;
  for (int r = 0; r < ROWS && row0 + r < N; r++) {
    const size_t n = row0 + r;
    const size_t at = n * groups + g;
    const float qg = qdot<BITS, VPT>(w_gate + n * words + k / PACK, xv);
    const float qu = qdot<BITS, VPT>(w_up + n * words + k / PACK, xv);
    gate[r] += float(scales_gate[at]) * qg + float(biases_gate[at]) * xsum;
    up[r] += float(scales_up[at]) * qu + float(biases_up[at]) * xsum;
  }
}
for (int r = 0; r < ROWS && row0 + r < N; r++) {
  const float a = simd_sum(gate[r]);
  const float u = simd_sum(up[r]);
  if (lane == 0) {
    y[(size_t)m * N + row0 + r] = T(a / (1.0f + metal::exp(-a)) * u);
  }
}
