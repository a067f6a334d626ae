// adamlab fused CPU step: Adam and Yogi over many tensors in one call.
//
// One call walks a table of tensors (data pointers and sizes) and streams every element
// once: read θ, g, v, s (and max s), update in registers in fp32 (fp64 for fp64 tensors),
// write θ, v, s. Work is split into fixed-size chunks *across* tensors, so many small
// tensors cost one parallel region, not one dispatch each.
//
// Low-precision state (adamlab.reference, "low-precision state"): the same walk, decoding
// bfloat16 or 8-bit blockwise moments to fp32 and encoding the new ones (stochastic rounding
// from counter-based random bits; blocks of B elements, B dividing a chunk, so a block never
// straddles two tensors or two threads); see the section of that name below.
//
// The math is adamlab.reference.step, term for term. The per-step numbers arrive as
// `adamlab_coefficients` records, computed in Python by adamlab._moments.coefficients
// (the same field names): this file never computes 1-β^t.
//
// Plain C ABI (extern "C"), no torch or Python headers, loaded with ctypes (see
// adamlab/optim/fused_cpu.py). The library needs libgomp.so.1 by that name; where torch has
// already loaded a library of that name (the CPU torch wheels tested here: only
// torch/lib/libgomp.so.1 is mapped), the dynamic loader reuses it, so the kernel shares
// torch's OpenMP thread pool and count. A torch built against a differently named OpenMP
// runtime (a hash-suffixed libgomp, LLVM's libomp, Intel's libiomp5) would leave the kernel
// its own runtime, with its own threads.
//
// Portable builds: the element loops are compiled for x86-64-v4 (AVX-512 with the BW and VL
// extensions, which the 8- and 16-bit state loops need to stay in 512-bit registers), AVX2 and baseline x86-64
// (`target_clones`, GCC/clang on x86-64 Linux); the loader picks one for this CPU.

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

// ---- storage types -------------------------------------------------------------------
enum DType { F32 = 0, F64 = 1, BF16 = 2, F16 = 3 };

struct bf16 {
  uint16_t bits;
};
#if defined(__FLT16_MAX__)
typedef _Float16 f16;
#define ADAMLAB_HAVE_FLOAT16 1
#else
struct f16 {
  uint16_t bits;
};
#endif

template <typename T, typename M>
inline M load(const T* p, int64_t i) {
  return (M)p[i];
}
template <typename T, typename M>
inline void store(T* p, int64_t i, M x) {
  p[i] = (T)x;
}

// bfloat16: the top half of a float32; round to nearest even on the way back.
template <>
inline float load<bf16, float>(const bf16* p, int64_t i) {
  uint32_t u = (uint32_t)p[i].bits << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
template <>
inline void store<bf16, float>(bf16* p, int64_t i, float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  p[i].bits = (x != x) ? (uint16_t)0x7fc0 : (uint16_t)rounded;
}
template <>
inline double load<bf16, double>(const bf16* p, int64_t i) {
  return (double)load<bf16, float>(p, i);
}
template <>
inline void store<bf16, double>(bf16* p, int64_t i, double x) {
  store<bf16, float>(p, i, (float)x);  // double rounding, as torch's .to(bfloat16) does
}

#ifndef ADAMLAB_HAVE_FLOAT16
#error "adamlab's fused CPU kernel needs a compiler with _Float16 (gcc >= 12, clang >= 15)"
#endif

// ---- the ABI's records (field names: adamlab._moments.Coefficients) ----------------------
}  // namespace

extern "C" {
struct adamlab_coefficients {
  double w1;         // v ← v + w1 (g - v)
  double w2;         // weight of g² in s
  double step_size;  // η/(1-β1^t) with bias correction, else η
  double bc2_sqrt;   // √(1-β2^t) with bias correction, else 1
  double keep1;      // unused here (v's decay is 1 - w1); kept so the record is whole
  double keep2;      // decay factor of s besides β2 (1 unless recursive)
  double c2_prev;    // Yogi compares g² with c2_prev·s (1 unless recursive)
};

struct adamlab_options {
  double lr, beta1, beta2, eps, weight_decay;
  double inv_grad_scale;  // 1/grad_scale (AMP), else 1
  int32_t param_dtype, state_dtype;  // 0 f32, 1 f64, 2 bf16, 3 f16
  int32_t yogi, amsgrad, maximize, decoupled;
};
}  // extern "C"

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(ADAMLAB_NO_CLONES)
#define ADAMLAB_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define ADAMLAB_CLONES
#endif

namespace {

typedef adamlab_coefficients Coef;
typedef adamlab_options Options;

// ---- the per-element math, shared by every loop ------------------------------------------
// The update of adamlab.reference.step, term by term, with the step's numbers taken once.
template <typename M>
struct Rule {
  M grad_mul, decay, l2, w1, w2, keep2, c2_prev, adam_decay, step_size, bc2_sqrt, eps, inv_bc2_sqrt;
  Rule(const Coef& k, const Options& o)
      : grad_mul((M)(o.maximize ? -o.inv_grad_scale : o.inv_grad_scale)),  // unscale, then g ← -g
        decay((M)(o.decoupled ? 1.0 - o.lr * o.weight_decay : 1.0)),       // θ ← θ - ηλθ (AdamW)
        l2((M)(o.decoupled ? 0.0 : o.weight_decay)),                        // g ← g + λθ (L2)
        w1((M)k.w1), w2((M)k.w2), keep2((M)k.keep2), c2_prev((M)k.c2_prev),
        adam_decay((M)(o.beta2 * k.keep2)), step_size((M)k.step_size), bc2_sqrt((M)k.bc2_sqrt), eps((M)o.eps),
        inv_bc2_sqrt((M)(1.0 / k.bc2_sqrt)) {}

  inline M gradient(M g, M theta) const {
    g = g * grad_mul;
    if (l2 != (M)0) g += l2 * theta;  // as the reference: no term at all when λ = 0 (0·NaN is NaN)
    return g;
  }
  // The same with λ ≠ 0 known at compile time (L2): loops instantiated for both skip the
  // per-element select that the vectorized test above becomes.
  template <bool L2>
  inline M gradient(M g, M theta) const {
    g = g * grad_mul;
    if (L2) g += l2 * theta;
    return g;
  }
  inline M first(M v, M g) const { return v + w1 * (g - v); }  // v ← β1 v + (1-β1) g, as torch's lerp
  template <bool YOGI>
  inline M second(M s, M g) const {
    M g2 = g * g;
    if (YOGI) {  // s ← keep2 s + w2 sgn(g² - c2_prev s) g²   (the one line where Yogi differs)
      M x = g2 - c2_prev * s;
      M sign = (M)(x > (M)0) - (M)(x < (M)0);
      return keep2 * s + w2 * (sign * g2);
    }
    return adam_decay * s + w2 * g2;  // s ← (β2 keep2) s + w2 g²
  }
  // AMSGrad's running max of the raw s (PyTorch's form). torch.maximum keeps a NaN from either
  // side: one already in m stays (m != m), and a NaN in s fails m > s, so m takes it.
  static inline M running_max(M m, M s) { return (m > s || m != m) ? m : s; }
  inline M parameter(M theta, M v, M s_used) const {
    M denom = sqrt(s_used) / bc2_sqrt + eps;  // ε after the square root
    return theta - step_size * (v / denom);
  }
  // The same with √(1-β2^t) applied as a product: one division per element fewer, which the
  // low-precision loops (bound by the divider) need; they are compared with the reference at a
  // stated bound, never bit for bit with the fp32 loop.
  inline M parameter_by_product(M theta, M v, M s_used) const {
    M denom = sqrt(s_used) * inv_bc2_sqrt + eps;
    return theta - step_size * (v / denom);
  }
};

// ---- the element loop ------------------------------------------------------------------
// P: parameter (and gradient) storage, S: state storage, M: math type.
template <typename P, typename S, typename M, bool YOGI, bool AMSGRAD>
ADAMLAB_CLONES void update_range(P* __restrict__ param, const P* __restrict__ grad, S* __restrict__ exp_avg,
                                 S* __restrict__ exp_avg_sq, S* __restrict__ max_exp_avg_sq, int64_t begin,
                                 int64_t end, const Coef& k, const Options& o) {
  const Rule<M> r(k, o);
  for (int64_t i = begin; i < end; ++i) {
    M theta = load<P, M>(param, i) * r.decay;
    M g = r.gradient(load<P, M>(grad, i), theta);
    M v = r.first(load<S, M>(exp_avg, i), g);
    M s = r.template second<YOGI>(load<S, M>(exp_avg_sq, i), g);
    M s_used = s;
    if (AMSGRAD) {
      M m = Rule<M>::running_max(load<S, M>(max_exp_avg_sq, i), s);
      store<S, M>(max_exp_avg_sq, i, m);
      s_used = (s != s) ? s : m;  // = m; kept explicit for a NaN s
    }
    theta = r.parameter(theta, v, s_used);
    store<S, M>(exp_avg, i, v);
    store<S, M>(exp_avg_sq, i, s);
    store<P, M>(param, i, theta);
  }
}

typedef void (*RangeFn)(void*, const void*, void*, void*, void*, int64_t, int64_t, const Coef&, const Options&);

template <typename P, typename S, typename M>
RangeFn pick_rule(int yogi, int amsgrad) {
  if (yogi)
    return amsgrad ? (RangeFn)&update_range<P, S, M, true, true> : (RangeFn)&update_range<P, S, M, true, false>;
  return amsgrad ? (RangeFn)&update_range<P, S, M, false, true> : (RangeFn)&update_range<P, S, M, false, false>;
}

template <typename P>
RangeFn pick_state(int state_dtype, int yogi, int amsgrad) {
  // math in fp64 when either side is fp64, else fp32
  switch (state_dtype) {
    case F32: return pick_rule<P, float, typename std::conditional<sizeof(P) == 8, double, float>::type>(yogi, amsgrad);
    case F64: return pick_rule<P, double, double>(yogi, amsgrad);
    case BF16: return pick_rule<P, bf16, typename std::conditional<sizeof(P) == 8, double, float>::type>(yogi, amsgrad);
    case F16: return pick_rule<P, f16, typename std::conditional<sizeof(P) == 8, double, float>::type>(yogi, amsgrad);
  }
  return nullptr;
}

RangeFn pick(int param_dtype, int state_dtype, int yogi, int amsgrad) {
  switch (param_dtype) {
    case F32: return pick_state<float>(state_dtype, yogi, amsgrad);
    case F64: return pick_state<double>(state_dtype, yogi, amsgrad);
    case BF16: return pick_state<bf16>(state_dtype, yogi, amsgrad);
    case F16: return pick_state<f16>(state_dtype, yogi, amsgrad);
  }
  return nullptr;
}

const int64_t kChunk = 1 << 14;        // elements per work item (64 KiB of fp32 per stream)
const int64_t kSerialBelow = 1 << 17;  // below this many elements (~0.1 ms of serial work) waking threads costs more than it saves


// ---- low-precision state (adamlab.reference, section "low-precision state") --------------
// The stored moments are decoded to fp32, updated as above, the parameter updated from the
// new moments, and the new moments encoded for storage:
//   bfloat16, rounded stochastically with counter-based random bits (no generator state);
//   8-bit blockwise: per block of B elements (B a power of two dividing kChunk, so a chunk is
//   whole blocks and a block never straddles two tensors), the absmax of the NEW values, each
//   element's |x|/absmax (IEEE division) rounded to the nearest entry of a small float format.
// Every step here is exact integer or power-of-two arithmetic, so it vectorizes without a
// table search and equals the reference's NumPy bit for bit.
enum Precision { OWN = 0, BF16_SR = 1, BLOCK8 = 2 };
const int U8 = 4;                  // the state dtype code of 8-bit codes
const int64_t kMaxBlock = 8192;    // the largest block (its fp32 values sit in a stack buffer)

inline uint32_t float_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}

// reference.mix32 ("lowbias32"), rounding_key and random_bits
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}
inline uint32_t rounding_key(uint32_t seed, uint32_t t, uint32_t stream) {
  return mix32(mix32(mix32(seed) ^ t) ^ (stream * 0x9e3779b9u));
}
// random_bits(key, index) = mix32(key ^ mix32(index >> 32) ^ (index mod 2^32)). A chunk never
// straddles a multiple of 2^32 (kChunk divides it), so the loops take key ^ mix32(index >> 32)
// once per chunk (Keys) and count the low 32 bits in a 32-bit register.
inline uint32_t random_bits(uint32_t chunk_key, uint32_t low) { return mix32(chunk_key ^ low); }

// reference.round_bf16_stochastic: add 16 random bits below the kept half of the float32
// pattern and truncate. Non-finite values round to nearest: an infinity's low half is zero, so
// the sum leaves it as it is; a NaN becomes the quiet NaN with its sign.
inline uint16_t bf16_stochastic(float x, uint32_t bits) {
  uint32_t u = float_bits(x);
  return (uint16_t)(x != x ? ((u >> 16) & 0x8000u) | 0x7fc0u : (u + (bits & 0xffffu)) >> 16);
}

// reference.encode_minifloat for m in [0, 1]: e = max(⌊log2 m⌋, e_min) read from the exponent
// field (0 and float32 subnormals fall below e_min), y = m·2^(MANT-e) scaled exactly, rint (half
// to even) by adding 2^23, whose integer part then sits in the low mantissa bits. `near` gets
// whether y lies within 2^-16 of a rounding midpoint (k + 1/2): see encode_block.
template <int MANT, int BIAS>
inline uint32_t encode_minifloat(float m, uint32_t& near) {
  const int e_min = 1 - BIAS;
  int e = (int)(float_bits(m) >> 23) - 127;
  e = e > e_min ? e : e_min;
  float y = m * bits_float((uint32_t)(127 + MANT - e) << 23);  // <= 2^(MANT+1)
  float shifted = y + 8388608.0f;
  near |= fabsf(y - (shifted - 8388608.0f)) > 0.5f - 0x1p-16f;
  return (uint32_t)(e - e_min) * (1u << MANT) + (float_bits(shifted) - 0x4b000000u);
}
// reference.decode_minifloat: the code's exponent and mantissa fields placed where float32
// keeps its own make the value times 2^(BIAS-127) (field 0 lands on float32 subnormals, as the
// format's field 0 is subnormal); one exact scaling by 2^(127-BIAS).
template <int MANT, int BIAS>
inline float decode_minifloat(uint32_t code) {
  return bits_float(code << (23 - MANT)) * bits_float((uint32_t)(254 - BIAS) << 23);
}
// v's map: sign in bit 7, SIGNED_FORMAT (4, 3, 15) magnitude; s's map: UNSIGNED_FORMAT (5, 3, 31)
inline float decode_v(uint32_t code) {
  return bits_float(float_bits(decode_minifloat<3, 15>(code & 0x7fu)) | ((code & 0x80u) << 24));
}
inline float decode_s(uint32_t code) { return decode_minifloat<3, 31>(code); }

template <bool SIGNED>
inline uint8_t encode_code(float x, float m, uint32_t& near) {
  return (uint8_t)(SIGNED ? encode_minifloat<3, 15>(m, near) | (x < 0.0f ? 0x80u : 0u) : encode_minifloat<3, 31>(m, near));
}

// reference.quantize_blockwise for one block whose values (n <= kMaxBlock) are in x and whose
// max |x| as a bit pattern is maxbits (non-negative floats order like their patterns; any
// non-finite value makes it >= +inf's): absmax NaN and codes 0 for a non-finite block.
//
// The reference divides, m = |x| / absmax (IEEE), and a division per element would cost more
// than the rest of the step. m' = |x|·fl(1/absmax) is within 3 ulps of m (2^-22 relative), so it
// rounds to the same code unless a rounding midpoint of the format lies between the two: the
// code is monotone in m and continuous across binades (2^MANT·2 in one is 2^MANT in the next),
// so only midpoints matter, and in y = m·2^(MANT-e) <= 16 those 3 ulps are < 2^-18. A block where
// some y' comes within 2^-16 of a midpoint (about one element in 2^15), or whose absmax is so
// small or large that 1/absmax loses precision, is encoded again with the division.
template <bool SIGNED>
inline void encode_block(const float* __restrict__ x, uint8_t* __restrict__ code, int32_t n, uint32_t maxbits,
                         float* absmax) {
  if (maxbits >= 0x7f800000u) {
    *absmax = bits_float(0x7fc00000u);
    memset(code, 0, (size_t)n);
    return;
  }
  const float a = bits_float(maxbits);
  *absmax = a;
  uint32_t near = 0;
  if (a >= 0x1p-125f && a <= 0x1p125f) {
    const float inverse = 1.0f / a;
    for (int32_t j = 0; j < n; ++j) code[j] = encode_code<SIGNED>(x[j], fabsf(x[j]) * inverse, near);
    if (!near) return;
  }
  const float scale = a > 0.0f ? a : 1.0f;  // an all-zero block: codes 0
  for (int32_t j = 0; j < n; ++j) code[j] = encode_code<SIGNED>(x[j], fabsf(x[j]) / scale, near);
}

}  // namespace

extern "C" {
struct adamlab_low_precision {
  int32_t precision;          // 0: moments in their own dtype, 1: bfloat16 stochastic, 2: 8-bit blockwise
  int32_t stochastic_params;  // bfloat16 parameters rounded stochastically (stream 2)
  int64_t block_size;         // 8-bit: elements per block, a power of two <= 8192
};
}  // extern "C"

namespace {

struct Tensors {
  void* param;
  const void* grad;
  void* v;
  void* s;
  void* s_max;
  float* v_absmax;
  float* s_absmax;
};
struct Keys {
  uint32_t v, s, param, s_max;  // rounding_key(seed, t, stream) ^ mix32(index >> 32), for one chunk
};

// Store x at p[i]: stochastically rounded to bfloat16 with the bits of element `low` (SR), or
// as the plain loop does.
template <typename P, typename M, bool SR>
inline void store_rounded(P* p, int64_t i, M x, uint32_t key, uint32_t low) {
  if constexpr (SR)
    p[i].bits = bf16_stochastic((float)x, random_bits(key, low));
  else
    store<P, M>(p, i, x);
}

// Element by element: bfloat16 moments rounded stochastically (SR_STATE), or moments in their
// own dtype with bfloat16 parameters rounded stochastically (SR_PARAM), or both. The pointers
// start at `begin` and a 32-bit counter walks the chunk: it is also the low half of the index.
template <typename P, typename S, typename M, bool SR_STATE, bool SR_PARAM, bool YOGI, bool AMSGRAD, bool L2>
__attribute__((always_inline)) inline void lp_loop(const Tensors& x, int64_t begin, int64_t end, const Keys& key,
                                                   const Rule<M>& r) {
  P* __restrict__ param = (P*)x.param + begin;
  const P* __restrict__ grad = (const P*)x.grad + begin;
  S* __restrict__ exp_avg = (S*)x.v + begin;
  S* __restrict__ exp_avg_sq = (S*)x.s + begin;
  S* __restrict__ max_exp_avg_sq = AMSGRAD ? (S*)x.s_max + begin : nullptr;
  const uint32_t key_v = key.v, key_s = key.s, key_max = key.s_max, key_param = key.param, low = (uint32_t)begin;
  const int32_t n = (int32_t)(end - begin);
  for (int32_t i = 0; i < n; ++i) {
    M theta = load<P, M>(param, i) * r.decay;
    M g = r.template gradient<L2>(load<P, M>(grad, i), theta);
    M v = r.first(load<S, M>(exp_avg, i), g);
    M s = r.template second<YOGI>(load<S, M>(exp_avg_sq, i), g);
    M s_used = s;
    if (AMSGRAD) {
      M m = Rule<M>::running_max(load<S, M>(max_exp_avg_sq, i), s);
      store_rounded<S, M, SR_STATE>(max_exp_avg_sq, i, m, key_max, low + (uint32_t)i);
      s_used = (s != s) ? s : m;
    }
    theta = r.parameter_by_product(theta, v, s_used);  // from the new moments, before they are rounded
    store_rounded<S, M, SR_STATE>(exp_avg, i, v, key_v, low + (uint32_t)i);
    store_rounded<S, M, SR_STATE>(exp_avg_sq, i, s, key_s, low + (uint32_t)i);
    store_rounded<P, M, SR_PARAM>(param, i, theta, key_param, low + (uint32_t)i);
  }
}

template <typename P, typename S, typename M, bool SR_STATE, bool SR_PARAM, bool YOGI, bool AMSGRAD>
ADAMLAB_CLONES void lp_range(const Tensors& x, int64_t begin, int64_t end, int64_t, const Keys& key, const Coef& k,
                             const Options& o) {
  const Rule<M> r(k, o);
  if (r.l2 != (M)0)
    lp_loop<P, S, M, SR_STATE, SR_PARAM, YOGI, AMSGRAD, true>(x, begin, end, key, r);
  else
    lp_loop<P, S, M, SR_STATE, SR_PARAM, YOGI, AMSGRAD, false>(x, begin, end, key, r);
}

// 8-bit blockwise moments, block by block: decode, update, keep the new values and their
// absmax; then encode them (the absmax is only known once the whole block is updated).
template <typename P, bool SR_PARAM, bool YOGI, bool L2>
__attribute__((always_inline)) inline void block8_loop(const Tensors& x, int64_t begin, int64_t end, int64_t block,
                                                       const Keys& key, const Rule<float>& r) {
  alignas(64) float new_v[kMaxBlock], new_s[kMaxBlock];
  const uint32_t key_param = key.param;
  for (int64_t b0 = begin; b0 < end; b0 += block) {
    P* __restrict__ param = (P*)x.param + b0;
    const P* __restrict__ grad = (const P*)x.grad + b0;
    uint8_t* __restrict__ code_v = (uint8_t*)x.v + b0;
    uint8_t* __restrict__ code_s = (uint8_t*)x.s + b0;
    const int32_t n = (int32_t)(end - b0 < block ? end - b0 : block);
    const int64_t q = b0 / block;
    const float absmax_v = x.v_absmax[q], absmax_s = x.s_absmax[q];
    const uint32_t low = (uint32_t)b0;
    uint32_t max_v = 0, max_s = 0;
    for (int32_t i = 0; i < n; ++i) {
      float theta = load<P, float>(param, i) * r.decay;
      float g = r.template gradient<L2>(load<P, float>(grad, i), theta);
      float v = r.first(decode_v(code_v[i]) * absmax_v, g);  // map[code]·absmax, one product
      float s = r.template second<YOGI>(decode_s(code_s[i]) * absmax_s, g);
      store_rounded<P, float, SR_PARAM>(param, i, r.parameter_by_product(theta, v, s), key_param, low + (uint32_t)i);
      new_v[i] = v;
      new_s[i] = s;
      uint32_t bv = float_bits(v) & 0x7fffffffu, bs = float_bits(s) & 0x7fffffffu;
      max_v = bv > max_v ? bv : max_v;
      max_s = bs > max_s ? bs : max_s;
    }
    encode_block<true>(new_v, code_v, n, max_v, x.v_absmax + q);
    encode_block<false>(new_s, code_s, n, max_s, x.s_absmax + q);
  }
}

template <typename P, bool SR_PARAM, bool YOGI>
ADAMLAB_CLONES void block8_range(const Tensors& x, int64_t begin, int64_t end, int64_t block, const Keys& key,
                                 const Coef& k, const Options& o) {
  const Rule<float> r(k, o);
  if (r.l2 != 0.0f)
    block8_loop<P, SR_PARAM, YOGI, true>(x, begin, end, block, key, r);
  else
    block8_loop<P, SR_PARAM, YOGI, false>(x, begin, end, block, key, r);
}

typedef void (*LowFn)(const Tensors&, int64_t, int64_t, int64_t, const Keys&, const Coef&, const Options&);

template <typename P, typename S, typename M, bool SR_STATE, bool SR_PARAM>
LowFn lp_rule(int yogi, int amsgrad) {
  if (yogi)
    return amsgrad ? (LowFn)&lp_range<P, S, M, SR_STATE, SR_PARAM, true, true>
                   : (LowFn)&lp_range<P, S, M, SR_STATE, SR_PARAM, true, false>;
  return amsgrad ? (LowFn)&lp_range<P, S, M, SR_STATE, SR_PARAM, false, true>
                 : (LowFn)&lp_range<P, S, M, SR_STATE, SR_PARAM, false, false>;
}

template <typename P, bool SR_PARAM>
LowFn pick_precision(int precision, int state_dtype, int yogi, int amsgrad) {
  if (precision == BLOCK8) {
    if (state_dtype != U8 || amsgrad) return nullptr;  // 8-bit keeps no max s (refused upstream)
    return yogi ? (LowFn)&block8_range<P, SR_PARAM, true> : (LowFn)&block8_range<P, SR_PARAM, false>;
  }
  if (precision == BF16_SR) return state_dtype == BF16 ? lp_rule<P, bf16, float, true, SR_PARAM>(yogi, amsgrad) : nullptr;
  if constexpr (SR_PARAM) {
    switch (state_dtype) {  // moments in their own dtype: math as the plain loop's
      case F32: return lp_rule<P, float, float, false, true>(yogi, amsgrad);
      case F64: return lp_rule<P, double, double, false, true>(yogi, amsgrad);
      case BF16: return lp_rule<P, bf16, float, false, true>(yogi, amsgrad);
      case F16: return lp_rule<P, f16, float, false, true>(yogi, amsgrad);
    }
  }
  return nullptr;  // nothing is low-precision: the plain loop (chosen by the caller)
}

// The loop for a low-precision call, or nullptr for a combination this kernel does not take
// (float64 parameters with bfloat16 or 8-bit moments, 8-bit with AMSGrad).
LowFn pick_low(int param_dtype, int state_dtype, int yogi, int amsgrad, const adamlab_low_precision& lp) {
  switch (param_dtype) {
    case F32: return pick_precision<float, false>(lp.precision, state_dtype, yogi, amsgrad);
    case F16: return pick_precision<f16, false>(lp.precision, state_dtype, yogi, amsgrad);
    case BF16:
      return lp.stochastic_params ? pick_precision<bf16, true>(lp.precision, state_dtype, yogi, amsgrad)
                                  : pick_precision<bf16, false>(lp.precision, state_dtype, yogi, amsgrad);
  }
  return nullptr;
}

}  // namespace

extern "C" {

int adamlab_fused_abi_version(void) { return 4; }

// Adds 1 to every step count (float32, as torch's) and writes the new counts to t (n
// doubles). Returns 1 if they are all equal, else 0.
int adamlab_advance_steps(int64_t n, float* const* steps, double* t) {
  int same = 1;
  for (int64_t j = 0; j < n; ++j) {
    *steps[j] += 1.0f;
    t[j] = (double)*steps[j];
    same &= t[j] == t[0];
  }
  return same;
}

// One step over n tensors. `table` holds n int64 per row, row after row: numel, then the
// addresses of θ, g, v (exp_avg), s (exp_avg_sq) and, with amsgrad, max s (one array built
// by the caller, one argument). Tensor j uses coefs[coef_index[j]] (coefs[0] when
// coef_index is NULL).
//
// `lp` (NULL: every tensor in its own dtype) asks for low-precision state; the table then has
// more rows: each tensor's rounding seed and new step count t (the kernel derives the
// rounding keys from them), and for 8-bit the addresses of v's and s's float32 absmax (one
// per block). Returns 0 on success, a negative code for a bad argument.
int adamlab_fused_step(int64_t n, const int64_t* table, const adamlab_coefficients* coefs,
                       const int64_t* coef_index, const adamlab_options* o, const adamlab_low_precision* lp) {
  const int64_t* numel = table;
  void* const* params = (void* const*)(table + n);
  void* const* grads = (void* const*)(table + 2 * n);
  void* const* exp_avgs = (void* const*)(table + 3 * n);
  void* const* exp_avg_sqs = (void* const*)(table + 4 * n);
  void* const* max_exp_avg_sqs = o->amsgrad ? (void* const*)(table + 5 * n) : nullptr;
  const int64_t* extra = table + (o->amsgrad ? 6 : 5) * n;  // low precision: seeds, steps, absmax
  if (lp != nullptr && lp->precision == OWN && !(lp->stochastic_params && o->param_dtype == BF16))
    lp = nullptr;  // nothing to round stochastically: the plain loop, which takes the same table
  RangeFn fn = nullptr;
  LowFn low = nullptr;
  int64_t block = 0;
  if (lp == nullptr) {
    fn = pick(o->param_dtype, o->state_dtype, o->yogi, o->amsgrad);
    if (fn == nullptr) return -1;
  } else {
    low = pick_low(o->param_dtype, o->state_dtype, o->yogi, o->amsgrad, *lp);
    if (low == nullptr) return -1;
    block = lp->precision == BLOCK8 ? lp->block_size : 0;
    if (lp->precision == BLOCK8 && (block <= 0 || block > kMaxBlock || (block & (block - 1)) != 0)) return -2;
  }
  int64_t* first_chunk = (int64_t*)malloc(sizeof(int64_t) * (n + 1));
  if (first_chunk == nullptr) return -3;
  int64_t total = 0;
  first_chunk[0] = 0;
  for (int64_t j = 0; j < n; ++j) {
    total += numel[j];
    first_chunk[j + 1] = first_chunk[j] + (numel[j] + kChunk - 1) / kChunk;
  }
  const int64_t chunks = first_chunk[n];
  const int amsgrad = o->amsgrad;

  auto run_chunk = [&](int64_t q, int64_t& j) {
    while (first_chunk[j + 1] <= q) ++j;  // q's tensor (chunks are numbered tensor by tensor)
    int64_t begin = (q - first_chunk[j]) * kChunk;
    int64_t end = begin + kChunk < numel[j] ? begin + kChunk : numel[j];
    const Coef& k = coefs[coef_index ? coef_index[j] : 0];
    void* s_max = amsgrad ? max_exp_avg_sqs[j] : nullptr;
    if (low == nullptr) {
      fn(params[j], grads[j], exp_avgs[j], exp_avg_sqs[j], s_max, begin, end, k, *o);
      return;
    }
    const uint32_t seed = (uint32_t)extra[j], t = (uint32_t)extra[n + j];
    const uint32_t hi = mix32((uint32_t)((uint64_t)begin >> 32));
    const Keys keys = {rounding_key(seed, t, 0) ^ hi, rounding_key(seed, t, 1) ^ hi, rounding_key(seed, t, 2) ^ hi,
                       rounding_key(seed, t, 3) ^ hi};
    const Tensors x = {params[j], grads[j], exp_avgs[j], exp_avg_sqs[j], s_max,
                       block ? (float*)extra[2 * n + j] : nullptr, block ? (float*)extra[3 * n + j] : nullptr};
    low(x, begin, end, block, keys, k, *o);
  };

#ifdef _OPENMP
  if (total >= kSerialBelow && omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      // static contiguous split of the chunk range: each thread walks its tensors in order
      int nt = omp_get_num_threads(), id = omp_get_thread_num();
      int64_t lo = chunks * id / nt, hi = chunks * (id + 1) / nt;
      int64_t j = 0;
      for (int64_t q = lo; q < hi; ++q) run_chunk(q, j);
    }
  } else
#endif
  {
    int64_t j = 0;
    for (int64_t q = 0; q < chunks; ++q) run_chunk(q, j);
  }
  free(first_chunk);
  return 0;
}

}  // extern "C"
