// adamlab fused CPU step: Adam and Yogi over many tensors in one call.
//
// One call walks a table of tensors (data pointers and sizes) and streams every element
// once: read θ, g, v, s (and max s), update in registers in fp32 (fp64 for fp64 tensors),
// write θ, v, s. Work is split into fixed-size chunks *across* tensors, so many small
// tensors cost one parallel region, not one dispatch each.
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
// Portable builds: the element loop is compiled for AVX-512, AVX2 and baseline x86-64
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
#define ADAMLAB_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ADAMLAB_CLONES
#endif

namespace {

typedef adamlab_coefficients Coef;
typedef adamlab_options Options;

// ---- the element loop ------------------------------------------------------------------
// P: parameter (and gradient) storage, S: state storage, M: math type.
template <typename P, typename S, typename M, bool YOGI, bool AMSGRAD>
ADAMLAB_CLONES void update_range(P* __restrict__ param, const P* __restrict__ grad, S* __restrict__ exp_avg,
                                 S* __restrict__ exp_avg_sq, S* __restrict__ max_exp_avg_sq, int64_t begin,
                                 int64_t end, const Coef& k, const Options& o) {
  const M grad_mul = (M)(o.maximize ? -o.inv_grad_scale : o.inv_grad_scale);  // unscale, then g ← -g
  const M decay = (M)(o.decoupled ? 1.0 - o.lr * o.weight_decay : 1.0);       // θ ← θ - ηλθ (AdamW)
  const M l2 = (M)(o.decoupled ? 0.0 : o.weight_decay);                        // g ← g + λθ (L2)
  const M w1 = (M)k.w1, w2 = (M)k.w2, keep2 = (M)k.keep2, c2_prev = (M)k.c2_prev;
  const M adam_decay = (M)(o.beta2 * k.keep2);
  const M step_size = (M)k.step_size, bc2_sqrt = (M)k.bc2_sqrt, eps = (M)o.eps;
  for (int64_t i = begin; i < end; ++i) {
    M theta = load<P, M>(param, i) * decay;
    M g = load<P, M>(grad, i) * grad_mul;
    if (l2 != (M)0) g += l2 * theta;  // as the reference: no term at all when λ = 0 (0·NaN is NaN)
    M v = load<S, M>(exp_avg, i);
    v = v + w1 * (g - v);  // v ← β1 v + (1-β1) g, written as torch's lerp
    M s = load<S, M>(exp_avg_sq, i);
    M g2 = g * g;
    if (YOGI) {  // s ← keep2 s + w2 sgn(g² - c2_prev s) g²   (the one line where Yogi differs)
      M x = g2 - c2_prev * s;
      M sign = (M)(x > (M)0) - (M)(x < (M)0);
      s = keep2 * s + w2 * (sign * g2);
    } else {  // s ← (β2 keep2) s + w2 g²
      s = adam_decay * s + w2 * g2;
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

}  // namespace

extern "C" {

int adamlab_fused_abi_version(void) { return 3; }

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
// coef_index is NULL). Returns 0 on success, a negative code for a bad argument.
int adamlab_fused_step(int64_t n, const int64_t* table, const adamlab_coefficients* coefs,
                       const int64_t* coef_index, const adamlab_options* o) {
  const int64_t* numel = table;
  void* const* params = (void* const*)(table + n);
  void* const* grads = (void* const*)(table + 2 * n);
  void* const* exp_avgs = (void* const*)(table + 3 * n);
  void* const* exp_avg_sqs = (void* const*)(table + 4 * n);
  void* const* max_exp_avg_sqs = o->amsgrad ? (void* const*)(table + 5 * n) : nullptr;
  RangeFn fn = pick(o->param_dtype, o->state_dtype, o->yogi, o->amsgrad);
  if (fn == nullptr) return -1;
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
    fn(params[j], grads[j], exp_avgs[j], exp_avg_sqs[j], amsgrad ? max_exp_avg_sqs[j] : nullptr, begin, end,
       coefs[coef_index ? coef_index[j] : 0], *o);
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
