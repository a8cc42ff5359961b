// Helpers for the quantized matrix-vector kernels (MLX's affine layout: w = scale * q + bias per group, each row's
// values packed LSB-first into uint32 words). Placed before the kernel signature as its header.

// One lane's share of a row: VPT consecutive activations x (already in float) times VPT packed weights starting
// at word w. Returns sum_j x[j] * q[j]; the caller applies the group's scale and bias.
template <int BITS, int VPT>
inline float qdot(const device uint32_t* w, thread const float* x) {
  constexpr int PACK = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  float s = 0.0f;
  for (int wi = 0; wi < VPT / PACK; wi++) {
    const uint32_t word = w[wi];
    for (int j = 0; j < PACK; j++) {
      s += x[wi * PACK + j] * float((word >> (j * BITS)) & MASK);
    }
  }
  return s;
}
