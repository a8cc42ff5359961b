// Quantized matrix-vector product y = x . W^T on MLX's affine layout, as mx.quantized_matmul(x, w, scales,
// biases, transpose=True) computes it, for the small M of decode steps.
// Each SIMD-group computes ROWS outputs; each lane takes VPT = 8 consecutive values of K per step (one 4-bit
// word, two 8-bit words), so a SIMD-group reads 32 neighbouring chunks of a row at once. Per group,
// sum_j x_j (s q_j + b) = s * (x . q) + b * sum(x): the bias costs one multiply per step, not one per value.
//
// Template: T activation/scale type; BITS 4 or 8; GS group size (32, 64, 128); ROWS outputs per SIMD-group;
//   NSG SIMD-groups per threadgroup.
// Inputs: x (M, K) with K a multiple of GS; w (N, K * BITS / 32) uint32; scales, biases (N, K / GS).
// Output: y (M, N).
// Grid (32 * NSG, ceil(N / (ROWS * NSG)), M), threadgroup (32 * NSG, 1, 1).

constexpr int VPT = 8;
constexpr int PACK = 32 / BITS;
static_assert(BITS == 4 || BITS == 8, "4- or 8-bit weights");
static_assert(GS % VPT == 0, "a lane's chunk lies inside one group");
const uint lane = thread_index_in_simdgroup;
const int K = x_shape[1];
const int N = w_shape[0];
const int m = threadgroup_position_in_grid.z;
const int row0 = (threadgroup_position_in_grid.y * NSG + simdgroup_index_in_threadgroup) * ROWS;
const int words = K / PACK;
const int groups = K / GS;
const device T* xr = x + (size_t)m * K;

float acc[ROWS];
for (int r = 0; r < ROWS; r++) {
  acc[r] = 0.0f;
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
    const float q = qdot<BITS, VPT>(w + n * words + k / PACK, xv);
    acc[r] += float(scales[n * groups + g]) * q + float(biases[n * groups + g]) * xsum;
  }
}
for (int r = 0; r < ROWS && row0 + r < N; r++) {
  const float s = simd_sum(acc[r]);
  if (lane == 0) {
    y[(size_t)m * N + row0 + r] = T(s);
  }
}
