// Pass 2 of a decode attention split over the sequence (MLX's sdpa_vector_2pass_2): merges the partial softmaxes
// that pass 1 (paged_attention.metal or paged_mla.metal with SPLIT) wrote per (sequence, head, partition).
//
// Template: T output element type; D head dim (a multiple of 32).
// Input: partials (B, H, parts, D + 2) float32: per partition the unnormalised output o (D), then the partition's
//   running maximum m and sum l (o = sum_j exp(s_j - m) v_j, l = sum_j exp(s_j - m); an empty partition has
//   m = -1e30, l = 0, o = 0).
// Output: out (B, H, D) = sum_p exp(m_p - M) o_p / sum_p exp(m_p - M) l_p with M = max_p m_p; 0 where every
//   partition is empty (an empty batch slot).
// Grid (32 * NS, H, B), threadgroup (32 * NS, 1, 1): one threadgroup per (sequence, head) of NS = min(32, parts)
// SIMD-groups (MLX always takes 32; fewer partitions would leave SIMD-groups without work). Every lane first reads
// the (m, l) of partitions lane, lane + 32, ... to find M and the denominator with one simd_max and one simd_sum;
// then SIMD-group s adds up partitions s, s + NS, ... (lane l holds features l, l + 32, ...) and the SIMD-groups'
// sums meet through threadgroup memory transposed, as in MLX: SIMD-group s writes its value of feature i * 32 + l
// to tg[l][s], and SIMD-group s then reads rows c = s, s + NS, ... (lane j < NS: SIMD-group j's value of feature
// i * 32 + c), so that one simd_sum per row gives the total of feature i * 32 + c. A row of 33 floats keeps the
// column writes off one memory bank. Any partition count works (MLX needs a multiple of 32).
// No infinities: maxima start at -1e30 so that fast-math compilation cannot change the result.

constexpr int L = D / 32;
constexpr int W = D + 2;  // floats per partition
constexpr float NEG = -1e30f;
const uint lane = thread_index_in_simdgroup;
const uint sg = simdgroup_index_in_threadgroup;
const uint ns = simdgroups_per_threadgroup;
const int parts = partials_shape[2];
const size_t head = (size_t)threadgroup_position_in_grid.z * partials_shape[1] + threadgroup_position_in_grid.y;
const device float* mine = partials + head * parts * W;  // (parts, D + 2)

float top = NEG;
for (int p = lane; p < parts; p += 32) {
  top = max(top, mine[p * W + D]);
}
top = simd_max(top);
float den = 0.0f;
for (int p = lane; p < parts; p += 32) {
  den += mine[p * W + D + 1] * metal::exp(mine[p * W + D] - top);
}
den = simd_sum(den);

float acc[L];
for (int i = 0; i < L; i++) {
  acc[i] = 0.0f;
}
for (int p = sg; p < parts; p += ns) {
  const float f = metal::exp(mine[p * W + D] - top);
  for (int i = 0; i < L; i++) {
    acc[i] += f * mine[p * W + i * 32 + lane];
  }
}

threadgroup float tg[32][33];
for (int i = 0; i < L; i++) {
  tg[lane][sg] = acc[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (uint c = sg; c < 32; c += ns) {
    const float o = simd_sum(lane < ns ? tg[c][lane] : 0.0f);
    if (lane == 0) {
      out[head * D + i * 32 + c] = T(den > 0.0f ? o / den : 0.0f);
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}
