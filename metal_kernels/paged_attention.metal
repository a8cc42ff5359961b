// Paged decode attention: one query token per sequence, over the sequence's K/V rows found through its block
// table, on MLX's sdpa_vector design (mlx/backend/metal/kernels/sdpa_vector.h). Two modes (template SPLIT):
//
// SPLIT = 0, one pass (sdpa_vector): one threadgroup of 32 SIMD-groups per (sequence, query head), so even
//   batch 1 with 8 KV heads puts 1024 threads on each of its 32 query heads. SIMD-group s takes keys lo + s,
//   lo + s + 32, ... with an online softmax (running max m, sum l, output acc); the 32 partial softmaxes then
//   merge through threadgroup memory: SIMD-group s writes acc[i] of lane l to tg[l][s], so that after a barrier
//   SIMD-group s reads tg[s][0..31], the 32 SIMD-groups' values of feature i * 32 + s, weights each by its
//   SIMD-group's exp(m - M) and adds them with one simd_sum. The query heads of one KV head are neighbours in
//   the grid, so their threadgroups read the same K/V rows at about the same time and share them in cache.
//   Grid (1024, H, B), threadgroup (1024, 1, 1). Output out (B, H, D) in T.
// SPLIT = 1, pass 1 of 2 (sdpa_vector_2pass_1): for long contexts. One threadgroup per (sequence, KV head,
//   partition) with one SIMD-group per query head of that KV head, which read each K/V row together; the
//   visible keys are cut into `parts` contiguous chunks, one per partition (parts = grid z / B). Each SIMD-group
//   writes its chunk's unnormalised (acc, m, l) in float32; paged_attention_reduce.metal (pass 2) merges the
//   partitions. Grid (32 * G, Hkv, B * parts), threadgroup (32 * G, 1, 1). Output out (B, H, parts, D + 2)
//   in O = float.
//
// Template: T element type; O output type (T, or float with SPLIT); D head dim (a multiple of 32); SPLIT.
// Inputs: q (B, H, D), already rotated, H = Hkv * G; k_pool, v_pool (num_blocks, BS, Hkv, D);
//   block_tables (B, max_blocks) int32; context_lens (B,) int32: tokens of each sequence, this step's included
//   (0: an empty batch slot, whose output is 0); spans (2,) int32: [window, chunk], 0 = none;
//   scales (2,) float32: [softmax scale, softcap], softcap 0 = none.
// Lane l holds features l, l + 32, ... of the query and of its output (L = D / 32 floats each, and one K or V
//   value at a time): reads of a row are coalesced, and every lane's registers stay at 2 * D / 32 + 2 floats.
// The query at position p = context_len - 1 sees keys j <= p with p - j < window and p / chunk == j / chunk:
// one contiguous range [lo, p], so keys before it are never read (a sliding window reads O(window)).
// No infinities: the running maximum starts at -1e30 so that fast-math compilation cannot change the result.

constexpr int L = D / 32;
constexpr float NEG = -1e30f;
const uint lane = thread_index_in_simdgroup;
const uint sg = simdgroup_index_in_threadgroup;
const int n_heads = q_shape[1];
const int n_kv = k_pool_shape[2];
const int BS = k_pool_shape[1];
const int G = n_heads / n_kv;
const int max_blocks = block_tables_shape[1];
const int parts = SPLIT ? threadgroups_per_grid.z / q_shape[0] : 1;
const int b = threadgroup_position_in_grid.z / parts;
const int part = threadgroup_position_in_grid.z % parts;
const int h = SPLIT ? threadgroup_position_in_grid.y * G + sg : threadgroup_position_in_grid.y;
const int kv_head = h / G;
const size_t qrow = ((size_t)b * n_heads + h) * D;
const int pos = context_lens[b] - 1;
const int window = spans[0];
const int chunk = spans[1];
const float scale = scales[0];
const float softcap = scales[1];

int lo = 0;
if (window > 0) lo = max(lo, pos - window + 1);
if (chunk > 0 && pos >= 0) lo = max(lo, pos - pos % chunk);
// This SIMD-group's keys: first, first + step, ... below end (none for an empty slot, whose pos is -1).
const int per_part = (pos + 1 - lo + parts - 1) / parts;
const int first = SPLIT ? lo + part * per_part : lo + (int)sg;
const int end = SPLIT ? min(pos + 1, first + per_part) : pos + 1;
const int step = SPLIT ? 1 : 32;

float qv[L];
float acc[L];
for (int i = 0; i < L; i++) {
  qv[i] = float(q[qrow + i * 32 + lane]) * scale;
  acc[i] = 0.0f;
}
float m = NEG;
float l = 0.0f;
for (int t = first; t < end; t += step) {
  const int phys = block_tables[b * max_blocks + t / BS];
  const size_t row = ((size_t)(phys * BS + t % BS) * n_kv + kv_head) * D;
  float s = 0.0f;
  for (int i = 0; i < L; i++) {
    s += qv[i] * float(k_pool[row + i * 32 + lane]);
  }
  s = simd_sum(s);
  if (softcap > 0.0f) {
    s = softcap * precise::tanh(s / softcap);
  }
  const float m_new = max(m, s);
  const float corr = metal::exp(m - m_new);
  const float p = metal::exp(s - m_new);
  l = l * corr + p;
  for (int i = 0; i < L; i++) {
    acc[i] = acc[i] * corr + p * float(v_pool[row + i * 32 + lane]);
  }
  m = m_new;
}

if (SPLIT) {
  const size_t slot = (((size_t)b * n_heads + h) * parts + part) * (D + 2);
  for (int i = 0; i < L; i++) {
    out[slot + i * 32 + lane] = O(acc[i]);
  }
  if (lane == 0) {
    out[slot + D] = O(m);
    out[slot + D + 1] = O(l);
  }
  return;
}

// One pass: merge the 32 SIMD-groups (lane l of the merge stands for SIMD-group l).
threadgroup float tg_m[32];
threadgroup float tg_l[32];
threadgroup float tg[32][33];  // a row of 33 floats keeps the column writes tg[lane][sg] off one memory bank
if (lane == 0) {
  tg_m[sg] = m;
  tg_l[sg] = l;
}
threadgroup_barrier(mem_flags::mem_threadgroup);
const float top = simd_max(tg_m[lane]);
const float weight = metal::exp(tg_m[lane] - top);
const float den = simd_sum(tg_l[lane] * weight);
for (int i = 0; i < L; i++) {
  tg[lane][sg] = acc[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  const float o = simd_sum(tg[sg][lane] * weight);
  if (lane == 0) {
    out[qrow + i * 32 + sg] = O(den > 0.0f ? o / den : 0.0f);
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}
