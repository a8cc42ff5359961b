// Paged decode attention for multi-head latent attention (DeepSeek-V2/V3, Kimi K2), in latent space: the
// query has W_UK absorbed, so every head attends over the same cached rows. A row of the pool is
// [latent c (R) | rope key k_r (P)]: the score of head h is scale * (q_latent[h] . c + q_rope[h] . k_r) and the
// output of head h is the softmax-weighted sum of the rows' c. One latent row serves as key and value.
//
// Design: MLA is attention with one KV head for all H query heads, so the cost is reading each row once and
// using it for as many heads as possible. One threadgroup per (sequence, group of HG heads[, partition]) has NSG
// SIMD-groups (up to 32) that each own HPS heads (HG = NSG * HPS; for DeepSeek-V3's 128 heads at R = 512,
// NSG = 32 and HPS = 1: 4 threadgroups per sequence, so each row is read 4 times per layer, not once per head).
// The threadgroup walks its tokens in tiles of TR rows: the SIMD-groups copy a tile into threadgroup memory
// (SIMD-group s copies rows s, s + NSG, ...; lane l columns l, l + 32, ...), a barrier, then every SIMD-group
// scores the TR rows for each of its heads (lane l holds query features l, l + 32, ...: one simd_sum per row
// and head), updates its online softmax once per tile (one rescale for TR rows) and adds the rows into its
// output; a second barrier before the next tile overwrites the first.
// Registers per lane: per head the query (R + P) / 32, the output R / 32, the max and the sum, and TR scores:
//   HPS * ((2R + P) / 32 + 2) + TR floats; R = 512, P = 64, HPS = 1, TR = 8: 18 + 16 + 2 + 8 = 44 floats
//   (paged.py picks HPS so that the per-head part stays within 40; MLX's sdpa_vector_2pass_1_gqa keeps ~40).
// Threadgroup memory: TR * (R + P) floats; R = 512, P = 64: 8 * 576 * 4 = 18432 bytes, below Metal's 32 KB
//   (paged.py takes R + P <= 960: 30720 bytes).
// SPLIT = 1 (pass 1 of 2, for long contexts): the tokens are cut into `parts` contiguous chunks (parts = grid z
// / B) and each threadgroup writes its chunk's unnormalised (output, max, sum) in float32;
// paged_attention_reduce.metal merges the partitions (MLX's sdpa_vector_2pass_2).
//
// Template: T element type; O output type (T, or float with SPLIT); R kv_lora_rank and P rope dim (multiples
//   of 32); HPS heads per SIMD-group; SPLIT.
// Inputs: q_latent (B, H, R); q_rope (B, H, P); pool (num_blocks, BS, R + P); block_tables (B, max_blocks) int32;
//   context_lens (B,) int32 (0: an empty batch slot, output 0); scale: float32 scalar.
// Output: SPLIT = 0: out (B, H, R) in T; SPLIT = 1: out (B, H, parts, R + 2) float32.
// Grid (32 * NSG, H / HG, B * parts), threadgroup (32 * NSG, 1, 1).
// No infinities: the running maximum starts at -1e30 so that fast-math compilation cannot change the result.

constexpr int LR = R / 32;
constexpr int LP = P / 32;
constexpr int TR = 8;
constexpr float NEG = -1e30f;
const uint lane = thread_index_in_simdgroup;
const uint sg = simdgroup_index_in_threadgroup;
const int nsg = simdgroups_per_threadgroup;
const int n_heads = q_latent_shape[1];
const int BS = pool_shape[1];
const int max_blocks = block_tables_shape[1];
const int parts = SPLIT ? threadgroups_per_grid.z / q_latent_shape[0] : 1;
const int b = threadgroup_position_in_grid.z / parts;
const int part = threadgroup_position_in_grid.z % parts;
const size_t head0 = (size_t)b * n_heads + (threadgroup_position_in_grid.y * nsg + sg) * HPS;
const int n = context_lens[b];
const int per_part = (n + parts - 1) / parts;
const int first = part * per_part;
const int end = min(n, first + per_part);

threadgroup float tile[TR][R + P];
float ql[HPS][LR];
float qr[HPS][LP];
float acc[HPS][LR];
float m[HPS];
float l[HPS];
for (int h = 0; h < HPS; h++) {
  for (int i = 0; i < LR; i++) {
    ql[h][i] = float(q_latent[(head0 + h) * R + i * 32 + lane]) * scale;
    acc[h][i] = 0.0f;
  }
  for (int i = 0; i < LP; i++) {
    qr[h][i] = float(q_rope[(head0 + h) * P + i * 32 + lane]) * scale;
  }
  m[h] = NEG;
  l[h] = 0.0f;
}

for (int t0 = first; t0 < end; t0 += TR) {
  const int rows = min(TR, end - t0);
  for (int r = sg; r < rows; r += nsg) {
    const int t = t0 + r;
    const device T* row = pool + (size_t)(block_tables[b * max_blocks + t / BS] * BS + t % BS) * (R + P);
    for (int i = lane; i < R + P; i += 32) {
      tile[r][i] = float(row[i]);
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (int h = 0; h < HPS; h++) {
    float s[TR];
    float top = m[h];
    for (int r = 0; r < TR; r++) {
      if (r < rows) {
        float d = 0.0f;
        for (int i = 0; i < LR; i++) {
          d += ql[h][i] * tile[r][i * 32 + lane];
        }
        for (int i = 0; i < LP; i++) {
          d += qr[h][i] * tile[r][R + i * 32 + lane];
        }
        s[r] = simd_sum(d);
        top = max(top, s[r]);
      }
    }
    const float corr = metal::exp(m[h] - top);
    l[h] *= corr;
    for (int i = 0; i < LR; i++) {
      acc[h][i] *= corr;
    }
    for (int r = 0; r < TR; r++) {
      if (r < rows) {
        const float p = metal::exp(s[r] - top);
        l[h] += p;
        for (int i = 0; i < LR; i++) {
          acc[h][i] += p * tile[r][i * 32 + lane];
        }
      }
    }
    m[h] = top;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

for (int h = 0; h < HPS; h++) {
  if (SPLIT) {
    const size_t slot = ((head0 + h) * parts + part) * (R + 2);
    for (int i = 0; i < LR; i++) {
      out[slot + i * 32 + lane] = O(acc[h][i]);
    }
    if (lane == 0) {
      out[slot + R] = O(m[h]);
      out[slot + R + 1] = O(l[h]);
    }
  } else {
    for (int i = 0; i < LR; i++) {
      out[(head0 + h) * R + i * 32 + lane] = O(l[h] > 0.0f ? acc[h][i] / l[h] : 0.0f);
    }
  }
}
