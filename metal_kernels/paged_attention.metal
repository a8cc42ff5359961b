// Paged decode attention: one query token per sequence, over the sequence's K/V blocks found through its
// block table. One threadgroup per (sequence, KV head): the G query heads of that KV head share it, so each
// K/V row is read from memory once for all of them. The NSG SIMD-groups take every NSG-th block; each keeps an
// online softmax per query head (lane l holds features l, l + 32, ...), and the partial results are merged
// through threadgroup memory at the end.
//
// Template: T element type; D head dim (a multiple of 32); G query heads per KV head; BS tokens per block;
//   NSG SIMD-groups per threadgroup.
// Inputs: q (B, Hkv * G, D), already rotated; k_pool, v_pool (num_blocks, BS, Hkv, D);
//   block_tables (B, max_blocks) int32; context_lens (B,) int32: tokens of each sequence, this step's included
//   (0: an empty batch slot, whose output is 0); spans (2,) int32: [window, chunk], 0 = none;
//   scales (2,) float32: [softmax scale, softcap], softcap 0 = none.
// Output: out (B, Hkv * G, D).
// Grid (32 * NSG, Hkv, B), threadgroup (32 * NSG, 1, 1).
// The query at position p = context_len - 1 sees keys j <= p with p - j < window and p / chunk == j / chunk:
// one contiguous range [lo, p], so blocks before it are never read (a sliding window reads O(window)).
// No infinities: the running maximum starts at -1e30 so that fast-math compilation cannot change the result.

constexpr int L = D / 32;
constexpr float NEG = -1e30f;
const uint lane = thread_index_in_simdgroup;
const uint sg = simdgroup_index_in_threadgroup;
const int kv_head = threadgroup_position_in_grid.y;
const int b = threadgroup_position_in_grid.z;
const int n_kv = k_pool_shape[2];
const int max_blocks = block_tables_shape[1];
const int n = context_lens[b];
const int pos = n - 1;
const int window = spans[0];
const int chunk = spans[1];
const float scale = scales[0];
const float softcap = scales[1];
const size_t head0 = (size_t)b * n_kv * G + kv_head * G;  // first query head of this KV head, in (B, H)

int lo = 0;
if (window > 0) lo = max(lo, pos - window + 1);
if (chunk > 0 && pos >= 0) lo = max(lo, pos - pos % chunk);

float qv[G][L];
float m[G];
float l[G];
float acc[G][L];
for (int g = 0; g < G; g++) {
  for (int i = 0; i < L; i++) {
    qv[g][i] = float(q[(head0 + g) * D + i * 32 + lane]) * scale;
    acc[g][i] = 0.0f;
  }
  m[g] = NEG;
  l[g] = 0.0f;
}

for (int blk = lo / BS + (int)sg; pos >= 0 && blk <= pos / BS; blk += NSG) {
  const int phys = block_tables[b * max_blocks + blk];
  const int t0 = max(lo - blk * BS, 0);
  const int t1 = min(pos - blk * BS, BS - 1);
  for (int t = t0; t <= t1; t++) {
    const size_t row = ((size_t)(phys * BS + t) * n_kv + kv_head) * D;
    float kr[L];
    float vr[L];
    for (int i = 0; i < L; i++) {
      kr[i] = float(k_pool[row + i * 32 + lane]);
      vr[i] = float(v_pool[row + i * 32 + lane]);
    }
    for (int g = 0; g < G; g++) {
      float s = 0.0f;
      for (int i = 0; i < L; i++) {
        s += qv[g][i] * kr[i];
      }
      s = simd_sum(s);
      if (softcap > 0.0f) {
        s = softcap * precise::tanh(s / softcap);
      }
      const float m_new = max(m[g], s);
      const float corr = metal::exp(m[g] - m_new);
      const float p = metal::exp(s - m_new);
      l[g] = l[g] * corr + p;
      for (int i = 0; i < L; i++) {
        acc[g][i] = acc[g][i] * corr + p * vr[i];
      }
      m[g] = m_new;
    }
  }
}

// Merge the SIMD-groups: rescale each partial sum to the common maximum, one query head at a time.
threadgroup float tg_m[NSG][G];
threadgroup float tg_l[NSG][G];
threadgroup float tg_acc[NSG][D];
if (lane == 0) {
  for (int g = 0; g < G; g++) {
    tg_m[sg][g] = m[g];
    tg_l[sg][g] = l[g];
  }
}
for (int g = 0; g < G; g++) {
  for (int i = 0; i < L; i++) {
    tg_acc[sg][i * 32 + lane] = acc[g][i];
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  float top = NEG;
  for (int s = 0; s < NSG; s++) {
    top = max(top, tg_m[s][g]);
  }
  float den = 0.0f;
  for (int s = 0; s < NSG; s++) {
    den += tg_l[s][g] * metal::exp(tg_m[s][g] - top);
  }
  for (uint d = thread_index_in_threadgroup; d < D; d += 32 * NSG) {
    float o = 0.0f;
    for (int s = 0; s < NSG; s++) {
      o += tg_acc[s][d] * metal::exp(tg_m[s][g] - top);
    }
    out[(head0 + g) * D + d] = T(den > 0.0f ? o / den : 0.0f);
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}
