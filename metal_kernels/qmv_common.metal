// Helpers for the quantized matrix-vector kernels (MLX's affine layout: w = scale * q + bias per group, each row's
// values packed LSB-first into uint32 words). Placed before the kernel signature as its header.
//
// Every pointer a helper takes from the kernel's inputs is a template type: MLX passes an input of fewer than 8
// elements in the `constant` address space (a 1 x 32 weight at 4 bits is 4 words, its scales 1 value) and the
// others in `device`, and Metal rejects a pointer given to a parameter of the other space. Thread arrays stay
// `thread`.

// A lane's VPT activations into float registers, and their sum (the bias term's factor: per group,
// sum_j x_j (s q_j + b) = s * (x . q) + b * sum(x)). At 4 bits the value at nibble j of a 16-bit half is
// pre-divided by 16^j, as MLX's load_vector does, so that qdot can mask each nibble in place instead of shifting
// it: (x / 16^j) * (q * 16^j) is x * q exactly, both factors being powers of two apart from x and q.
template <int BITS, int VPT, typename X>
inline float load_x(X x, thread float* xt) {
  float sum = 0.0f;
  for (int i = 0; i < VPT; i += 4) {
    const float x0 = float(x[i]);
    const float x1 = float(x[i + 1]);
    const float x2 = float(x[i + 2]);
    const float x3 = float(x[i + 3]);
    sum += x0 + x1 + x2 + x3;
    xt[i] = x0;
    xt[i + 1] = BITS == 4 ? x1 / 16.0f : x1;
    xt[i + 2] = BITS == 4 ? x2 / 256.0f : x2;
    xt[i + 3] = BITS == 4 ? x3 / 4096.0f : x3;
  }
  return sum;
}

// One lane's step on one row: the two packed words at w (2 * 32 / BITS values) against the activations load_x
// prepared, with the group's scale and bias applied once: scale * (x . q) + bias * sum(x).
template <int BITS, typename W>
inline float qdot(W w, thread const float* xt, float scale, float bias, float sum) {
  float acc = 0.0f;
  for (int i = 0; i < 2; i++) {
    const uint32_t word = w[i];
    if (BITS == 4) {
      for (int h = 0; h < 2; h++) {  // two 16-bit halves of four nibbles each
        const uint32_t part = (word >> (16 * h)) & 0xffffu;
        const thread float* xh = xt + 8 * i + 4 * h;
        acc += xh[0] * float(part & 0x000fu) + xh[1] * float(part & 0x00f0u) +
               xh[2] * float(part & 0x0f00u) + xh[3] * float(part & 0xf000u);
      }
    } else {
      const thread float* xw = xt + 4 * i;
      acc += xw[0] * float(word & 0xffu) + xw[1] * float((word >> 8) & 0xffu) +
             xw[2] * float((word >> 16) & 0xffu) + xw[3] * float(word >> 24);
    }
  }
  return scale * acc + bias * sum;
}
