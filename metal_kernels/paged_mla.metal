// Paged decode attention for multi-head latent attention (DeepSeek-V2/V3, Kimi K2), in latent space: the
// query has W_UK absorbed, so every head attends over the same cached rows. A row of the pool is
// [latent c (R) | rope key k_r (P)]: the score of head h is scale * (q_latent[h] . c + q_rope[h] . k_r) and the
// output of head h is the softmax-weighted sum of the rows' c. One latent row serves as key and value.
//
// One threadgroup per (sequence, group of HG heads): the heads of a group share each row it reads. The NSG
// SIMD-groups take every NSG-th block with an online softmax per head (lane l holds features l, l + 32, ...);
// partial results are merged through threadgroup memory, one head at a time so it stays at NSG * R floats.
//
// Template: T element type; R kv_lora_rank and P rope dim (multiples of 32); HG heads per threadgroup;
//   BS tokens per block; NSG SIMD-groups per threadgroup.
// Inputs: q_latent (B, H, R); q_rope (B, H, P); pool (num_blocks, BS, R + P); block_tables (B, max_blocks) int32;
//   context_lens (B,) int32 (0: an empty batch slot, output 0); scale: float32 scalar.
// Output: out (B, H, R).
// Grid (32 * NSG, H / HG, B), threadgroup (32 * NSG, 1, 1).

constexpr int LR = R / 32;
constexpr int LP = P / 32;
constexpr float NEG = -1e30f;
const uint lane = thread_index_in_simdgroup;
const uint sg = simdgroup_index_in_threadgroup;
const int b = threadgroup_position_in_grid.z;
const int n_heads = q_latent_shape[1];
const int max_blocks = block_tables_shape[1];
const int n = context_lens[b];
const size_t head0 = (size_t)b * n_heads + threadgroup_position_in_grid.y * HG;

float ql[HG][LR];
float qr[HG][LP];
float m[HG];
float l[HG];
float acc[HG][LR];
for (int h = 0; h < HG; h++) {
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

for (int blk = sg; blk * BS < n; blk += NSG) {
  const int phys = block_tables[b * max_blocks + blk];
  const int rows = min(n - blk * BS, BS);
  for (int t = 0; t < rows; t++) {
    const device T* row = pool + (size_t)(phys * BS + t) * (R + P);
    float c[LR];
    float kr[LP];
    for (int i = 0; i < LR; i++) {
      c[i] = float(row[i * 32 + lane]);
    }
    for (int i = 0; i < LP; i++) {
      kr[i] = float(row[R + i * 32 + lane]);
    }
    for (int h = 0; h < HG; h++) {
      float s = 0.0f;
      for (int i = 0; i < LR; i++) {
        s += ql[h][i] * c[i];
      }
      for (int i = 0; i < LP; i++) {
        s += qr[h][i] * kr[i];
      }
      s = simd_sum(s);
      const float m_new = max(m[h], s);
      const float corr = metal::exp(m[h] - m_new);
      const float p = metal::exp(s - m_new);
      l[h] = l[h] * corr + p;
      for (int i = 0; i < LR; i++) {
        acc[h][i] = acc[h][i] * corr + p * c[i];
      }
      m[h] = m_new;
    }
  }
}

threadgroup float tg_m[NSG][HG];
threadgroup float tg_l[NSG][HG];
threadgroup float tg_acc[NSG][R];
if (lane == 0) {
  for (int h = 0; h < HG; h++) {
    tg_m[sg][h] = m[h];
    tg_l[sg][h] = l[h];
  }
}
for (int h = 0; h < HG; h++) {
  for (int i = 0; i < LR; i++) {
    tg_acc[sg][i * 32 + lane] = acc[h][i];
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  float top = NEG;
  for (int s = 0; s < NSG; s++) {
    top = max(top, tg_m[s][h]);
  }
  float den = 0.0f;
  for (int s = 0; s < NSG; s++) {
    den += tg_l[s][h] * metal::exp(tg_m[s][h] - top);
  }
  for (uint d = thread_index_in_threadgroup; d < R; d += 32 * NSG) {
    float o = 0.0f;
    for (int s = 0; s < NSG; s++) {
      o += tg_acc[s][d] * metal::exp(tg_m[s][h] - top);
    }
    out[(head0 + h) * R + d] = T(den > 0.0f ? o / den : 0.0f);
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}
