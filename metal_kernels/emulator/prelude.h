// The Metal subset our kernels use, in C++17 for g++, so the exact kernel text MLX would compile on a Mac
// compiles here too. Stands in for Metal's standard library and for the `utils.h` MLX prepends to every
// custom kernel (`using namespace metal`, `bfloat16_t`, `float16_t`, `Limits<T>`, `ceildiv`).
//
// Two modes. Run mode (g++, the default): address spaces are erased; threadgroup declarations are rewritten by
// the Python side into guarded, race-checked accessors of per-threadgroup storage (mtl_tg below); half is
// _Float16 rounded per operation, bfloat rounds to nearest even. Check mode (clang -fsyntax-only, with
// MTL_ADDRESS_SPACES defined; see spaces.py): `device`, `constant` and `threadgroup` are clang address spaces 1, 2
// and 3 and `thread` is the default one, so a pointer handed across spaces is an error as in Metal; bfloat is then
// clang's __fp16 (a builtin float type: loads from any address space convert without member functions, which
// plain C++ cannot qualify by address space).
//
// Covered: half and bfloat, 2/3/4-vectors with .x/.y/.z/.w, the common metal:: math (also in fast:: and
// precise::), numeric_limits, threadgroup and SIMD-group barriers, and simd_sum/max/min/prod/and/or/xor,
// simd_shuffle(_up/_down/_xor), simd_broadcast(_first), simd_prefix_(in|ex)clusive_sum, simd_all/any on 32 lanes.
// Not covered: textures, atomics, simdgroup matrices, quad-group operations, function constants; in check mode,
// vector arithmetic straight on a device/threadgroup vector (copy it to a thread value first).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "abi.h"

// Metal keywords, defined only now that every standard header is in.
#ifdef MTL_ADDRESS_SPACES
#define device __attribute__((address_space(1)))
#define constant __attribute__((address_space(2)))
#define threadgroup __attribute__((address_space(3)))
#else
#define device
#define constant
#define threadgroup
#endif
#define thread
#define METAL_FUNC inline
#define INFINITY (__builtin_inff())
#define NAN (__builtin_nanf(""))
#define MAXFLOAT (3.402823466e+38f)
#define HUGE_VALF (__builtin_inff())

// The few type traits the prelude needs (the kernel source may not use std::, so no standard library here).
template <bool B, typename T = void>
struct mtl_enable_if {};
template <typename T>
struct mtl_enable_if<true, T> {
  typedef T type;
};
template <bool B, typename T = void>
using mtl_enable_if_t = typename mtl_enable_if<B, T>::type;
template <typename A, typename B>
struct mtl_same {
  static constexpr bool value = false;
};
template <typename A>
struct mtl_same<A, A> {
  static constexpr bool value = true;
};
template <typename T>
struct mtl_integral {
  static constexpr bool value = false;
};
#define MTL_INTEGRAL(T)                  \
  template <>                            \
  struct mtl_integral<T> {               \
    static constexpr bool value = true;  \
  };
MTL_INTEGRAL(bool)
MTL_INTEGRAL(char)
MTL_INTEGRAL(signed char)
MTL_INTEGRAL(unsigned char)
MTL_INTEGRAL(short)
MTL_INTEGRAL(unsigned short)
MTL_INTEGRAL(int)
MTL_INTEGRAL(unsigned int)
MTL_INTEGRAL(long)
MTL_INTEGRAL(unsigned long)
MTL_INTEGRAL(long long)
MTL_INTEGRAL(unsigned long long)
template <typename T>
struct mtl_arithmetic {
  static constexpr bool value = mtl_integral<T>::value || mtl_same<T, float>::value || mtl_same<T, double>::value ||
                                mtl_same<T, _Float16>::value
#ifdef MTL_ADDRESS_SPACES
                                || mtl_same<T, __fp16>::value
#endif
      ;
};

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;
typedef _Float16 half;

// ---- bfloat: stored as the top 16 bits of a float, rounded to nearest even; arithmetic in float.
#ifdef MTL_ADDRESS_SPACES
typedef __fp16 bfloat16_t;
#else
struct bfloat16_t {
  uint16_t bits;
  bfloat16_t() = default;
  static uint16_t round(float f) {
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
    u += 0x7FFFu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
  }
  bfloat16_t(float f) : bits(round(f)) {}
  template <typename U, typename = mtl_enable_if_t<mtl_arithmetic<U>::value && !mtl_same<U, float>::value>>
  bfloat16_t(U v) : bits(round(static_cast<float>(v))) {}
  operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
  }
};

#define MTL_BF_BINOP(op)                                                                                 \
  inline bfloat16_t operator op(bfloat16_t a, bfloat16_t b) { return bfloat16_t(float(a) op float(b)); } \
  inline float operator op(bfloat16_t a, float b) { return float(a) op b; }                               \
  inline float operator op(float a, bfloat16_t b) { return a op float(b); }                               \
  inline float operator op(bfloat16_t a, half b) { return float(a) op float(b); }                         \
  inline float operator op(half a, bfloat16_t b) { return float(a) op float(b); }                         \
  inline bfloat16_t operator op(bfloat16_t a, int b) { return bfloat16_t(float(a) op float(b)); }         \
  inline bfloat16_t operator op(int a, bfloat16_t b) { return bfloat16_t(float(a) op float(b)); }         \
  inline bfloat16_t operator op(bfloat16_t a, uint b) { return bfloat16_t(float(a) op float(b)); }        \
  inline bfloat16_t operator op(uint a, bfloat16_t b) { return bfloat16_t(float(a) op float(b)); }
MTL_BF_BINOP(+)
MTL_BF_BINOP(-)
MTL_BF_BINOP(*)
MTL_BF_BINOP(/)
#define MTL_BF_CMP(op)                                                                               \
  inline bool operator op(bfloat16_t a, bfloat16_t b) { return float(a) op float(b); }             \
  inline bool operator op(bfloat16_t a, float b) { return float(a) op b; }                          \
  inline bool operator op(float a, bfloat16_t b) { return a op float(b); }                          \
  inline bool operator op(bfloat16_t a, int b) { return float(a) op float(b); }                     \
  inline bool operator op(int a, bfloat16_t b) { return float(a) op float(b); }
MTL_BF_CMP(<)
MTL_BF_CMP(>)
MTL_BF_CMP(<=)
MTL_BF_CMP(>=)
MTL_BF_CMP(==)
MTL_BF_CMP(!=)
inline bfloat16_t operator-(bfloat16_t a) { return bfloat16_t(-float(a)); }
#define MTL_BF_ASSIGN(op)                                                                                        \
  inline bfloat16_t& operator op##=(bfloat16_t& a, bfloat16_t b) { return a = bfloat16_t(float(a) op float(b)); } \
  inline bfloat16_t& operator op##=(bfloat16_t& a, float b) { return a = bfloat16_t(float(a) op b); }
MTL_BF_ASSIGN(+)
MTL_BF_ASSIGN(-)
MTL_BF_ASSIGN(*)
MTL_BF_ASSIGN(/)
inline float& operator+=(float& a, bfloat16_t b) { return a += float(b); }
inline float& operator-=(float& a, bfloat16_t b) { return a -= float(b); }
inline float& operator*=(float& a, bfloat16_t b) { return a *= float(b); }
inline float& operator/=(float& a, bfloat16_t b) { return a /= float(b); }
#endif
typedef bfloat16_t bfloat;
typedef half float16_t;

// ---- vectors. Like Metal, a 3-vector takes the space of a 4-vector; conversions between types are explicit.
template <typename T, int N>
struct mtl_vec_storage;
template <typename T>
struct alignas(2 * sizeof(T)) mtl_vec_storage<T, 2> {
  T x, y;
};
template <typename T>
struct alignas(4 * sizeof(T)) mtl_vec_storage<T, 3> {
  T x, y, z, _pad;
};
template <typename T>
struct alignas(4 * sizeof(T)) mtl_vec_storage<T, 4> {
  T x, y, z, w;
};

template <typename T, int N>
struct vec : mtl_vec_storage<T, N> {
  vec() = default;
  vec(T s) {
    for (int i = 0; i < N; i++) (*this)[i] = s;
  }
  template <typename... A, typename = mtl_enable_if_t<sizeof...(A) == N && (N > 1)>>
  vec(A... a) {
    T v[N] = {static_cast<T>(a)...};
    for (int i = 0; i < N; i++) (*this)[i] = v[i];
  }
  template <typename U>
  explicit vec(const vec<U, N>& o) {
    for (int i = 0; i < N; i++) (*this)[i] = static_cast<T>(o[i]);
  }
#ifdef MTL_ADDRESS_SPACES  // copies out of the other address spaces (member functions cannot take them)
  vec(const vec&) = default;  // clang counts the constructors below as copy constructors
  vec& operator=(const vec&) = default;
  vec(const device vec& o) { __builtin_memcpy(this, (const void*)&o, sizeof o); }
  vec(const constant vec& o) { __builtin_memcpy(this, (const void*)&o, sizeof o); }
  vec(const threadgroup vec& o) { __builtin_memcpy(this, (const void*)&o, sizeof o); }
#endif
  T& operator[](int i) { return (&this->x)[i]; }
  const T& operator[](int i) const { return (&this->x)[i]; }
};

#define MTL_VEC_BINOP(op)                                                                      \
  template <typename T, int N>                                                                 \
  vec<T, N> operator op(const vec<T, N>& a, const vec<T, N>& b) {                              \
    vec<T, N> r;                                                                               \
    for (int i = 0; i < N; i++) r[i] = a[i] op b[i];                                           \
    return r;                                                                                  \
  }                                                                                            \
  template <typename T, int N, typename S, typename = mtl_enable_if_t<mtl_arithmetic<S>::value>> \
  vec<T, N> operator op(const vec<T, N>& a, S b) {                                             \
    vec<T, N> r;                                                                               \
    for (int i = 0; i < N; i++) r[i] = a[i] op static_cast<T>(b);                              \
    return r;                                                                                  \
  }                                                                                            \
  template <typename T, int N, typename S, typename = mtl_enable_if_t<mtl_arithmetic<S>::value>> \
  vec<T, N> operator op(S a, const vec<T, N>& b) {                                             \
    vec<T, N> r;                                                                               \
    for (int i = 0; i < N; i++) r[i] = static_cast<T>(a) op b[i];                              \
    return r;                                                                                  \
  }                                                                                            \
  template <typename T, int N, typename S>                                                     \
  vec<T, N>& operator op##=(vec<T, N>& a, const S& b) {                                        \
    return a = a op b;                                                                         \
  }
MTL_VEC_BINOP(+)
MTL_VEC_BINOP(-)
MTL_VEC_BINOP(*)
MTL_VEC_BINOP(/)
MTL_VEC_BINOP(&)
MTL_VEC_BINOP(|)
MTL_VEC_BINOP(^)
MTL_VEC_BINOP(<<)
MTL_VEC_BINOP(>>)
template <typename T, int N>
vec<T, N> operator-(const vec<T, N>& a) {
  vec<T, N> r;
  for (int i = 0; i < N; i++) r[i] = -a[i];
  return r;
}

#define MTL_VEC_TYPES(T, name) \
  typedef vec<T, 2> name##2;   \
  typedef vec<T, 3> name##3;   \
  typedef vec<T, 4> name##4;
MTL_VEC_TYPES(float, float)
MTL_VEC_TYPES(half, half)
MTL_VEC_TYPES(bfloat16_t, bfloat)
MTL_VEC_TYPES(int, int)
MTL_VEC_TYPES(uint, uint)
MTL_VEC_TYPES(short, short)
MTL_VEC_TYPES(ushort, ushort)
MTL_VEC_TYPES(char, char)
MTL_VEC_TYPES(uchar, uchar)
MTL_VEC_TYPES(bool, bool)

namespace metal {

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(int(a) | int(b)); }

template <typename T>
struct numeric_limits;
template <>
struct numeric_limits<float> {
  static float infinity() { return __builtin_inff(); }
  static float max() { return 3.402823466e+38f; }
  static float min() { return 1.175494351e-38f; }
  static float lowest() { return -3.402823466e+38f; }
  static float epsilon() { return 1.192092896e-07f; }
  static float quiet_NaN() { return __builtin_nanf(""); }
};
template <>
struct numeric_limits<half> {
  static half infinity() { return half(__builtin_inff()); }
  static half max() { return half(65504.0f); }
  static half min() { return half(6.103515625e-05f); }
  static half lowest() { return half(-65504.0f); }
  static half epsilon() { return half(0.0009765625f); }
  static half quiet_NaN() { return half(__builtin_nanf("")); }
};
template <>
struct numeric_limits<int> {
  static int max() { return 2147483647; }
  static int min() { return -2147483647 - 1; }
  static int lowest() { return -2147483647 - 1; }
};
template <>
struct numeric_limits<uint> {
  static uint max() { return 4294967295u; }
  static uint min() { return 0; }
  static uint lowest() { return 0; }
};

// Scalar math: float uses the C builtins; half and bfloat compute in float and round the result.
#define MTL_MATH1(name, builtin)                                                         \
  inline float name(float x) { return builtin(x); }                                      \
  inline half name(half x) { return half(builtin(float(x))); }                           \
  inline bfloat16_t name(bfloat16_t x) { return bfloat16_t(builtin(float(x))); }          \
  template <typename T, int N>                                                           \
  vec<T, N> name(const vec<T, N>& v) {                                                   \
    vec<T, N> r;                                                                         \
    for (int i = 0; i < N; i++) r[i] = name(v[i]);                                       \
    return r;                                                                            \
  }
#define MTL_MATH_ALL                          \
  MTL_MATH1(exp, __builtin_expf)              \
  MTL_MATH1(exp2, __builtin_exp2f)            \
  MTL_MATH1(log, __builtin_logf)              \
  MTL_MATH1(log2, __builtin_log2f)            \
  MTL_MATH1(sqrt, __builtin_sqrtf)            \
  MTL_MATH1(rsqrt, 1.0f / __builtin_sqrtf)    \
  MTL_MATH1(tanh, __builtin_tanhf)            \
  MTL_MATH1(sin, __builtin_sinf)              \
  MTL_MATH1(cos, __builtin_cosf)              \
  MTL_MATH1(floor, __builtin_floorf)          \
  MTL_MATH1(ceil, __builtin_ceilf)            \
  MTL_MATH1(round, __builtin_roundf)          \
  MTL_MATH1(trunc, __builtin_truncf)          \
  MTL_MATH1(fabs, __builtin_fabsf)            \
  inline float pow(float a, float b) { return __builtin_powf(a, b); } \
  inline float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
MTL_MATH_ALL
namespace fast {
MTL_MATH_ALL
}
namespace precise {
MTL_MATH_ALL
}

inline int abs(int x) { return x < 0 ? -x : x; }
inline float abs(float x) { return __builtin_fabsf(x); }
inline half abs(half x) { return x < half(0) ? half(-x) : x; }
template <typename T>
inline T max(T a, T b) {
  return a > b ? a : b;
}
template <typename T>
inline T min(T a, T b) {
  return a < b ? a : b;
}
inline float max(float a, float b) { return __builtin_fmaxf(a, b); }  // like fmax: a NaN operand loses
inline float min(float a, float b) { return __builtin_fminf(a, b); }
inline float fmax(float a, float b) { return __builtin_fmaxf(a, b); }
inline float fmin(float a, float b) { return __builtin_fminf(a, b); }
template <typename T>
inline T clamp(T x, T lo, T hi) {
  return min(max(x, lo), hi);
}
template <typename T>
inline T select(T a, T b, bool c) {
  return c ? b : a;
}
inline bool isnan(float x) { return x != x; }
inline bool isinf(float x) { return __builtin_isinf(x); }
inline bool isfinite(float x) { return __builtin_isfinite(x); }
template <typename T, int N>
T dot(const vec<T, N>& a, const vec<T, N>& b) {
  T r = a[0] * b[0];
  for (int i = 1; i < N; i++) r += a[i] * b[i];
  return r;
}

// ---- barriers and SIMD-group functions. The default argument records the caller's line for error messages.
inline void threadgroup_barrier(mem_flags f, int line = __builtin_LINE()) { mtl_rt_threadgroup_barrier(line, int(f)); }
inline void simdgroup_barrier(mem_flags f, int line = __builtin_LINE()) { mtl_rt_simdgroup_barrier(line, int(f)); }

template <typename T>
struct mtl_lanes {  // every lane's value of one SIMD-group operation
  const unsigned char* base;
  unsigned lane, width;
  mtl_lanes(const T& v, int line, const char* op) {
    base = static_cast<const unsigned char*>(mtl_rt_simd_exchange(&v, sizeof(T), line, op));
    mtl_rt_simd_info(&lane, &width);
  }
  T operator[](unsigned i) const {
    T v;
    __builtin_memcpy(&v, base + i * MTL_SLOT, sizeof(T));
    return v;
  }
};

// Reductions combine lanes as a butterfly (pairs at distance 16, 8, ..., 1), as a GPU's shuffle tree would,
// so the rounding is the same for every lane and every order in which lanes arrive.
template <typename T, typename F>
T mtl_reduce(const mtl_lanes<T>& l, F f) {
  T v[32];
  for (unsigned i = 0; i < l.width; i++) v[i] = l[i];
  for (unsigned n = l.width; n > 1; n = (n + 1) / 2) {
    unsigned half_n = (n + 1) / 2;
    for (unsigned i = 0; i + half_n < n; i++) v[i] = f(v[i], v[i + half_n]);
  }
  return v[0];
}
template <typename T>
T simd_sum(T x, int line = __builtin_LINE()) {
  return mtl_reduce(mtl_lanes<T>(x, line, "simd_sum"), [](T a, T b) { return T(a + b); });
}
template <typename T>
T simd_prod(T x, int line = __builtin_LINE()) {
  return mtl_reduce(mtl_lanes<T>(x, line, "simd_prod"), [](T a, T b) { return T(a * b); });
}
template <typename T>
T simd_max(T x, int line = __builtin_LINE()) {
  return mtl_reduce(mtl_lanes<T>(x, line, "simd_max"), [](T a, T b) { return max(a, b); });
}
template <typename T>
T simd_min(T x, int line = __builtin_LINE()) {
  return mtl_reduce(mtl_lanes<T>(x, line, "simd_min"), [](T a, T b) { return min(a, b); });
}
template <typename T>
T simd_and(T x, int line = __builtin_LINE()) {
  return mtl_reduce(mtl_lanes<T>(x, line, "simd_and"), [](T a, T b) { return T(a & b); });
}
template <typename T>
T simd_or(T x, int line = __builtin_LINE()) {
  return mtl_reduce(mtl_lanes<T>(x, line, "simd_or"), [](T a, T b) { return T(a | b); });
}
template <typename T>
T simd_xor(T x, int line = __builtin_LINE()) {
  return mtl_reduce(mtl_lanes<T>(x, line, "simd_xor"), [](T a, T b) { return T(a ^ b); });
}
inline bool simd_all(bool x, int line = __builtin_LINE()) {
  mtl_lanes<bool> l(x, line, "simd_all");
  for (unsigned i = 0; i < l.width; i++)
    if (!l[i]) return false;
  return true;
}
inline bool simd_any(bool x, int line = __builtin_LINE()) {
  mtl_lanes<bool> l(x, line, "simd_any");
  for (unsigned i = 0; i < l.width; i++)
    if (l[i]) return true;
  return false;
}
template <typename T>
T simd_shuffle(T x, ushort lane, int line = __builtin_LINE()) {
  mtl_lanes<T> l(x, line, "simd_shuffle");
  if (lane >= l.width) mtl_rt_fail("simd_shuffle from a lane outside the SIMD-group", line);
  return l[lane];
}
template <typename T>
T simd_broadcast(T x, ushort lane, int line = __builtin_LINE()) {
  mtl_lanes<T> l(x, line, "simd_broadcast");
  if (lane >= l.width) mtl_rt_fail("simd_broadcast from a lane outside the SIMD-group", line);
  return l[lane];
}
template <typename T>
T simd_broadcast_first(T x, int line = __builtin_LINE()) {
  return mtl_lanes<T>(x, line, "simd_broadcast_first")[0];
}
template <typename T>
T simd_shuffle_down(T x, ushort delta, int line = __builtin_LINE()) {  // the upper `delta` lanes keep their value
  mtl_lanes<T> l(x, line, "simd_shuffle_down");
  return l.lane + delta < l.width ? l[l.lane + delta] : x;
}
template <typename T>
T simd_shuffle_up(T x, ushort delta, int line = __builtin_LINE()) {  // the lower `delta` lanes keep their value
  mtl_lanes<T> l(x, line, "simd_shuffle_up");
  return l.lane >= delta ? l[l.lane - delta] : x;
}
template <typename T>
T simd_shuffle_xor(T x, ushort mask, int line = __builtin_LINE()) {
  mtl_lanes<T> l(x, line, "simd_shuffle_xor");
  unsigned src = l.lane ^ mask;
  return src < l.width ? l[src] : x;
}
template <typename T>
T simd_prefix_inclusive_sum(T x, int line = __builtin_LINE()) {
  mtl_lanes<T> l(x, line, "simd_prefix_inclusive_sum");
  T s = l[0];
  for (unsigned i = 1; i <= l.lane; i++) s = T(s + l[i]);
  return s;
}
template <typename T>
T simd_prefix_exclusive_sum(T x, int line = __builtin_LINE()) {
  mtl_lanes<T> l(x, line, "simd_prefix_exclusive_sum");
  T s = T(0);
  for (unsigned i = 0; i < l.lane; i++) s = T(s + l[i]);
  return s;
}

}  // namespace metal

using namespace metal;

// ---- what MLX's utils.h adds
template <typename T>
struct Limits {
  static T max() { return metal::numeric_limits<T>::max(); }
  static T min() { return metal::numeric_limits<T>::lowest(); }
  static T finite_max() { return metal::numeric_limits<T>::max(); }
  static T finite_min() { return metal::numeric_limits<T>::lowest(); }
};
template <typename T, typename U>
inline T ceildiv(T n, U d) {
  return (n + d - 1) / d;
}

#ifndef MTL_ADDRESS_SPACES
// ---- threadgroup arrays, run mode: build.py rewrites `threadgroup T a[N][M];` into `mtl_tg<T, N, M> a(site, "a");`.
// Every element access checks the bounds of the whole array (its guard zone; the memory also sits between unmapped
// pages for accesses through pointers) and tells the runtime which thread touched which element, for the race
// check. Accesses through a pointer taken from the array (`threadgroup T* p = a[i];`) are not seen.
struct mtl_idx {  // an index, and the line of the expression that indexes
  long v;
  int line;
  template <typename I, typename = mtl_enable_if_t<mtl_integral<I>::value>>
  mtl_idx(I i, int l = __builtin_LINE()) : v(static_cast<long>(i)), line(l) {}
};
template <typename T, long TOTAL, long... D>
struct mtl_tg_view;
template <typename T, long TOTAL, long D0>
struct mtl_tg_view<T, TOTAL, D0> {
  T* base;
  int site;
  long off;  // flat element offset of this row
  T& operator[](mtl_idx i) const {
    const long e = off + i.v;
    if (e < 0 || e >= TOTAL) mtl_rt_tg_out_of_bounds(site, e, i.line);
    mtl_rt_tg_touch(site, e, i.line);
    return base[e];
  }
  // A pointer to the row. A template, so that `a[i]` never also matches the built-in pointer subscript (built-in
  // candidates use only non-template conversions).
  template <typename P, typename = mtl_enable_if_t<mtl_same<P, T*>::value || mtl_same<P, const T*>::value>>
  operator P() const {
    return base + off;
  }
};
template <typename T, long TOTAL, long D0, long D1, long... R>
struct mtl_tg_view<T, TOTAL, D0, D1, R...> {
  T* base;
  int site;
  long off;
  mtl_tg_view<T, TOTAL, D1, R...> operator[](mtl_idx i) const { return {base, site, off + i.v * (D1 * ... * R)}; }
};
template <typename T, long... D>
struct mtl_tg : mtl_tg_view<T, (1 * ... * D), D...> {
  mtl_tg(int site, const char* name)
      : mtl_tg_view<T, (1 * ... * D), D...>{
            static_cast<T*>(mtl_rt_tg_alloc(site, sizeof(T) * (1 * ... * D), alignof(T), name, sizeof(T))), site, 0} {}
};
#endif

// The launcher turns the runtime's plain attributes into Metal's vector types.
inline uint3 mtl_u3(const unsigned v[3]) { return uint3(v[0], v[1], v[2]); }
