// adamlab fused CPU step: Adam and Yogi over many tensors in one call.
//
// One call walks a table of tensors (data pointers and sizes), computes each tensor's
// per-step scalars from its own step count, then streams every element once:
// read θ, g, v, s (and max s), update in registers in fp32 (fp64 for fp64 tensors),
// write θ, v, s. Work is split into fixed-size chunks *across* tensors, so many small
// tensors cost one parallel region, not one dispatch each.
//
// The math is adamlab.reference.step, term for term (see the comments below); the
// per-step scalars mirror adamlab.optim._coefficients exactly (same double-precision
// expressions, same libm), so results match the other implementations to rounding.
//
// Plain C ABI, no torch headers: it compiles in about 2.4 s on 2 cores (measured) with
// the system compiler and is loaded with ctypes (see adamlab/optim/fused_cpu.py and
// adamlab/_native.py). OpenMP resolves to the libgomp that torch has already loaded, so
// it shares torch's thread pool and count.

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

// ---- one tensor's scalars --------------------------------------------------------------
struct Coef {
  double w1;          // v ← v + w1 (g - v):  1-β1, or (1-β1)/(1-β1^t) when recursive
  double a2, w2;      // Adam: s ← a2 s + w2 g²;  Yogi: s ← keep s + w2 sgn(g² - c s) g²
  double c, keep;     // Yogi: c = keep = 1 (plain);  c = c_{t-1}, keep = c_{t-1}/c_t (recursive)
  double step_size;   // η/(1-β1^t) with bias correction, else η
  double bc2_sqrt;    // √(1-β2^t) with bias correction, else 1
};

struct Hyper {
  double lr, beta1, beta2, eps, weight_decay;
  int decoupled, amsgrad, maximize, bias_correction;  // bias_correction: 0 off, 1 on, 2 recursive
  double inv_grad_scale;
};

// Mirrors adamlab.optim._coefficients.coefficients (Python floats are C doubles).
Coef coefficients(double t, const Hyper& h) {
  Coef k;
  k.c = 1.0;
  k.keep = 1.0;
  k.w1 = 1.0 - h.beta1;
  k.a2 = h.beta2;
  k.w2 = 1.0 - h.beta2;
  k.step_size = h.lr;
  k.bc2_sqrt = 1.0;
  if (h.bias_correction == 2) {
    double c2 = 1.0 - pow(h.beta2, t), c2_prev = 1.0 - pow(h.beta2, t - 1.0);
    k.w1 = (1.0 - h.beta1) / (1.0 - pow(h.beta1, t));
    k.w2 = (1.0 - h.beta2) / c2;
    k.a2 = 1.0 - k.w2;  // Adam's ŝ ← ŝ + ρ(g² - ŝ) = (1-ρ) ŝ + ρ g²
    k.keep = c2_prev / c2;
    k.c = c2_prev;
  } else if (h.bias_correction == 1) {
    double bias_correction1 = 1.0 - pow(h.beta1, t);
    double bias_correction2 = 1.0 - pow(h.beta2, t);
    k.step_size = h.lr / bias_correction1;
    k.bc2_sqrt = pow(bias_correction2, 0.5);
  }
  return k;
}

// ---- the element loop ------------------------------------------------------------------
// P: parameter (and gradient) storage, S: state storage, M: math type.
template <typename P, typename S, typename M, bool YOGI, bool AMSGRAD>
void update_range(P* __restrict__ param, const P* __restrict__ grad, S* __restrict__ exp_avg,
                  S* __restrict__ exp_avg_sq, S* __restrict__ max_exp_avg_sq, int64_t begin, int64_t end,
                  const Coef& k, const Hyper& h) {
  const M grad_mul = (M)(h.maximize ? -h.inv_grad_scale : h.inv_grad_scale);  // unscale, then g ← -g
  const M decay = (M)(h.decoupled ? 1.0 - h.lr * h.weight_decay : 1.0);       // θ ← θ - ηλθ (AdamW)
  const M l2 = (M)(h.decoupled ? 0.0 : h.weight_decay);                        // g ← g + λθ (L2)
  const M w1 = (M)k.w1, a2 = (M)k.a2, w2 = (M)k.w2, c = (M)k.c, keep = (M)k.keep;
  const M step_size = (M)k.step_size, bc2_sqrt = (M)k.bc2_sqrt, eps = (M)h.eps;
  for (int64_t i = begin; i < end; ++i) {
    M theta = load<P, M>(param, i) * decay;
    M g = load<P, M>(grad, i) * grad_mul;
    if (l2 != (M)0) g += l2 * theta;  // as the reference: no term at all when λ = 0 (0·NaN is NaN)
    M v = load<S, M>(exp_avg, i);
    v = v + w1 * (g - v);  // v ← β1 v + (1-β1) g, written as torch's lerp
    M s = load<S, M>(exp_avg_sq, i);
    M g2 = g * g;
    if (YOGI) {  // s ← s - (1-β2) sgn(s - g²) g²   (the one line where Yogi differs)
      M x = g2 - c * s;
      M sign = (M)(x > (M)0) - (M)(x < (M)0);
      s = keep * s + w2 * (sign * g2);  // recursive: (c_{t-1}/c_t) ŝ + ρ_t sgn(g² - c_{t-1} ŝ) g²
    } else {  // s ← β2 s + (1-β2) g²
      s = a2 * s + w2 * g2;
    }
    M s_used = s;
    if (AMSGRAD) {  // running max of the raw s (PyTorch's form)
      M m = load<S, M>(max_exp_avg_sq, i);
      // torch.maximum keeps a NaN from either side: one already in m stays (m != m), and
      // a NaN in s fails m > s, so m takes it.
      m = (m > s || m != m) ? m : s;
      store<S, M>(max_exp_avg_sq, i, m);
      s_used = (s != s) ? s : m;  // = m; kept explicit for a NaN s
    }
    M denom = sqrt(s_used) / bc2_sqrt + eps;  // ε after the square root
    theta = theta - step_size * (v / denom);
    store<S, M>(exp_avg, i, v);
    store<S, M>(exp_avg_sq, i, s);
    store<P, M>(param, i, theta);
  }
}

typedef void (*RangeFn)(void*, const void*, void*, void*, void*, int64_t, int64_t, const Coef&, const Hyper&);

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
const int64_t kSerialBelow = 1 << 15;  // below this many elements a parallel region costs more than it saves

}  // namespace

extern "C" {

int adamlab_fused_abi_version(void) { return 1; }

// Returns 0 on success, a negative code for a bad argument.
int adamlab_fused_step(int64_t n, const int64_t* numel, void* const* params, void* const* grads,
                       void* const* exp_avgs, void* const* exp_avg_sqs, void* const* max_exp_avg_sqs,
                       float* const* steps, int param_dtype, int state_dtype, int yogi, double lr, double beta1,
                       double beta2, double eps, double weight_decay, int decoupled, int amsgrad, int maximize,
                       int bias_correction, double inv_grad_scale) {
  RangeFn fn = pick(param_dtype, state_dtype, yogi, amsgrad);
  if (fn == nullptr) return -1;
  if (amsgrad && max_exp_avg_sqs == nullptr) return -2;
  Hyper h = {lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize, bias_correction, inv_grad_scale};

  // Per tensor: advance its own step count, then its scalars (serial: n is small).
  Coef* coef = (Coef*)malloc(sizeof(Coef) * (n > 0 ? n : 1));
  int64_t* first_chunk = (int64_t*)malloc(sizeof(int64_t) * (n + 1));
  if (coef == nullptr || first_chunk == nullptr) {
    free(coef);
    free(first_chunk);
    return -3;
  }
  int64_t total = 0;
  first_chunk[0] = 0;
  for (int64_t j = 0; j < n; ++j) {
    *steps[j] += 1.0f;  // the state's step is float32, as torch's
    coef[j] = coefficients((double)*steps[j], h);
    total += numel[j];
    first_chunk[j + 1] = first_chunk[j] + (numel[j] + kChunk - 1) / kChunk;
  }
  const int64_t chunks = first_chunk[n];

  auto run_chunk = [&](int64_t q, int64_t& j) {
    while (first_chunk[j + 1] <= q) ++j;  // q's tensor (chunks are numbered tensor by tensor)
    int64_t begin = (q - first_chunk[j]) * kChunk;
    int64_t end = begin + kChunk < numel[j] ? begin + kChunk : numel[j];
    fn(params[j], grads[j], exp_avgs[j], exp_avg_sqs[j], amsgrad ? max_exp_avg_sqs[j] : nullptr, begin, end,
       coef[j], h);
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
  free(coef);
  free(first_chunk);
  return 0;
}

}  // extern "C"
