// mindport's fused CPU kernels, called from mindport/kernels.py on MindSpore tensors' host memory (ctypes; the
// signature is MindSpore's aot custom-op interface, but PyNative's custom-op launch cost ~90 us a call).
//
// Why they exist: on the CPU backend MindSpore's group_norm, LayerNorm, broadcasting elementwise ops, transposes and
// the exact GELU run 4-60x slower than PyTorch's (measured figures in backend.py); each kernel here replaces a chain
// of those ops with one pass over memory. Arithmetic in float32; the activations' kernels (SiLU, add, blend, group
// norm, convolution) also read and write float16 tensors in place, in runs widened and rounded as they go (Any), and
// transposes and nearest upsampling copy float16 as it is; the others take float32, float16 tensors widened and
// rounded back by the two cast kernels.
// Threads: a small pool of our own whose idle workers sleep (OpenMP's spin-waiting workers took the cores from
// MindSpore's next op: the mid-size SVD UNet ran 40% slower with OpenMP than without the kernels).
//
// Interface (MindSpore aot, CPU): int Fn(int nparam, void **params, int *ndims, int64_t **shapes,
// const char **dtypes, void *stream, void *extra): params holds the inputs then the output (contiguous float32, or
// float16 where `dtypes` names it "float16": kernels.py passes dtypes only to the kernels that take half precision,
// null otherwise); stream and extra are unused. Scalar settings (eps, groups, scale, a permutation) arrive as a small
// float32 "attrs" tensor, the last input. Status: 0 success, 1 no BLAS, 2 shapes or settings the kernel cannot take.
// kernels.py checks shapes before calling; each kernel checks again, cheaply, whatever would otherwise make it read
// or write out of bounds, so a caller's bug is an exception, never a crash.
// mp_build_key and mp_self_test serve kernels.py's load test of a cached library.
//
// Matrix products go to scipy-openblas32's OpenBLAS (its sgemm runs these shapes 1.6-2x faster than MindSpore's
// CPU MatMul: 18 against 37 ms for (128, 1152) x (1152, 8192)); the build names the library, symbol and integer
// width (MP_BLAS_LIB, MP_SGEMM, MP_SET_THREADS, MP_BLASINT). That copy of OpenBLAS is ours alone (NumPy loads its
// own), so setting it to one thread leaves NumPy's alone; each of our pool's threads runs its own block, so no
// second thread pool spins beside MindSpore's.

#include <dlfcn.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <mutex>
#include <thread>
#include <vector>

namespace {

// parallel_for(n, fn): fn(begin, end) over [0, n) in contiguous chunks (up to 4 per thread) that the caller and the
// woken workers claim one at a time. Waking a sleeping worker takes ~50 us on these machines, longer than a whole
// small kernel: the caller starts on the chunks at once and, when the work is small, has done them all before a
// worker arrives (it then finds nothing left), so small kernels run serially without a size threshold and large
// ones are shared. Threads: MINDPORT_NUM_THREADS, else the machine's hardware threads.
class Pool {
 public:
  Pool() {
    const char *env = std::getenv("MINDPORT_NUM_THREADS");
    int n = env ? std::atoi(env) : static_cast<int>(std::thread::hardware_concurrency());
    size_ = std::max(1, n);
    for (int i = 1; i < size_; ++i) workers_.emplace_back([this] { work(); });
  }
  int size() const { return size_; }
  void run(int64_t n, const std::function<void(int64_t, int64_t)> &fn) {
    const int64_t chunks = std::min<int64_t>(int64_t(size_) * 4, n);
    if (size_ == 1 || chunks <= 1) {
      if (n > 0) fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> call(call_mu_);  // one parallel region at a time
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      n_ = n;
      chunks_ = chunks;
      next_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    std::unique_lock<std::mutex> lock(mu_);
    claim_and_run(lock);
    done_.wait(lock, [this] { return active_ == 0; });
  }

 private:
  // Runs chunks of the current region until none is left (called and returning with `lock` held).
  void claim_and_run(std::unique_lock<std::mutex> &lock) {
    while (next_ < chunks_) {
      const int64_t c = next_++;
      const auto *fn = fn_;
      const int64_t begin = n_ * c / chunks_, end = n_ * (c + 1) / chunks_;
      ++active_;
      lock.unlock();
      (*fn)(begin, end);
      lock.lock();
      if (--active_ == 0 && next_ >= chunks_) done_.notify_one();
    }
  }
  void work() {
    int64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      claim_and_run(lock);
    }
  }
  int size_ = 1, active_ = 0;
  int64_t n_ = 0, chunks_ = 0, next_ = 0, generation_ = 0;
  const std::function<void(int64_t, int64_t)> *fn_ = nullptr;
  std::mutex mu_, call_mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
};

// Never destroyed (nor are the scratch buffers below freed): at exit the library may already be unloaded, so no
// destructor of ours may run then.
Pool &pool() {
  static Pool *instance = new Pool;
  return *instance;
}

// A per-thread scratch buffer (slot 0, 1 or 2) of at least n floats, grown as needed.
float *scratch(int slot, int64_t n) {
  thread_local float *buf[3] = {nullptr, nullptr, nullptr};
  thread_local int64_t cap[3] = {0, 0, 0};
  if (cap[slot] < n) {
    std::free(buf[slot]);
    buf[slot] = static_cast<float *>(std::malloc(n * sizeof(float)));
    cap[slot] = n;
  }
  return buf[slot];
}

int threads() { return pool().size(); }

template <class F>
void parallel_for(int64_t n, F body) {
  pool().run(n, [&body](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i);
  });
}

int64_t numel(int nd, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < nd; ++i) n *= shape[i];
  return n;
}

enum Status { kOk = 0, kNoBlas = 1, kBadShape = 2 };
#define MP_REQUIRE(cond)           \
  do {                             \
    if (!(cond)) return kBadShape; \
  } while (0)

// Whether shape a (rank na) equals shape b (rank nb), or the listed dims.
bool same(int na, const int64_t *a, int nb, const int64_t *b) { return na == nb && std::equal(a, a + na, b); }
bool same(int nd, const int64_t *s, std::initializer_list<int64_t> dims) {
  return nd == static_cast<int>(dims.size()) && std::equal(dims.begin(), dims.end(), s);
}
bool same(int nd, const int64_t *s, const std::vector<int64_t> &dims) {
  return same(nd, s, static_cast<int>(dims.size()), dims.data());
}
// A one-input elementwise call: params x, attrs, y with y shaped like x.
bool elementwise(int nparam, int *ndims, int64_t **shapes) {
  return nparam == 3 && same(ndims[0], shapes[0], ndims[2], shapes[2]);
}
// Input i (the attrs tensor) holds at least n values.
bool holds(int *ndims, int64_t **shapes, int i, int64_t n) { return numel(ndims[i], shapes[i]) >= n; }

#ifdef MP_BLAS_LIB
typedef MP_BLASINT blasint;
typedef void (*sgemm_t)(int, int, int, blasint, blasint, blasint, float, const float *, blasint, const float *, blasint,
                        float, float *, blasint);
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };

sgemm_t sgemm() {
  static sgemm_t fn = [] {
    void *lib = dlopen(MP_BLAS_LIB, RTLD_NOW | RTLD_LOCAL);
    if (!lib) return static_cast<sgemm_t>(nullptr);
    auto set_threads = reinterpret_cast<void (*)(blasint)>(dlsym(lib, MP_SET_THREADS));
    if (set_threads) set_threads(1);
    return reinterpret_cast<sgemm_t>(dlsym(lib, MP_SGEMM));
  }();
  return fn;
}
#endif

// Eight floats as one GCC vector: the exp/erf arithmetic below is written on vectors, so it compiles to SIMD code
// whatever the auto-vectoriser makes of it (AVX2 registers; wider targets split or fuse them).
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
constexpr int64_t W = 8;

inline vf load(const float *p) {
  vf v;
  std::memcpy(&v, p, sizeof(vf));
  return v;
}
inline void store(float *p, vf v) { std::memcpy(p, &v, sizeof(vf)); }
inline vf splat(float a) { return vf{a, a, a, a, a, a, a, a}; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }

// exp(x): x = n ln2 + r with |r| <= ln2 / 2, Taylor polynomial to r^7 (relative truncation error 6e-9, below
// float32's 6e-8 ulp), 2^n put into the exponent bits; 0 below -87.3 (where float32 exp is denormal or 0).
inline vf vexp(vf x) {
  const vf lo = splat(-87.3f);
  vf xc = vmin(vmax(x, lo), splat(88.7f));
  const vf shifter = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  vf n = (xc * 1.44269504088896341f + shifter) - shifter;
  vf r = xc - n * 0.693145751953125f;  // ln2 split in two so that n * hi is exact
  r = r - n * 1.42860682030941723212e-6f;
  vf p = splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf e = p * (vf)bits;
  return x < lo ? splat(0.0f) : e;
}

// Exact (erf-based) GELU: 0.5 x erfc(-x / sqrt 2), erfc from the Chebyshev-fitted formula
// erfc(z) = t exp(-z^2 - 1.26551223 + t (1.00002368 + ...)), t = 1 / (1 + |z| / 2) (fractional error < 1.2e-7
// everywhere), mirrored for z < 0 by erfc(z) = 2 - erfc(-z).
inline vf vgelu(vf x) {
  vf z = x * -0.70710678118654752f;
  vf az = z < 0.0f ? -z : z;
  vf t = 1.0f / (1.0f + 0.5f * az);
  vf poly = -1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f + t * (-0.18628806f +
            t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f))))))));
  vf e = t * vexp(poly - az * az);
  vf erfc_z = z >= 0.0f ? e : 2.0f - e;
  return 0.5f * x * erfc_z;
}

// y[i] = f(x[i]) for i < n, eight at a time; the tail goes through a zero-padded vector.
template <class F>
inline void map(const float *x, float *y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + W <= n; i += W) store(y + i, f(load(x + i)));
  if (i < n) {
    float buf[W] = {0};
    std::memcpy(buf, x + i, (n - i) * sizeof(float));
    store(buf, f(load(buf)));
    std::memcpy(y + i, buf, (n - i) * sizeof(float));
  }
}

// body(start, end) over [0, n) in blocks of `block` values, the blocks spread over the threads.
template <class F>
void parallel_blocks(int64_t n, int64_t block, F body) {
  parallel_for((n + block - 1) / block, [&](int64_t blk) { body(blk * block, std::min(n, blk * block + block)); });
}

// map() over n values in blocks of 4096.
template <class F>
void parallel_map(const float *x, float *y, int64_t n, F f) {
  parallel_blocks(n, 4096, [&](int64_t start, int64_t end) { map(x + start, y + start, end - start, f); });
}

// ys = exp(scale * (ss - max ss)) over d values (scale > 0), returning their sum: softmax(scale * ss) = ys / sum
// (attention divides its output rows, dv values each, instead of the d probabilities); ys may be ss. Two passes
// over the row: the maximum, then the exponentials and their sum.
inline float softmax_row_unnormalised(const float *ss, float *ys, int64_t d, float scale) {
  float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
  for (int64_t i = 0; i < d; ++i) mx = ss[i] > mx ? ss[i] : mx;
  vf acc = splat(0.0f);
  int64_t i = 0;
  for (; i + W <= d; i += W) {
    const vf e = vexp((load(ss + i) - mx) * scale);
    store(ys + i, e);
    acc += e;
  }
  float sum = 0.0f;
  for (int k = 0; k < W; ++k) sum += acc[k];
  for (; i < d; ++i) {
    float buf[W] = {ss[i]};
    const vf e = vexp((load(buf) - mx) * scale);
    ys[i] = e[0];
    sum += e[0];
  }
  return sum;
}

// Mean and 1 / sqrt(variance + eps) of n floats, two passes in float64.
inline void moments(const float *x, int64_t n, double eps, double *mean, double *rstd) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const double m = sum / n;
  double sq = 0.0;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < n; ++i) {
    const double d = x[i] - m;
    sq += d * d;
  }
  *mean = m;
  *rstd = 1.0 / std::sqrt(sq / n + eps);
}

// IEEE half <-> float, round to nearest even (F. Giesen's float_to_half_fast3_rtne), for the tails and machines
// without F16C.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0 && mant == 0) {
    bits = sign;
  } else if (exp == 0) {  // subnormal: normalise the mantissa
    int e = -1;
    uint32_t m = mant;
    do {
      ++e;
      m <<= 1;
    } while (!(m & 0x400u));
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((m & 0x3ffu) << 13);
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t float_to_half(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint16_t o;
  if (u >= (143u << 23)) {  // beyond half's range (65536 and up), inf or nan
    o = u > (255u << 23) ? 0x7e00 : 0x7c00;
  } else if (u < (113u << 23)) {  // half subnormal or zero: let float addition round
    const uint32_t magic_u = ((127 - 15) + (23 - 10) + 1) << 23;
    float ff, magic;
    std::memcpy(&ff, &u, sizeof ff);
    std::memcpy(&magic, &magic_u, sizeof magic);
    ff += magic;
    std::memcpy(&u, &ff, sizeof u);
    o = static_cast<uint16_t>(u - magic_u);
  } else {
    const uint32_t mant_odd = (u >> 13) & 1u;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + mant_odd;
    o = static_cast<uint16_t>(u >> 13);
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

// y[i] = scalar(x[i]) for a whole tensor (params: input, attrs, output), eight at a time through vec8 with F16C.
template <class In, class Out, class Vec8, class Scalar>
int convert(int nparam, void **params, int *ndims, int64_t **shapes, Vec8 vec8, Scalar scalar) {
  MP_REQUIRE(elementwise(nparam, ndims, shapes));
  const In *x = static_cast<const In *>(params[0]);
  Out *y = static_cast<Out *>(params[2]);
  parallel_blocks(numel(ndims[0], shapes[0]), 8192, [&](int64_t i, int64_t end) {
#ifdef __F16C__
    for (; i + 8 <= end; i += 8) vec8(x + i, y + i);
#endif
    for (; i < end; ++i) y[i] = scalar(x[i]);
  });
  return 0;
}

// Runs of half-precision values widened to float32 and rounded back (F16C eight at a time where the CPU has it).
inline void to_float(const uint16_t *x, float *y, int64_t n) {
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(x + i))));
#endif
  for (; i < n; ++i) y[i] = half_to_float(x[i]);
}

inline void to_half(const float *x, uint16_t *y, int64_t n) {
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i *>(y + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; i < n; ++i) y[i] = float_to_half(x[i]);
}

// Whether parameter i is a float16 tensor: kernels.py names the dtypes ("float16" / "float32") for the kernels that
// read and write half precision themselves (see Any); a null `dtypes` means float32 throughout.
bool is_half(const char **dtypes, int i) { return dtypes && dtypes[i] && std::strcmp(dtypes[i], "float16") == 0; }

// A float32 or float16 tensor, read and written in runs of float32: half-precision models then never have a whole
// tensor widened and rounded back around each kernel (on SVD at 576x1024 those casts were a quarter of the fp16
// run); the arithmetic stays float32. read(i, n, buf): values [i, i + n) as float32 (in place, or widened into buf);
// dest(i, buf): where to compute values from i on (in place, or buf); commit(i, n, buf): round buf's values back.
struct Any {
  void *p;
  bool half;
  const float *read(int64_t i, int64_t n, float *buf) const {
    if (!half) return static_cast<const float *>(p) + i;
    to_float(static_cast<const uint16_t *>(p) + i, buf, n);
    return buf;
  }
  float *dest(int64_t i, float *buf) const { return half ? buf : static_cast<float *>(p) + i; }
  void commit(int64_t i, int64_t n, const float *buf) const {
    if (half) to_half(buf, static_cast<uint16_t *>(p) + i, n);
  }
  void copy(int64_t i, int64_t n, float *dst) const {  // values [i, i + n) into dst
    if (half) to_float(static_cast<const uint16_t *>(p) + i, dst, n);
    else std::memcpy(dst, static_cast<const float *>(p) + i, n * sizeof(float));
  }
  float at(int64_t i) const {
    return half ? half_to_float(static_cast<const uint16_t *>(p)[i]) : static_cast<const float *>(p)[i];
  }
};

Any any(void **params, const char **dtypes, int i) { return Any{params[i], is_half(dtypes, i)}; }

// body(xs, ys, n) over n values of an elementwise kernel in blocks of 4096, on float32 runs of x and y.
template <class F>
void elementwise_any(const Any &x, const Any &y, int64_t n, F body) {
  parallel_blocks(n, 4096, [&](int64_t start, int64_t end) {
    float bx[4096], by[4096];
    const float *xs = x.read(start, end - start, bx);
    float *ys = y.dest(start, by);
    body(xs, ys, end - start);
    y.commit(start, end - start, ys);
  });
}

// Nearest upsampling of float32 or float16 values (a copy either way).
template <class T>
int upsample_nearest(void **params, int *ndims, int64_t **shapes) {
  const int nd = ndims[0];
  const T *x = static_cast<const T *>(params[0]);
  const float *attrs = static_cast<const float *>(params[1]);
  T *y = static_cast<T *>(params[2]);
  const int64_t h = shapes[0][nd - 2], w = shapes[0][nd - 1];
  const int64_t fh = static_cast<int64_t>(attrs[0]), fw = static_cast<int64_t>(attrs[1]);
  const int64_t ho = h * fh, wo = w * fw;
  std::vector<int64_t> out(shapes[0], shapes[0] + nd);
  out[nd - 2] = ho;
  out[nd - 1] = wo;
  MP_REQUIRE(fh >= 1 && fw >= 1 && same(ndims[2], shapes[2], out));
  if (numel(nd, shapes[0]) == 0) return kOk;
  const int64_t planes = numel(nd, shapes[0]) / (h * w);
  parallel_for(planes * h, [&](int64_t row) {  // one input row -> fh output rows
    const T *xr = x + row * w;
    T *yr = y + (row / h) * ho * wo + (row % h) * fh * wo;
    for (int64_t j = 0; j < w; ++j)
      for (int64_t k = 0; k < fw; ++k) yr[j * fw + k] = xr[j];
    for (int64_t k = 1; k < fh; ++k) std::memcpy(yr + k * wo, yr, wo * sizeof(T));
  });
  return 0;
}

// Transpose of float32 or float16 (E) values, a copy either way: see mp_permute.
template <class E>
int permute(void **params, int *ndims, int64_t **shapes) {
  const int k = ndims[0];
  const E *x = static_cast<const E *>(params[0]);
  const float *attrs = static_cast<const float *>(params[1]);
  E *y = static_cast<E *>(params[2]);
  bool seen[8] = {};
  for (int i = 0; i < k; ++i) {  // a permutation of 0..k-1, and y shaped x[perm]
    const int p = static_cast<int>(attrs[i]);
    MP_REQUIRE(p >= 0 && p < k && !seen[p] && shapes[2][i] == shapes[0][p]);
    seen[p] = true;
  }
  if (numel(k, shapes[0]) == 0) return kOk;
  int64_t in_stride[8] = {}, out_shape[8] = {}, stride_of_out[8] = {};
  in_stride[k - 1] = 1;
  for (int i = k - 2; i >= 0; --i) in_stride[i] = in_stride[i + 1] * shapes[0][i + 1];
  for (int i = 0; i < k; ++i) {
    const int p = static_cast<int>(attrs[i]);
    out_shape[i] = shapes[0][p];
    stride_of_out[i] = in_stride[p];
  }
  const int64_t row = out_shape[k - 1], rs = stride_of_out[k - 1];
  const int64_t rows = numel(k, out_shape) / row;
  // x's offset of output index `index` over output axes 0..last (row-major)
  auto offset = [&](int64_t index, int last) {
    int64_t base = 0;
    for (int i = last; i >= 0; --i) {
      base += (index % out_shape[i]) * stride_of_out[i];
      index /= out_shape[i];
    }
    return base;
  };
  if (k >= 2 && rs != 1 && stride_of_out[k - 2] == 1) {
    // a batched 2D transpose in the last two output axes: tiles, so reads and writes both stay in cache
    const int64_t m = out_shape[k - 2], batches = rows / m, T = 32;
    const int64_t tiles_i = (m + T - 1) / T, tiles_j = (row + T - 1) / T;
    parallel_for(batches * tiles_i * tiles_j, [&](int64_t job) {
      const int64_t bt = job / (tiles_i * tiles_j), ti = (job / tiles_j) % tiles_i, tj = job % tiles_j;
      const int64_t base = offset(bt, k - 3);
      E *yb = y + bt * m * row;
      const int64_t i1 = ti * T + T < m ? ti * T + T : m, j1 = tj * T + T < row ? tj * T + T : row;
      for (int64_t i = ti * T; i < i1; ++i)
        for (int64_t j = tj * T; j < j1; ++j) yb[i * row + j] = x[base + i + j * rs];
    });
    return 0;
  }
  parallel_for(rows, [&](int64_t r) {
    const int64_t base = offset(r, k - 2);
    E *ys = y + r * row;
    if (rs == 1) {
      std::memcpy(ys, x + base, row * sizeof(E));
    } else {
      for (int64_t j = 0; j < row; ++j) ys[j] = x[base + j * rs];
    }
  });
  return 0;
}

}  // namespace

extern "C" {

// GroupNorm over (N, C, *): inputs x, weight (C), bias (C), attrs {groups, eps}; mean and variance in float64.
int mp_group_norm(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  MP_REQUIRE(nparam == 5 && ndims[0] >= 2 && holds(ndims, shapes, 3, 2) &&
             same(ndims[0], shapes[0], ndims[4], shapes[4]));
  MP_REQUIRE(same(ndims[1], shapes[1], {shapes[0][1]}) && same(ndims[2], shapes[2], {shapes[0][1]}));
  const Any x = any(params, dtypes, 0), y = any(params, dtypes, 4);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const float *attrs = static_cast<const float *>(params[3]);
  const int64_t n = shapes[0][0], c = shapes[0][1];
  if (numel(ndims[0], shapes[0]) == 0) return kOk;
  const int64_t spatial = numel(ndims[0], shapes[0]) / (n * c);
  const int64_t groups = static_cast<int64_t>(attrs[0]);
  const double eps = attrs[1];
  MP_REQUIRE(groups >= 1 && c % groups == 0);
  const int64_t cg = c / groups, len = cg * spatial;
  parallel_for(n * groups, [&](int64_t ng) {
    float *buf = x.half || y.half ? scratch(0, len) : nullptr;  // a half-precision group, widened (in place after)
    const float *xs = x.read(ng * len, len, buf);
    float *ys = y.dest(ng * len, buf);
    double mean, rstd;
    moments(xs, len, eps, &mean, &rstd);
    const int64_t c0 = (ng % groups) * cg;
    for (int64_t j = 0; j < cg; ++j) {
      const float a = static_cast<float>(rstd * w[c0 + j]);
      const float s = static_cast<float>(b[c0 + j] - mean * rstd * w[c0 + j]);
      const float *xr = xs + j * spatial;
      float *yr = ys + j * spatial;
#pragma omp simd
      for (int64_t i = 0; i < spatial; ++i) yr[i] = xr[i] * a + s;
    }
    y.commit(ng * len, len, ys);
  });
  return 0;
}

// LayerNorm over the last axis: inputs x, weight (D), bias (D), attrs {eps}; mean and variance in float64.
int mp_layer_norm(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  MP_REQUIRE(nparam == 5 && ndims[0] >= 1 && holds(ndims, shapes, 3, 1) &&
             same(ndims[0], shapes[0], ndims[4], shapes[4]));
  const int64_t d = shapes[0][ndims[0] - 1];
  MP_REQUIRE(same(ndims[1], shapes[1], {d}) && same(ndims[2], shapes[2], {d}));
  if (numel(ndims[0], shapes[0]) == 0) return kOk;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const double eps = static_cast<const float *>(params[3])[0];
  float *y = static_cast<float *>(params[4]);
  const int64_t rows = numel(ndims[0], shapes[0]) / d;
  parallel_for(rows, [&](int64_t r) {
    const float *xs = x + r * d;
    float *ys = y + r * d;
    double mean, rstd;
    moments(xs, d, eps, &mean, &rstd);
    const float m = static_cast<float>(mean), rs = static_cast<float>(rstd);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) ys[i] = (xs[i] - m) * rs * w[i] + b[i];
  });
  return 0;
}

// Channel RMS norm (Wan's VAE: F.normalize over channels * sqrt(C) * gamma + bias) on x (B, C, *): inputs x,
// gamma (C), bias (C), attrs {has_bias}. y = x / max(||x[b, :, n]||, 1e-12) * (sqrt(C) gamma[c]) + bias[c]; the sums
// of squares run over channels for a block of positions at a time (contiguous rows, one pass in cache).
int mp_channel_rms_norm(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  MP_REQUIRE(nparam == 5 && ndims[0] >= 2 && holds(ndims, shapes, 3, 1) &&
             same(ndims[0], shapes[0], ndims[4], shapes[4]));
  const int64_t nb = shapes[0][0], c = shapes[0][1];
  MP_REQUIRE(same(ndims[1], shapes[1], {c}) && same(ndims[2], shapes[2], {c}));
  if (numel(ndims[0], shapes[0]) == 0) return kOk;
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *bias = static_cast<const float *>(params[2]);
  const bool has_bias = static_cast<const float *>(params[3])[0] != 0.0f;
  float *y = static_cast<float *>(params[4]);
  const int64_t n = numel(ndims[0], shapes[0]) / (nb * c);
  const float scale = std::sqrt(static_cast<float>(c));
  constexpr int64_t kBlock = 512;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  parallel_for(nb * blocks, [&](int64_t job) {
    const int64_t b = job / blocks, n0 = (job % blocks) * kBlock, len = std::min(kBlock, n - n0);
    float inv[kBlock];
    std::fill(inv, inv + len, 0.0f);
    for (int64_t ci = 0; ci < c; ++ci) {
      const float *xr = x + (b * c + ci) * n + n0;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) inv[i] += xr[i] * xr[i];
    }
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) inv[i] = 1.0f / std::max(std::sqrt(inv[i]), 1e-12f);
    for (int64_t ci = 0; ci < c; ++ci) {
      const float *xr = x + (b * c + ci) * n + n0;
      float *yr = y + (b * c + ci) * n + n0;
      const float g = scale * gamma[ci], bv = has_bias ? bias[ci] : 0.0f;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) yr[i] = xr[i] * inv[i] * g + bv;
    }
  });
  return 0;
}

// RMS norm over the last axis (torch.nn.RMSNorm, Wan's q / k norms, T5's layer norm): inputs x (..., D), weight
// (D), attrs {eps, has_weight}: y = x * rsqrt(mean(x^2) + eps) (* weight), the mean in float64.
int mp_rms_norm(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  MP_REQUIRE(nparam == 4 && ndims[0] >= 1 && holds(ndims, shapes, 2, 2) &&
             same(ndims[0], shapes[0], ndims[3], shapes[3]));
  const int64_t d = shapes[0][ndims[0] - 1];
  MP_REQUIRE(same(ndims[1], shapes[1], {d}));
  if (numel(ndims[0], shapes[0]) == 0) return kOk;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *attrs = static_cast<const float *>(params[2]);
  const double eps = attrs[0];
  const bool has_weight = attrs[1] != 0.0f;
  float *y = static_cast<float *>(params[3]);
  const int64_t rows = numel(ndims[0], shapes[0]) / d;
  parallel_blocks(rows, std::max<int64_t>(1, 8192 / d), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *xs = x + r * d;
      float *ys = y + r * d;
      double sq = 0.0;
#pragma omp simd reduction(+ : sq)
      for (int64_t i = 0; i < d; ++i) sq += static_cast<double>(xs[i]) * xs[i];
      const float inv = static_cast<float>(1.0 / std::sqrt(sq / d + eps));
      if (has_weight) {
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) ys[i] = xs[i] * inv * w[i];
      } else {
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) ys[i] = xs[i] * inv;
      }
    }
  });
  return 0;
}

// a product as float32 (an empty asm the compiler cannot see through: no fused multiply-add with the next sum)
static inline float rounded(float v) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(v));
#elif defined(__aarch64__)
  asm("" : "+w"(v));
#else
  volatile float r = v;
  v = r;
#endif
  return v;
}

// Rotary positions on interleaved pairs (diffusers' Wan): x, cos, sin of one shape (..., 2n), attrs unused:
// y[2i] = x[2i] cos[2i] - x[2i+1] sin[2i], y[2i+1] = x[2i+1] cos[2i+1] + x[2i] sin[2i+1], each product rounded
// before the sum (no fused multiply-add: the same numbers as diffusers' separate ops, bit for bit).
int mp_rotary_pairs(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  MP_REQUIRE(nparam == 5 && ndims[0] >= 1 && same(ndims[0], shapes[0], ndims[1], shapes[1]) &&
             same(ndims[0], shapes[0], ndims[2], shapes[2]) && same(ndims[0], shapes[0], ndims[4], shapes[4]));
  MP_REQUIRE(shapes[0][ndims[0] - 1] % 2 == 0);
  const float *x = static_cast<const float *>(params[0]);
  const float *cs = static_cast<const float *>(params[1]);
  const float *sn = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[4]);
  const int64_t pairs = numel(ndims[0], shapes[0]) / 2;
  parallel_blocks(pairs, 4096, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float x0 = x[2 * p], x1 = x[2 * p + 1];
      y[2 * p] = rounded(x0 * cs[2 * p]) - rounded(x1 * sn[2 * p]);
      y[2 * p + 1] = rounded(x1 * cs[2 * p + 1]) + rounded(x0 * sn[2 * p + 1]);
    }
  });
  return 0;
}

// torch's GELU(approximate="tanh") 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), as the same function
// x * sigmoid(2u) = x / (1 + exp(-2u)), elementwise. attrs unused.
int mp_gelu_tanh(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  MP_REQUIRE(elementwise(nparam, ndims, shapes));
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[2]);
  parallel_map(x, y, numel(ndims[0], shapes[0]), [](vf v) {
    const vf u = v + (v * v * v) * 0.044715f;
    return v / (1.0f + vexp(u * -1.5957691216057308f));  // -2 sqrt(2 / pi)
  });
  return 0;
}

// GEGLU from the projection's output h (..., 2n): h[..., :n] * gelu(h[..., n:]) -> (..., n). attrs unused.
int mp_geglu(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  MP_REQUIRE(nparam == 3 && ndims[0] >= 1 && ndims[2] == ndims[0]);
  const float *h = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[2]);
  const int64_t two_n = shapes[0][ndims[0] - 1], n = two_n / 2;
  std::vector<int64_t> out(shapes[0], shapes[0] + ndims[0]);
  out.back() = n;
  MP_REQUIRE(two_n % 2 == 0 && same(ndims[2], shapes[2], out));
  if (n == 0 || numel(ndims[0], shapes[0]) == 0) return kOk;
  const int64_t rows = numel(ndims[0], shapes[0]) / two_n;
  parallel_for(rows, [&](int64_t r) {
    const float *hs = h + r * two_n;
    float *ys = y + r * n;
    map(hs + n, ys, n, vgelu);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) ys[i] *= hs[i];
  });
  return 0;
}

// Exact GELU, elementwise. attrs unused.
int mp_gelu(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  MP_REQUIRE(elementwise(nparam, ndims, shapes));
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[2]);
  parallel_map(x, y, numel(ndims[0], shapes[0]), vgelu);
  return 0;
}

// SiLU, elementwise: x / (1 + exp(-x)). attrs unused.
int mp_silu(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  MP_REQUIRE(elementwise(nparam, ndims, shapes));
  elementwise_any(any(params, dtypes, 0), any(params, dtypes, 2), numel(ndims[0], shapes[0]),
                  [](const float *x, float *y, int64_t n) {
                    map(x, y, n, [](vf v) { return v / (1.0f + vexp(-v)); });
                  });
  return 0;
}

// a + b, same shapes (residual connections: MindSpore's add after one of these kernels took 70-150 us). attrs
// unused.
int mp_add(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  MP_REQUIRE(nparam == 4 && same(ndims[0], shapes[0], ndims[1], shapes[1]) &&
             same(ndims[0], shapes[0], ndims[3], shapes[3]));
  const Any a = any(params, dtypes, 0), b = any(params, dtypes, 1), y = any(params, dtypes, 3);
  parallel_blocks(numel(ndims[0], shapes[0]), 4096, [&](int64_t start, int64_t end) {
    float ba[4096], bb[4096], by[4096];
    const int64_t n = end - start;
    const float *as = a.read(start, n, ba), *bs = b.read(start, n, bb);
    float *ys = y.dest(start, by);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) ys[i] = as[i] + bs[i];
    y.commit(start, n, ys);
  });
  return 0;
}

// float16 -> float32 and float32 -> float16 (round to nearest even), elementwise; attrs unused. MindSpore's CPU cast
// took ~400 us for 30k values: every half-precision model ran through it at each norm, and the kernels below take
// float32, so half precision on CPU casts here on the way in and out.
int mp_f16_to_f32(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return convert<uint16_t, float>(
      nparam, params, ndims, shapes,
      [](const uint16_t *x, float *y) {
#ifdef __F16C__
        _mm256_storeu_ps(y, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(x))));
#endif
      },
      half_to_float);
}

int mp_f32_to_f16(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return convert<float, uint16_t>(
      nparam, params, ndims, shapes,
      [](const float *x, uint16_t *y) {
#ifdef __F16C__
        _mm_storeu_si128(reinterpret_cast<__m128i *>(y),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
      },
      float_to_half);
}

// alpha * a + (1 - alpha) * b with alpha broadcast: alpha has a's rank, each axis 1 or a's size. attrs unused.
int mp_blend(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  MP_REQUIRE(nparam == 5 && same(ndims[0], shapes[0], ndims[1], shapes[1]) &&
             same(ndims[0], shapes[0], ndims[4], shapes[4]) && ndims[2] == ndims[0]);
  for (int i = 0; i < ndims[0]; ++i) MP_REQUIRE(shapes[2][i] == 1 || shapes[2][i] == shapes[0][i]);
  if (numel(ndims[0], shapes[0]) == 0) return kOk;
  const Any a = any(params, dtypes, 0), b = any(params, dtypes, 1), y = any(params, dtypes, 4);
  const float *alpha = static_cast<const float *>(params[2]);
  const int nd = ndims[0];
  const int64_t *shape = shapes[0], *ashape = shapes[2];
  int last = -1;  // alpha is constant over the axes after `last`
  for (int i = 0; i < nd; ++i)
    if (ashape[i] != 1) last = i;
  int64_t inner = 1;
  for (int i = last + 1; i < nd; ++i) inner *= shape[i];
  const int64_t outer = numel(nd, shape) / inner;
  parallel_for(outer, [&](int64_t o) {
    int64_t rem = o, aoff = 0, astride = 1;
    for (int i = last; i >= 0; --i) {  // alpha's offset for this outer index
      const int64_t coord = rem % shape[i];
      rem /= shape[i];
      if (ashape[i] != 1) aoff += coord * astride;
      astride *= ashape[i];
    }
    const float al = alpha[aoff], be = 1.0f - al;
    float ba[4096], bb[4096], by[4096];
    for (int64_t i0 = o * inner; i0 < (o + 1) * inner; i0 += 4096) {
      const int64_t n = std::min<int64_t>(4096, (o + 1) * inner - i0);
      const float *as = a.read(i0, n, ba), *bs = b.read(i0, n, bb);
      float *ys = y.dest(i0, by);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) ys[i] = al * as[i] + be * bs[i];
      y.commit(i0, n, ys);
    }
  });
  return 0;
}

// Transpose: inputs x (rank k, axes already merged by the caller), attrs {perm[0], ..., perm[k-1]}; output
// shape = x.shape[perm]. Output rows of the last output axis are gathered from x with that axis' input stride.
int mp_permute(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  const int k = ndims[0];
  MP_REQUIRE(nparam == 3 && k >= 1 && k <= 8 && holds(ndims, shapes, 1, k) && ndims[2] == k);
  MP_REQUIRE(is_half(dtypes, 0) == is_half(dtypes, 2));  // a copy: float16 in, float16 out
  return is_half(dtypes, 0) ? permute<uint16_t>(params, ndims, shapes) : permute<float>(params, ndims, shapes);
}

// Nearest-neighbour upsampling by integer factors: x (N, C, H, W) -> (N, C, H*fh, W*fw); attrs {fh, fw}. Output row
// r repeats input row r / fh, each value fw times (what torch's nearest gives for integer scale factors).
int mp_upsample_nearest(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                        void *) {
  const int nd = ndims[0];
  MP_REQUIRE(nparam == 3 && nd >= 2 && holds(ndims, shapes, 1, 2));
  MP_REQUIRE(is_half(dtypes, 0) == is_half(dtypes, 2));  // a copy: float16 in, float16 out
  return is_half(dtypes, 0) ? upsample_nearest<uint16_t>(params, ndims, shapes)
                            : upsample_nearest<float>(params, ndims, shapes);
}

// Average pooling over (N, C, H, W) windows [floor(i H / Ho), ceil((i + 1) H / Ho)) x (likewise for W): torch's
// adaptive_avg_pool2d. attrs {Ho, Wo}; a fixed kernel k with stride k and no padding is the case H = k Ho.
int mp_adaptive_avg_pool(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const int nd = ndims[0];
  MP_REQUIRE(nparam == 3 && nd >= 2 && holds(ndims, shapes, 1, 2));
  const float *x = static_cast<const float *>(params[0]);
  const float *attrs = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  const int64_t h = shapes[0][nd - 2], w = shapes[0][nd - 1];
  const int64_t ho = static_cast<int64_t>(attrs[0]), wo = static_cast<int64_t>(attrs[1]);
  std::vector<int64_t> out(shapes[0], shapes[0] + nd);
  out[nd - 2] = ho;
  out[nd - 1] = wo;
  MP_REQUIRE(ho >= 1 && wo >= 1 && h >= 1 && w >= 1 && same(ndims[2], shapes[2], out));
  const int64_t planes = numel(nd, shapes[0]) / (h * w);
  parallel_for(planes * ho, [&](int64_t orow) {
    const int64_t p = orow / ho, i = orow % ho;
    const int64_t r0 = i * h / ho, r1 = ((i + 1) * h + ho - 1) / ho;
    const float *xp = x + p * h * w;
    float *yr = y + orow * wo;
    for (int64_t j = 0; j < wo; ++j) {
      const int64_t c0 = j * w / wo, c1 = ((j + 1) * w + wo - 1) / wo;
      float sum = 0.0f;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) sum += xp[r * w + c];
      yr[j] = sum / static_cast<float>((r1 - r0) * (c1 - c0));
    }
  });
  return 0;
}

#ifdef MP_BLAS_LIB
// rows (stride ld) of n values each get bias[row] added (nothing when bias is null).
static void add_bias(float *y, int64_t ld, int64_t rows, int64_t n, const float *bias) {
  for (int64_t r = 0; bias && r < rows; ++r) {
    float *yr = y + r * ld;
    const float bv = bias[r];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) yr[i] += bv;
  }
}

// Linear: x (M, K) @ w (N, K)^T + b (N) -> (M, N); attrs {has_bias}. One sgemm per thread, on a block of rows, or
// of output columns when N > M (then each thread packs only its slice of the weight).
int mp_linear(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  MP_REQUIRE(nparam == 5 && ndims[0] == 2 && ndims[1] == 2 && shapes[0][1] == shapes[1][1] &&
             holds(ndims, shapes, 3, 1));
  MP_REQUIRE(same(ndims[2], shapes[2], {shapes[1][0]}) && same(ndims[4], shapes[4], {shapes[0][0], shapes[1][0]}));
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const bool has_bias = static_cast<const float *>(params[3])[0] != 0.0f;
  float *y = static_cast<float *>(params[4]);
  const int64_t m = shapes[0][0], k = shapes[0][1], n = shapes[1][0];
  if (m * n == 0) return kOk;
  MP_REQUIRE(k >= 1);
  if (!sgemm()) return kNoBlas;
  const bool by_rows = m >= n;
  const int64_t extent = by_rows ? m : n, parts = std::min<int64_t>(threads(), std::max<int64_t>(1, extent / 16));
  parallel_for(parts, [&](int64_t part) {
    const int64_t i0 = extent * part / parts, i1 = extent * (part + 1) / parts;
    const int64_t r0 = by_rows ? i0 : 0, rows = by_rows ? i1 - i0 : m;
    const int64_t c0 = by_rows ? 0 : i0, cols = by_rows ? n : i1 - i0;
    sgemm()(kRowMajor, kNoTrans, kTrans, rows, cols, k, 1.0f, x + r0 * k, k, w + c0 * k, k, 0.0f, y + r0 * n + c0, n);
    if (has_bias)
      for (int64_t r = r0; r < r0 + rows; ++r) {
        float *yr = y + r * n + c0;
        const float *br = b + c0;
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) yr[j] += br[j];
      }
  });
  return 0;
}

// Attention, heads side by side in the last axis (the projections' own layout, no transposes):
// q (G, Lq, H*d), k (G, Lk, H*d), v (G, Lk, H*dv) -> (G, Lq, H*dv) = per head softmax(scale q k^T + mask) v, the
// optional additive mask (MG, MH, MQ, Lk) broadcast (MG in {1, G}, MH in {1, H}, MQ in {1, Lq}). Jobs are (group,
// head, block of queries): the scores of one block live in a thread-local buffer (at most 2^20 floats: 113 query
// rows at SVD's 9,216 tokens), never as a whole (G, H, Lq, Lk) tensor; the probabilities stay unnormalised and each
// output row is divided by its sum (dv values instead of Lk). Smaller blocks ran slower (2^16 floats: 1.5-2x).
constexpr int64_t kMaxRows = 4096;  // query rows per block (and their softmax sums on the stack)
static int attention(void **params, int *ndims, int64_t **shapes, bool masked) {
  const int nq = ndims[0], a = masked ? 4 : 3;  // a: the attrs' index; the output's is a + 1
  MP_REQUIRE(nq >= 2 && ndims[1] == nq && ndims[2] == nq && holds(ndims, shapes, a, 2));
  for (int i = 0; i < nq - 2; ++i) MP_REQUIRE(shapes[1][i] == shapes[0][i] && shapes[2][i] == shapes[0][i]);
  const float *q = static_cast<const float *>(params[0]);
  const float *k = static_cast<const float *>(params[1]);
  const float *v = static_cast<const float *>(params[2]);
  const float *mask = masked ? static_cast<const float *>(params[3]) : nullptr;
  const int64_t *mshape = masked ? shapes[3] : nullptr;
  const float *attrs = static_cast<const float *>(params[a]);
  float *y = static_cast<float *>(params[a + 1]);
  const float scale = attrs[0];
  const int64_t heads = static_cast<int64_t>(attrs[1]);
  const int64_t lq = shapes[0][nq - 2], qrow = shapes[0][nq - 1], lk = shapes[1][nq - 2], vrow = shapes[2][nq - 1];
  std::vector<int64_t> out(shapes[0], shapes[0] + nq);
  out.back() = vrow;
  MP_REQUIRE(shapes[1][nq - 1] == qrow && shapes[2][nq - 2] == lk && same(ndims[a + 1], shapes[a + 1], out));
  MP_REQUIRE(heads >= 1 && qrow % heads == 0 && vrow % heads == 0);
  if (numel(nq, shapes[0]) == 0 || vrow == 0) return kOk;
  MP_REQUIRE(lk >= 1);
  const int64_t d = qrow / heads, dv = vrow / heads;
  const int64_t groups = numel(nq, shapes[0]) / (lq * qrow);
  MP_REQUIRE(!masked || (ndims[3] == 4 && (mshape[0] == 1 || mshape[0] == groups) &&
                         (mshape[1] == 1 || mshape[1] == heads) && (mshape[2] == 1 || mshape[2] == lq) &&
                         mshape[3] == lk));
  if (!sgemm()) return kNoBlas;
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>({lq, (1 << 20) / lk, kMaxRows}));
  const int64_t blocks = (lq + block - 1) / block;
  parallel_for(groups * heads * blocks, [&](int64_t job) {
    const int64_t g = job / (heads * blocks), h = (job / blocks) % heads;
    const int64_t r0 = (job % blocks) * block, rows = std::min(block, lq - r0);
    float *s = scratch(0, rows * lk), sums[kMaxRows];
    sgemm()(kRowMajor, kNoTrans, kTrans, rows, lk, d, 1.0f, q + (g * lq + r0) * qrow + h * d, qrow,
            k + g * lk * qrow + h * d, qrow, 0.0f, s, lk);
    if (mask) {
      const float *mg = mask + ((mshape[0] == 1 ? 0 : g) * mshape[1] + (mshape[1] == 1 ? 0 : h)) * mshape[2] * lk;
      for (int64_t r = 0; r < rows; ++r) {
        const float *mr = mg + (mshape[2] == 1 ? 0 : r0 + r) * lk;
        float *sr = s + r * lk;
#pragma omp simd
        for (int64_t i = 0; i < lk; ++i) sr[i] = sr[i] * scale + mr[i];
        sums[r] = softmax_row_unnormalised(sr, sr, lk, 1.0f);
      }
    } else {
      for (int64_t r = 0; r < rows; ++r) sums[r] = softmax_row_unnormalised(s + r * lk, s + r * lk, lk, scale);
    }
    float *yb = y + (g * lq + r0) * vrow + h * dv;
    sgemm()(kRowMajor, kNoTrans, kNoTrans, rows, dv, lk, 1.0f, s, lk, v + g * lk * vrow + h * dv, vrow, 0.0f, yb,
            vrow);
    for (int64_t r = 0; r < rows; ++r) {  // the softmax's division, on the dv outputs of each row
      float *yr = yb + r * vrow;
      const float inv = 1.0f / sums[r];
#pragma omp simd
      for (int64_t i = 0; i < dv; ++i) yr[i] *= inv;
    }
  });
  return 0;
}

// inputs q, k, v, attrs {scale, heads}
int mp_attention(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  MP_REQUIRE(nparam == 5);
  return attention(params, ndims, shapes, false);
}

// inputs q, k, v, mask (MG, MH, MQ, Lk), attrs {scale, heads}
int mp_attention_masked(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  MP_REQUIRE(nparam == 6);
  return attention(params, ndims, shapes, true);
}

// (kt, 3, 3) kernels, stride 1, one group (2D convolutions are kt = T = 1): Winograd F(2x2, 3x3) (Lavin & Gray
// 2015) in each frame: each 2x2 output tile from a 4x4 input tile as A^T [sum_dt (G g_dt G^T) . (B^T d_dt B)] A,
// i.e. 16 matrix products (O, kt*C) x (kt*C, tiles) per output frame instead of 9 of that size: 2.25x fewer
// multiplications. An input frame is transformed once and read by the kt output frames that see it: V holds the
// transformed frames of a block of tile rows as [16][T][C][tiles], so the kt frames one output frame reads are kt*C
// consecutive rows, one sgemm per k. Jobs are (batch, block of tile rows), transforms in thread-local buffers.
static void conv3x3_winograd(const Any &x, const float *w, const float *bias, bool has_bias, const Any &y, int64_t nb,
                             int64_t c, int64_t t, int64_t h, int64_t wd, int64_t o, int64_t kt, int64_t pt,
                             int64_t ph, int64_t pw) {
  const int64_t ho = h + 2 * ph - 2, wo = wd + 2 * pw - 2, th = (ho + 1) / 2, tw = (wo + 1) / 2;
  const int64_t to = t + 2 * pt - kt + 1, kc = kt * c;
  // U[k] (o, kt*c), columns dt-major: (G g_dt G^T)[k], G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
  std::vector<float> u(16 * o * kc);
  parallel_for(o, [&](int64_t oc) {
    for (int64_t ci = 0; ci < c; ++ci)
      for (int64_t dt = 0; dt < kt; ++dt) {
        const float *g = w + ((oc * c + ci) * kt + dt) * 9;
        float tt[4][3];
        for (int j = 0; j < 3; ++j) {
          tt[0][j] = g[j];
          tt[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
          tt[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
          tt[3][j] = g[6 + j];
        }
        for (int i = 0; i < 4; ++i) {
          const float r[4] = {tt[i][0], 0.5f * (tt[i][0] + tt[i][1] + tt[i][2]),
                              0.5f * (tt[i][0] - tt[i][1] + tt[i][2]), tt[i][2]};
          for (int j = 0; j < 4; ++j) u[((i * 4 + j) * o + oc) * kc + dt * c + ci] = r[j];
        }
      }
  });
  // tile rows per job: V and M within ~2^21 floats, and at least two jobs per thread where the image allows
  int64_t rows_per_job = std::max<int64_t>(1, std::min(th, (int64_t(1) << 21) / (16 * std::max(t * c, o) * tw)));
  const int64_t want_jobs = 2 * threads();
  if (nb * ((th + rows_per_job - 1) / rows_per_job) < want_jobs)
    rows_per_job = std::max<int64_t>(1, std::min(rows_per_job, (th * nb + want_jobs - 1) / want_jobs));
  const int64_t blocks = (th + rows_per_job - 1) / rows_per_job;
  parallel_for(nb * blocks, [&](int64_t job) {
    const int64_t b = job / blocks, tr0 = (job % blocks) * rows_per_job, ntr = std::min(rows_per_job, th - tr0);
    const int64_t nt = ntr * tw;
    float *v = scratch(0, 16 * t * c * nt), *m = scratch(1, 16 * o * nt);
    // V[k] (t*c, nt) = (B^T d B)[k], B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], computed
    // across a tile row at once (contiguous vectors over the tiles): each of the 4 input rows split into its even
    // and odd columns (zero outside the image), d[i][j] of tile tc being e[tc], o[tc], e[tc + 1], o[tc + 1]
    float *rows = scratch(2, 8 * (tw + 1) + 16 * tw + std::max(wd, wo));
    float *hz = rows + 8 * (tw + 1);  // (4 rows x 4 columns of the transform, tw)
    float *line = hz + 16 * tw;       // one input or output row as float32 (half-precision tensors)
    for (int64_t fc = 0; fc < t * c; ++fc) {  // fc = input frame * c + channel
      const int64_t fi = fc / c, ci = fc % c;
      const int64_t xc = ((b * c + ci) * t + fi) * h * wd;
      for (int64_t tr = 0; tr < ntr; ++tr) {
        const int64_t r0 = 2 * (tr0 + tr) - ph;
        for (int i = 0; i < 4; ++i) {  // row r0 + i: even / odd columns, then the horizontal transform B^T d_i
          float *ev = rows + 2 * i * (tw + 1), *od = ev + (tw + 1);
          const int64_t ri = r0 + i;
          if (ri < 0 || ri >= h) {
            std::fill(ev, ev + 2 * (tw + 1), 0.0f);
          } else {
            const float *xr = x.read(xc + ri * wd, wd, line);
            for (int64_t k = 0; k <= tw; ++k) {
              const int64_t c0 = 2 * k - pw;
              ev[k] = (c0 >= 0 && c0 < wd) ? xr[c0] : 0.0f;
              od[k] = (c0 + 1 >= 0 && c0 + 1 < wd) ? xr[c0 + 1] : 0.0f;
            }
          }
          float *h0 = hz + (i * 4) * tw, *h1 = h0 + tw, *h2 = h1 + tw, *h3 = h2 + tw;
#pragma omp simd
          for (int64_t tc = 0; tc < tw; ++tc) {
            h0[tc] = ev[tc] - ev[tc + 1];
            h1[tc] = od[tc] + ev[tc + 1];
            h2[tc] = ev[tc + 1] - od[tc];
            h3[tc] = od[tc] - od[tc + 1];
          }
        }
        for (int j = 0; j < 4; ++j) {  // the vertical transform over the 4 rows, column j of the result
          const float *a0 = hz + j * tw, *a1 = hz + (4 + j) * tw, *a2 = hz + (8 + j) * tw, *a3 = hz + (12 + j) * tw;
          const int64_t step = 4 * t * c * nt;  // from V[i][j] to V[i + 1][j]
          float *v0 = v + (j * t * c + fc) * nt + tr * tw, *v1 = v0 + step, *v2 = v1 + step, *v3 = v2 + step;
#pragma omp simd
          for (int64_t tc = 0; tc < tw; ++tc) {
            v0[tc] = a0[tc] - a2[tc];
            v1[tc] = a1[tc] + a2[tc];
            v2[tc] = a2[tc] - a1[tc];
            v3[tc] = a1[tc] - a3[tc];
          }
        }
      }
    }
    for (int64_t f = 0; f < to; ++f) {
      // input frames f + dt - pt inside [0, t): dt in [dt0, dt1), consecutive rows of V, columns of U
      const int64_t dt0 = std::max<int64_t>(0, pt - f), dt1 = std::min(kt, t + pt - f);
      if (dt0 < dt1)
        for (int k = 0; k < 16; ++k)
          sgemm()(kRowMajor, kNoTrans, kNoTrans, o, nt, (dt1 - dt0) * c, 1.0f, u.data() + k * o * kc + dt0 * c, kc,
                  v + (k * t + f + dt0 - pt) * c * nt, nt, 0.0f, m + k * o * nt, nt);
      else
        std::fill(m, m + 16 * o * nt, 0.0f);
      // Y = A^T M A, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], across a tile row at once: the two output rows' even
      // and odd columns, then interleaved into y
      float *q = rows;  // (2 rows x even / odd, tw)
      for (int64_t oc = 0; oc < o; ++oc) {
        const int64_t yo = ((b * o + oc) * to + f) * ho * wo;
        const float bv = has_bias ? bias[oc] : 0.0f;
        for (int64_t tr = 0; tr < ntr; ++tr) {
          const float *mk[16];
          for (int k = 0; k < 16; ++k) mk[k] = m + (k * o + oc) * nt + tr * tw;
          float *e0 = q, *o0 = q + tw, *e1 = q + 2 * tw, *o1 = q + 3 * tw;
#pragma omp simd
          for (int64_t tc = 0; tc < tw; ++tc) {
            float s0[4], s1[4];
            for (int j = 0; j < 4; ++j) {
              s0[j] = mk[j][tc] + mk[4 + j][tc] + mk[8 + j][tc];
              s1[j] = mk[4 + j][tc] - mk[8 + j][tc] - mk[12 + j][tc];
            }
            e0[tc] = s0[0] + s0[1] + s0[2] + bv;
            o0[tc] = s0[1] - s0[2] - s0[3] + bv;
            e1[tc] = s1[0] + s1[1] + s1[2] + bv;
            o1[tc] = s1[1] - s1[2] - s1[3] + bv;
          }
          const int64_t r = 2 * (tr0 + tr);
          for (int i = 0; i < 2 && r + i < ho; ++i) {
            const float *ei = i ? e1 : e0, *oi = i ? o1 : o0;
            float *yr = y.dest(yo + (r + i) * wo, line);
            for (int64_t tc = 0; tc < wo / 2; ++tc) {
              yr[2 * tc] = ei[tc];
              yr[2 * tc + 1] = oi[tc];
            }
            if (wo % 2) yr[wo - 1] = ei[wo / 2];
            y.commit(yo + (r + i) * wo, wo, yr);
          }
        }
      }
    }
  });
}

// Temporal kernel (kt, 1, 1), time stride st, one group: out[b, :, f] = sum_dt W_dt (O, C) @ x[b, :, f*st + dt - pt]
// (C, H*W), each term one sgemm reading the input frame in place (no im2col). Jobs are (batch, output frame) in
// float32; half-precision tensors split each frame into blocks of 4096 positions, widened and rounded per block.
static void conv_temporal(const Any &x, const float *w, const float *bias, bool has_bias, const Any &y, int64_t nb,
                          int64_t c, int64_t t, int64_t hw, int64_t o, int64_t kt, int64_t st, int64_t pt) {
  const int64_t to = (t + 2 * pt - kt) / st + 1;
  std::vector<float> wt(kt * o * c);  // W_dt as contiguous (O, C) matrices
  parallel_for(o, [&](int64_t oc) {
    for (int64_t ci = 0; ci < c; ++ci)
      for (int64_t dt = 0; dt < kt; ++dt) wt[(dt * o + oc) * c + ci] = w[(oc * c + ci) * kt + dt];
  });
  const int64_t blk = x.half || y.half ? std::min<int64_t>(hw, 4096) : hw, blocks = (hw + blk - 1) / blk;
  parallel_for(nb * to * blocks, [&](int64_t job) {
    const int64_t b = job / (to * blocks), f = job / blocks % to, j0 = job % blocks * blk, n = std::min(blk, hw - j0);
    const int64_t y0 = b * o * to * hw + f * hw + j0, ldy = y.half ? n : to * hw;  // (O, n), rows To*H*W apart
    float *yf = y.dest(y0, y.half ? scratch(1, o * n) : nullptr);
    bool first = true;
    for (int64_t dt = 0; dt < kt; ++dt) {
      const int64_t fi = f * st + dt - pt;
      if (fi < 0 || fi >= t) continue;
      const int64_t x0 = b * c * t * hw + fi * hw + j0;  // (C, n), rows T*H*W apart
      const float *xf = static_cast<const float *>(x.p) + x0;
      if (x.half) {
        float *buf = scratch(0, c * n);
        for (int64_t ci = 0; ci < c; ++ci) x.copy(x0 + ci * t * hw, n, buf + ci * n);
        xf = buf;
      }
      sgemm()(kRowMajor, kNoTrans, kNoTrans, o, n, c, 1.0f, wt.data() + dt * o * c, c, xf, x.half ? n : t * hw,
              first ? 0.0f : 1.0f, yf, ldy);
      first = false;
    }
    for (int64_t oc = 0; oc < o; ++oc) {
      float *yr = yf + oc * ldy;
      if (first) std::fill(yr, yr + n, has_bias ? bias[oc] : 0.0f);
      else if (has_bias) add_bias(yr, ldy, 1, n, bias + oc);
      y.commit(y0 + oc * to * hw, n, yr);
    }
  });
}

// Convolution (2D as a 3D one with one frame), any kernel, stride, padding and groups: x (B, C, T, H, W),
// w (O, C / G, kt, kh, kw), bias (O) -> (B, O, To, Ho, Wo); attrs {st, sh, sw, pt, ph, pw, groups, has_bias}.
// Jobs are (batch, block of output rows): the block's im2col columns (C/G * kt*kh*kw, rows * Wo) are built in a
// thread-local buffer (at most ~2^21 floats) and one sgemm per group writes the output block in place (NCHW).
int mp_conv(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  MP_REQUIRE(nparam == 5 && ndims[0] == 5 && ndims[1] == 5 && holds(ndims, shapes, 3, 8));
  const Any x = any(params, dtypes, 0), y = any(params, dtypes, 4);  // float32 or float16 (see Any)
  const float *w = static_cast<const float *>(params[1]);
  const float *bias = static_cast<const float *>(params[2]);
  const float *at = static_cast<const float *>(params[3]);
  const int64_t nb = shapes[0][0], c = shapes[0][1], t = shapes[0][2], h = shapes[0][3], wd = shapes[0][4];
  const int64_t o = shapes[1][0], cg = shapes[1][1], kt = shapes[1][2], kh = shapes[1][3], kw = shapes[1][4];
  const int64_t st = at[0], sh = at[1], sw = at[2], pt = at[3], ph = at[4], pw = at[5], groups = at[6];
  const bool has_bias = at[7] != 0.0f;
  MP_REQUIRE(groups >= 1 && c == cg * groups && o % groups == 0 && same(ndims[2], shapes[2], {o}));
  MP_REQUIRE(st >= 1 && sh >= 1 && sw >= 1 && pt >= 0 && ph >= 0 && pw >= 0 && kt >= 1 && kh >= 1 && kw >= 1);
  MP_REQUIRE(t + 2 * pt >= kt && h + 2 * ph >= kh && wd + 2 * pw >= kw);
  const int64_t to = (t + 2 * pt - kt) / st + 1, ho = (h + 2 * ph - kh) / sh + 1, wo = (wd + 2 * pw - kw) / sw + 1;
  MP_REQUIRE(same(ndims[4], shapes[4], {nb, o, to, ho, wo}));
  if (nb * o == 0) return kOk;
  MP_REQUIRE(cg >= 1 && t >= 1 && h >= 1 && wd >= 1);
  if (!sgemm()) return kNoBlas;
  const int64_t og = o / groups, kdim = cg * kt * kh * kw, out_rows = to * ho, plane = out_rows * wo;
  // pointwise (float32 only: its sgemm reads the input in place; half precision takes the im2col copy)
  const bool pointwise = kdim == c && groups == 1 && st == 1 && sh == 1 && sw == 1 && pt == 0 && ph == 0 && pw == 0 &&
                         !x.half && !y.half;
  if (kt > 1 && kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 && groups == 1) {
    conv_temporal(x, w, bias, has_bias, y, nb, c, t, h * wd, o, kt, st, pt);
    return 0;
  }
  // Over frames (kt > 1), Winograd where there are enough tiles for wide jobs (each job's sgemms pack the whole
  // (O, kt*C) transformed weights for its columns: at 16x16 per frame, 4 jobs of 16 tiles ran 1.3x slower than
  // im2col; from 32x32 on it was faster, 1.4-1.8x at 64x64 and 128x128)
  const int64_t tiles = nb * ((ho + 1) / 2) * ((wo + 1) / 2);
  if (kh == 3 && kw == 3 && groups == 1 && st == 1 && sh == 1 && sw == 1 && c >= 16 && o >= 16 &&
      (kt == 1 || tiles >= 256)) {
    conv3x3_winograd(x, w, bias, has_bias, y, nb, c, t, h, wd, o, kt, pt, ph, pw);
    return 0;
  }
  int64_t rows_per_job = std::max<int64_t>(1, (int64_t(1) << 21) / std::max<int64_t>(1, kdim * wo));
  const int64_t min_jobs = 8;  // enough jobs for the threads even for a single image
  if (nb * ((out_rows + rows_per_job - 1) / rows_per_job) < min_jobs)
    rows_per_job = std::max<int64_t>(1, out_rows * nb / min_jobs);
  const int64_t blocks = (out_rows + rows_per_job - 1) / rows_per_job;
  parallel_for(nb * blocks, [&](int64_t job) {
    const int64_t b = job / blocks, r0 = (job % blocks) * rows_per_job, nr = std::min(rows_per_job, out_rows - r0);
    const int64_t np = nr * wo;
    if (pointwise) {  // 1x1, stride 1, no padding: the input block is already the column matrix
      float *yb = static_cast<float *>(y.p) + b * o * plane + r0 * wo;
      sgemm()(kRowMajor, kNoTrans, kNoTrans, o, np, c, 1.0f, w, c,
              static_cast<const float *>(x.p) + b * c * plane + r0 * wo, plane, 0.0f, yb, plane);
      add_bias(yb, plane, o, np, has_bias ? bias : nullptr);
    }
    float *cols = pointwise ? nullptr : scratch(0, kdim * np);
    for (int64_t g = 0; g < (pointwise ? 0 : groups); ++g) {
      // im2col: row k = ((ci * kt + dt) * kh + di) * kw + dj, column = output position in the block
      for (int64_t ci = 0; ci < cg; ++ci) {
        const int64_t xc = ((b * c + g * cg + ci) * t) * h * wd;
        for (int64_t dt = 0; dt < kt; ++dt)
          for (int64_t di = 0; di < kh; ++di)
            for (int64_t dj = 0; dj < kw; ++dj) {
              float *row = cols + (((ci * kt + dt) * kh + di) * kw + dj) * np;
              for (int64_t r = 0; r < nr; ++r) {
                const int64_t ot = (r0 + r) / ho, oh = (r0 + r) % ho;
                const int64_t it = ot * st - pt + dt, ih = oh * sh - ph + di;
                float *dst = row + r * wo;
                if (it < 0 || it >= t || ih < 0 || ih >= h) {
                  std::memset(dst, 0, wo * sizeof(float));
                  continue;
                }
                const int64_t src = xc + (it * h + ih) * wd;
                // output columns whose input column iw = ow * sw - pw + dj lies inside [0, wd)
                const int64_t lo = std::min(wo, std::max<int64_t>(0, (pw - dj + sw - 1) / sw));
                const int64_t hi = std::max(lo, std::min(wo, (wd + pw - dj + sw - 1) / sw));
                std::fill(dst, dst + lo, 0.0f);
                std::fill(dst + hi, dst + wo, 0.0f);
                if (sw == 1) {
                  x.copy(src + lo - pw + dj, hi - lo, dst + lo);
                } else {
                  for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = x.at(src + ow * sw - pw + dj);
                }
              }
            }
      }
      // y[b, g*og:(g+1)*og, block] = w_g (og, kdim) @ cols (kdim, np): in place (rows of y have stride `plane`),
      // or for a half-precision output into a float32 block (og, np), then rounded into y
      const int64_t y0 = (b * o + g * og) * plane + r0 * wo, ldy = y.half ? np : plane;
      float *yb = y.dest(y0, y.half ? scratch(1, og * np) : nullptr);
      sgemm()(kRowMajor, kNoTrans, kNoTrans, og, np, kdim, 1.0f, w + g * og * kdim, kdim, cols, np, 0.0f, yb, ldy);
      add_bias(yb, ldy, og, np, has_bias ? bias + g * og : nullptr);
      for (int64_t oc = 0; y.half && oc < og; ++oc) y.commit(y0 + oc * plane, np, yb + oc * np);
    }
  });
  return 0;
}
#endif

#ifndef MP_BUILD_KEY
#define MP_BUILD_KEY "unkeyed"
#endif

// The key kernels.py compiled this library for (a hash of source, compiler, flags and the native instruction sets):
// a cached file that answers another key was built from other source or for another machine.
const char *mp_build_key() { return MP_BUILD_KEY; }

static int call(int (*fn)(int, void **, int *, int64_t **, const char **, void *, void *),
                std::vector<void *> params, std::vector<std::vector<int64_t>> shapes) {
  std::vector<int> nd;
  std::vector<int64_t *> dims;
  for (auto &s : shapes) {
    nd.push_back(static_cast<int>(s.size()));
    dims.push_back(s.data());
  }
  return fn(static_cast<int>(params.size()), params.data(), nd.data(), dims.data(), nullptr, nullptr, nullptr);
}

// The load test's self-test (kernels.py runs it in a subprocess before loading the library): a few kernels on tiny
// inputs against scalar arithmetic (vector bodies and tails, the half casts, the thread pool, BLAS), and a shape
// error that must be refused. 0 = pass, else the number of the first failing check.
int mp_self_test() {
  float x[11], y[11], attrs[2] = {1e-5f, 0.0f};
  uint16_t half[11];
  for (int i = 0; i < 11; ++i) x[i] = 0.75f * static_cast<float>(i - 5);  // exact in float16
  if (call(mp_silu, {x, attrs, y}, {{11}, {1}, {11}}) != kOk) return 1;
  for (int i = 0; i < 11; ++i)
    if (std::fabs(y[i] - x[i] / (1.0f + std::exp(-x[i]))) > 1e-5f) return 1;
  if (call(mp_gelu, {x, attrs, y}, {{11}, {1}, {11}}) != kOk) return 2;
  for (int i = 0; i < 11; ++i)
    if (std::fabs(y[i] - 0.5f * x[i] * std::erfc(-x[i] * 0.70710678f)) > 1e-5f) return 2;
  if (call(mp_f32_to_f16, {x, attrs, half}, {{11}, {1}, {11}}) != kOk ||
      call(mp_f16_to_f32, {half, attrs, y}, {{11}, {1}, {11}}) != kOk || !std::equal(x, x + 11, y))
    return 3;
  float ones[11], zeros[11] = {};
  std::fill(ones, ones + 11, 1.0f);
  if (call(mp_layer_norm, {x, ones, zeros, attrs, y}, {{1, 11}, {11}, {11}, {1}, {1, 11}}) != kOk) return 4;
  double var = 0.0;  // x has mean 0
  for (int i = 0; i < 11; ++i) var += x[i] * x[i] / 11.0;
  for (int i = 0; i < 11; ++i)
    if (std::fabs(y[i] - x[i] / std::sqrt(var + 1e-5)) > 1e-5) return 4;
  if (call(mp_add, {x, x, attrs, y}, {{11}, {10}, {1}, {11}}) != kBadShape) return 5;
#ifdef MP_BLAS_LIB
  // x as (2, 3) @ x[2:8] as (2, 3)^T + 1 -> (2, 2)
  float bias[2] = {1.0f, 1.0f}, z[4];
  attrs[0] = 1.0f;
  if (call(mp_linear, {x, x + 2, bias, attrs, z}, {{2, 3}, {2, 3}, {2}, {1}, {2, 2}}) != kOk) return 6;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      float ref = 1.0f;
      for (int k = 0; k < 3; ++k) ref += x[i * 3 + k] * x[2 + j * 3 + k];
      if (std::fabs(z[i * 2 + j] - ref) > 1e-5f) return 6;
    }
#endif
  return 0;
}

}  // extern "C"
