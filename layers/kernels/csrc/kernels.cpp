// CPU kernels of layers.kernels: layer norm, fused cross-entropy, GELU, PReLU, fake quantization.
//
// Each kernel is a loop over memory written with at::vec::Vectorized<scalar_t> (one SIMD
// register of floats or doubles: 8 floats with AVX2) and split across threads with
// at::parallel_for. The operators are declared in the `layers` namespace (TORCH_LIBRARY, the
// schema) and implemented for CPU (TORCH_LIBRARY_IMPL); their autograd formulas and shape
// ("fake") functions are registered from Python in layers/kernels/_cpp.py.
//
// Dtypes: float32 and float64. Inputs are made contiguous first.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>
#if defined(CPU_CAPABILITY_AVX2) && defined(__BMI2__)
#include <immintrin.h>
#endif

namespace {

using at::Tensor;
using at::vec::Vectorized;

// Sum of p[0..n) with one vector accumulator, then the lanes and the tail.
template <typename T>
T vsum(const T* p, int64_t n) {
  using Vec = Vectorized<T>;
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) acc += Vec::loadu(p + i);
  T lanes[Vec::size()];
  acc.store(lanes);
  T s = 0;
  for (int64_t k = 0; k < Vec::size(); ++k) s += lanes[k];
  for (; i < n; ++i) s += p[i];
  return s;
}

// Sum of (p[i] - m)^2: the second pass of a two-pass variance.
template <typename T>
T vsum_sq_dev(const T* p, T m, int64_t n) {
  using Vec = Vectorized<T>;
  Vec acc(T(0)), vm(m);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    Vec d = Vec::loadu(p + i) - vm;
    acc = at::vec::fmadd(d, d, acc);
  }
  T lanes[Vec::size()];
  acc.store(lanes);
  T s = 0;
  for (int64_t k = 0; k < Vec::size(); ++k) s += lanes[k];
  for (; i < n; ++i) s += (p[i] - m) * (p[i] - m);
  return s;
}

// exp and erf for float without a library call per vector. Vectorized<float>::exp() calls SLEEF in
// libtorch_cpu through the PLT, and every call clobbers all vector registers (a call saves none of
// them); exp_u20 is inline intrinsics (relative error ~1e-6, what torch's own softmax kernels use).
// verf is the same Abramowitz-Stegun polynomial as Vectorized<float>::erf(), with that exp.
// float64 keeps SLEEF's exp and erf (1 ulp).
template <typename T>
inline Vectorized<T> vexp(const Vectorized<T>& v) {
  if constexpr (std::is_same_v<T, float>) return v.exp_u20();
  else return v.exp();
}

// erf(x) given e = exp(-x^2) (float: the polynomial's own exponential passed in, so a caller that
// needs exp(-x^2) as well, GELU's backward for phi, computes it once; double: SLEEF's erf).
template <typename T>
inline Vectorized<T> verf_given_exp(const Vectorized<T>& x, const Vectorized<T>& e) {
  if constexpr (std::is_same_v<T, float>) {
    using Vec = Vectorized<float>;
    const Vec one(1.f), zero(0.f), p(0.3275911f), p1(0.254829592f), p2(-0.284496736f), p3(1.421413741f),
        p4(-1.453152027f), p5(1.061405429f);
    const Vec t = one / at::vec::fmadd(p, x.abs(), one);                     // 1 / (1 + p |x|)
    const Vec r = at::vec::fmadd(at::vec::fmadd(at::vec::fmadd(at::vec::fmadd(p5, t, p4), t, p3), t, p2), t, p1);
    const Vec y = one - r * t * e;                                          // erf(|x|)
    return Vec::blendv(y, zero - y, x < zero);                              // odd function
  } else {
    return x.erf();
  }
}

template <typename T>
inline Vectorized<T> verf(const Vectorized<T>& x) {
  if constexpr (std::is_same_v<T, float>) return verf_given_exp(x, vexp(Vectorized<float>(0.f) - x * x));
  else return x.erf();
}

// Per-thread partial sums for a reduction over rows (dgamma, dbeta, dprelu slope): one row
// of `width` per thread, summed at the end, so threads never write the same memory.
template <typename T>
struct Partials {
  int64_t width;
  std::vector<T> buf;
  explicit Partials(int64_t w) : width(w), buf(static_cast<size_t>(at::get_num_threads() * w), T(0)) {}
  T* mine() { return buf.data() + at::get_thread_num() * width; }
  void sum_into(T* out) const {
    for (int64_t j = 0; j < width; ++j) out[j] = T(0);
    for (size_t t = 0; t < buf.size() / std::max<int64_t>(width, 1); ++t)
      for (int64_t j = 0; j < width; ++j) out[j] += buf[t * width + j];
  }
};

// ------------------------------------------------------------------------------ layer norm
// x viewed as (R, M). mean, rstd: (R,). y = (x - mean) * rstd * w + b.
std::tuple<Tensor, Tensor, Tensor> layer_norm_cpu(const Tensor& input, const std::optional<Tensor>& weight,
                                                 const std::optional<Tensor>& bias, int64_t M, double eps) {
  TORCH_CHECK(M > 0 && input.numel() % M == 0, "layer_norm: normalized size ", M, " does not divide ", input.numel());
  Tensor x = input.contiguous();
  const int64_t R = x.numel() / M;
  Tensor y = at::empty_like(x);
  Tensor mean = at::empty({R}, x.options());
  Tensor rstd = at::empty({R}, x.options());
  Tensor w = weight.has_value() ? weight->contiguous() : Tensor();
  Tensor b = bias.has_value() ? bias->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "layer_norm_cpu", [&] {
    using Vec = Vectorized<scalar_t>;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    const scalar_t* pw = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pb = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* pm = mean.mutable_data_ptr<scalar_t>();
    scalar_t* pr = rstd.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = px + r * M;
        scalar_t* yr = py + r * M;
        const scalar_t m = vsum(xr, M) / M;                              // pass 1: mean
        const scalar_t var = vsum_sq_dev(xr, m, M) / M;                  // pass 2: biased variance
        const scalar_t s = scalar_t(1) / std::sqrt(var + static_cast<scalar_t>(eps));
        pm[r] = m;
        pr[r] = s;
        // pass 3: y = (x - m) s w + b
        const Vec vm(m), vs(s);
        int64_t i = 0;
        for (; i + Vec::size() <= M; i += Vec::size()) {
          Vec v = (Vec::loadu(xr + i) - vm) * vs;
          if (pw) v = v * Vec::loadu(pw + i);
          if (pb) v = v + Vec::loadu(pb + i);
          v.store(yr + i);
        }
        for (; i < M; ++i) {
          scalar_t v = (xr[i] - m) * s;
          if (pw) v *= pw[i];
          if (pb) v += pb[i];
          yr[i] = v;
        }
      }
    });
  });
  return {y, mean, rstd};
}

// dx = rstd (g~ - mean(g~) - xhat mean(g~ xhat)), g~ = g w;  dw = sum_rows g xhat;  db = sum_rows g.
// Gradients not asked for in output_mask are returned as empty (0-element) tensors.
std::tuple<Tensor, Tensor, Tensor> layer_norm_backward_cpu(const Tensor& grad_out, const Tensor& input,
                                                          const Tensor& mean, const Tensor& rstd,
                                                          const std::optional<Tensor>& weight,
                                                          std::array<bool, 3> mask) {
  Tensor x = input.contiguous(), g = grad_out.contiguous();
  const int64_t R = mean.numel();
  const int64_t M = R > 0 ? x.numel() / R : (weight.has_value() ? weight->numel() : 0);
  Tensor w = weight.has_value() ? weight->contiguous() : Tensor();
  Tensor dx = mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  Tensor dw = mask[1] && w.defined() ? at::empty_like(w) : at::empty({0}, x.options());
  Tensor db = mask[2] ? at::empty({M}, x.options()) : at::empty({0}, x.options());
  const bool need_dw = mask[1] && w.defined(), need_db = mask[2];
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "layer_norm_backward_cpu", [&] {
    using Vec = Vectorized<scalar_t>;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    const scalar_t* pw = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pm = mean.const_data_ptr<scalar_t>();
    const scalar_t* pr = rstd.const_data_ptr<scalar_t>();
    scalar_t* pdx = mask[0] ? dx.mutable_data_ptr<scalar_t>() : nullptr;
    Partials<scalar_t> pdw(need_dw ? M : 0), pdb(need_db ? M : 0);
    at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
      scalar_t* accw = need_dw ? pdw.mine() : nullptr;
      scalar_t* accb = need_db ? pdb.mine() : nullptr;
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = px + r * M;
        const scalar_t* gr = pg + r * M;
        const scalar_t m = pm[r], s = pr[r];
        const Vec vm(m), vs(s);
        // pass 1: the row sums sum g~ and sum g~ xhat, and (same loads) dw += g xhat, db += g
        Vec a1(scalar_t(0)), a2(scalar_t(0));
        int64_t i = 0;
        for (; i + Vec::size() <= M; i += Vec::size()) {
          const Vec gv = Vec::loadu(gr + i);
          const Vec xh = (Vec::loadu(xr + i) - vm) * vs;
          const Vec gt = pw ? gv * Vec::loadu(pw + i) : gv;
          a1 += gt;
          a2 = at::vec::fmadd(gt, xh, a2);
          if (accw) at::vec::fmadd(gv, xh, Vec::loadu(accw + i)).store(accw + i);
          if (accb) (Vec::loadu(accb + i) + gv).store(accb + i);
        }
        scalar_t l1[Vec::size()], l2[Vec::size()];
        a1.store(l1);
        a2.store(l2);
        scalar_t sg = 0, sgx = 0;
        for (int64_t k = 0; k < Vec::size(); ++k) { sg += l1[k]; sgx += l2[k]; }
        for (; i < M; ++i) {
          const scalar_t xh = (xr[i] - m) * s;
          const scalar_t gt = pw ? gr[i] * pw[i] : gr[i];
          sg += gt;
          sgx += gt * xh;
          if (accw) accw[i] += gr[i] * xh;
          if (accb) accb[i] += gr[i];
        }
        if (!pdx) continue;
        // pass 2: dx = rstd (g~ - mean g~ - xhat mean(g~ xhat))
        const scalar_t c1 = sg / M, c2 = sgx / M;
        const Vec vc1(c1), vc2(c2);
        scalar_t* dxr = pdx + r * M;
        i = 0;
        for (; i + Vec::size() <= M; i += Vec::size()) {
          Vec gt = Vec::loadu(gr + i);
          if (pw) gt = gt * Vec::loadu(pw + i);
          const Vec xh = (Vec::loadu(xr + i) - vm) * vs;
          (vs * (gt - vc1 - xh * vc2)).store(dxr + i);
        }
        for (; i < M; ++i) {
          const scalar_t gt = pw ? gr[i] * pw[i] : gr[i];
          dxr[i] = s * (gt - c1 - (xr[i] - m) * s * c2);
        }
      }
    });
    if (need_dw) pdw.sum_into(dw.mutable_data_ptr<scalar_t>());
    if (need_db) pdb.sum_into(db.mutable_data_ptr<scalar_t>());
  });
  return {dx, dw, db};
}

// --------------------------------------------------------------------- fused cross-entropy
// logits (R, C), target (R,) int64. reduction: 0 none, 1 mean, 2 sum.
// Three loops over each row while it is in cache: its max; exp(z - max) written into the gradient
// buffer while summing it; then loss = log(sum) + max - z_t and grad = (p - onehot) * scale,
// scale = 1/R for "mean".
// grad is d loss / d logits for an upstream gradient of 1 (per row for "none"); backward only
// multiplies it by the upstream gradient. grad may be z itself: each element of z is read before
// the same element of grad is written (z_y is read first).
Tensor cross_entropy_into(const Tensor& z, const Tensor& target, int64_t reduction, const Tensor& grad) {
  TORCH_CHECK(z.dim() == 2, "cross_entropy: expected 2-D logits (R, C), got ", z.dim(), "-D");
  TORCH_CHECK(target.dim() == 1 && target.size(0) == z.size(0), "cross_entropy: expected target of shape (",
              z.size(0), ",)");
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "cross_entropy: reduction code must be 0, 1 or 2");
  TORCH_CHECK(z.is_contiguous() && grad.is_contiguous() && grad.sizes() == z.sizes(),
              "cross_entropy: expected contiguous logits and gradient buffer of the same shape");
  Tensor t = target.to(at::kLong).contiguous();
  const int64_t R = z.size(0), C = z.size(1);
  Tensor rows = at::empty({R}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "cross_entropy_cpu", [&] {
    using Vec = Vectorized<scalar_t>;
    const scalar_t* pz = z.const_data_ptr<scalar_t>();
    const int64_t* pt = t.const_data_ptr<int64_t>();
    scalar_t* pgr = grad.mutable_data_ptr<scalar_t>();
    scalar_t* pl = rows.mutable_data_ptr<scalar_t>();
    const scalar_t scale = reduction == 1 ? scalar_t(1) / static_cast<scalar_t>(R) : scalar_t(1);
    at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* zr = pz + r * C;
        scalar_t* gr = pgr + r * C;
        const int64_t y = pt[r];
        TORCH_CHECK(y >= 0 && y < C, "cross_entropy: target ", y, " is out of bounds for ", C, " classes");
        const scalar_t zy = zr[y];                                       // before gr (maybe zr) is written
        // max
        int64_t i = 0;
        Vec vmax(-std::numeric_limits<scalar_t>::infinity());
        for (; i + Vec::size() <= C; i += Vec::size()) vmax = at::vec::maximum(vmax, Vec::loadu(zr + i));
        scalar_t lanes[Vec::size()];
        vmax.store(lanes);
        scalar_t mx = -std::numeric_limits<scalar_t>::infinity();
        for (int64_t k = 0; k < Vec::size(); ++k) mx = std::max(mx, lanes[k]);
        for (; i < C; ++i) mx = std::max(mx, zr[i]);
        // e = exp(z - max) into the gradient buffer, and its sum
        const Vec vm(mx);
        Vec acc(scalar_t(0));
        i = 0;
        for (; i + Vec::size() <= C; i += Vec::size()) {
          Vec e = vexp(Vec::loadu(zr + i) - vm);
          e.store(gr + i);
          acc += e;
        }
        acc.store(lanes);
        scalar_t sum = 0;
        for (int64_t k = 0; k < Vec::size(); ++k) sum += lanes[k];
        for (; i < C; ++i) {
          scalar_t e = std::exp(zr[i] - mx);
          gr[i] = e;
          sum += e;
        }
        pl[r] = std::log(sum) + mx - zy;                              // -log softmax(z)_y
        // grad = (e / sum - onehot) * scale
        const Vec vk(scale / sum);
        i = 0;
        for (; i + Vec::size() <= C; i += Vec::size()) (Vec::loadu(gr + i) * vk).store(gr + i);
        for (; i < C; ++i) gr[i] *= scale / sum;
        gr[y] -= scale;
      }
    });
  });
  return reduction == 0 ? rows : (reduction == 1 ? rows.sum() / static_cast<double>(R) : rows.sum());
}

// Returns (loss, grad) with grad in a new buffer.
std::tuple<Tensor, Tensor> cross_entropy_cpu(const Tensor& input, const Tensor& target, int64_t reduction) {
  Tensor z = input.contiguous();
  Tensor grad = at::empty_like(z);
  Tensor loss = cross_entropy_into(z, target, reduction, grad);
  return {loss, grad};
}

// Returns the loss and leaves the gradient in input's own memory (the logits are overwritten).
Tensor cross_entropy_inplace_cpu(Tensor& input, const Tensor& target, int64_t reduction) {
  TORCH_CHECK(input.is_contiguous(), "cross_entropy_inplace: expected contiguous logits");
  return cross_entropy_into(input, target, reduction, input);
}

// ------------------------------------------------------------------------------------ GELU
// y = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2
Tensor gelu_cpu(const Tensor& input) {
  Tensor x = input.contiguous();
  Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gelu_cpu", [&] {
    using Vec = Vectorized<scalar_t>;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    const scalar_t kInvSqrt2 = static_cast<scalar_t>(M_SQRT1_2);
    at::parallel_for(0, x.numel(), 32768, [&](int64_t begin, int64_t end) {
      const Vec vk(kInvSqrt2), vhalf(scalar_t(0.5)), vone(scalar_t(1));
      int64_t i = begin;
      for (; i + Vec::size() <= end; i += Vec::size()) {
        Vec v = Vec::loadu(px + i);
        (v * vhalf * (vone + verf(v * vk))).store(py + i);
      }
      for (; i < end; ++i) py[i] = px[i] * scalar_t(0.5) * (scalar_t(1) + std::erf(px[i] * kInvSqrt2));
    });
  });
  return y;
}

// dx = g (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
Tensor gelu_backward_cpu(const Tensor& grad_out, const Tensor& input) {
  Tensor x = input.contiguous(), g = grad_out.contiguous();
  Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gelu_backward_cpu", [&] {
    using Vec = Vectorized<scalar_t>;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    scalar_t* pd = dx.mutable_data_ptr<scalar_t>();
    const scalar_t kInvSqrt2 = static_cast<scalar_t>(M_SQRT1_2);
    const scalar_t kInvSqrt2Pi = static_cast<scalar_t>(0.5 * M_2_SQRTPI * M_SQRT1_2);
    at::parallel_for(0, x.numel(), 32768, [&](int64_t begin, int64_t end) {
      const Vec vk(kInvSqrt2), vp(kInvSqrt2Pi), vhalf(scalar_t(0.5)), vmhalf(scalar_t(-0.5)), vone(scalar_t(1));
      int64_t i = begin;
      for (; i + Vec::size() <= end; i += Vec::size()) {
        Vec v = Vec::loadu(px + i);
        Vec e = vexp(vmhalf * v * v);                                      // exp(-x^2 / 2), in both terms
        Vec cdf = vhalf * (vone + verf_given_exp(v * vk, e));             // exp(-(x/sqrt2)^2) = e
        Vec pdf = vp * e;
        (Vec::loadu(pg + i) * at::vec::fmadd(v, pdf, cdf)).store(pd + i);
      }
      for (; i < end; ++i) {
        scalar_t v = px[i];
        scalar_t cdf = scalar_t(0.5) * (scalar_t(1) + std::erf(v * kInvSqrt2));
        scalar_t pdf = kInvSqrt2Pi * std::exp(scalar_t(-0.5) * v * v);
        pd[i] = pg[i] * (cdf + v * pdf);
      }
    });
  });
  return dx;
}

// ----------------------------------------------------------------------------------- PReLU
// x viewed as (N, C, S): channel c of sample n is the row n * C + c of S values.
// The element range [0, N C S) is split across threads; each thread walks its range row piece by
// row piece, so the split works for one channel as well as for many.
template <typename F>
void for_each_row_piece(int64_t C, int64_t S, int64_t numel, const F& f) {
  at::parallel_for(0, numel, 32768, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t row = i / S, stop = std::min(end, (row + 1) * S);
      f(row % C, i, stop);                                  // channel, [i, stop) inside one row
      i = stop;
    }
  });
}

Tensor prelu_cpu(const Tensor& input, const Tensor& weight) {
  Tensor x = input.contiguous(), w = weight.contiguous();
  Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const int64_t C = w.numel();
  const int64_t S = C == 1 ? x.numel() : x.numel() / (x.size(0) * C);   // values per (sample, channel)
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "prelu_cpu", [&] {
    using Vec = Vectorized<scalar_t>;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pw = w.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    for_each_row_piece(C, S, x.numel(), [&](int64_t c, int64_t i, int64_t stop) {
      const scalar_t a = pw[c];
      const Vec va(a), zero(scalar_t(0));
      for (; i + Vec::size() <= stop; i += Vec::size()) {
        Vec v = Vec::loadu(px + i);
        Vec::blendv(v * va, v, v > zero).store(py + i);     // x > 0 ? x : a x
      }
      for (; i < stop; ++i) py[i] = px[i] > 0 ? px[i] : a * px[i];
    });
  });
  return y;
}

// dx = g (x > 0 ? 1 : a);  da_c = sum over all but channel c of g min(0, x).
std::tuple<Tensor, Tensor> prelu_backward_cpu(const Tensor& grad_out, const Tensor& input, const Tensor& weight,
                                             std::array<bool, 2> mask) {
  Tensor x = input.contiguous(), g = grad_out.contiguous(), w = weight.contiguous();
  const int64_t C = w.numel();
  const int64_t n = x.numel();
  Tensor dx = mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  Tensor dw = mask[1] ? at::zeros_like(w) : at::empty({0}, w.options());
  if (n == 0) return {dx, dw};
  const int64_t S = C == 1 ? n : n / (x.size(0) * C);                     // values per (sample, channel)
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "prelu_backward_cpu", [&] {
    using Vec = Vectorized<scalar_t>;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    const scalar_t* pw = w.const_data_ptr<scalar_t>();
    scalar_t* pdx = mask[0] ? dx.mutable_data_ptr<scalar_t>() : nullptr;
    Partials<scalar_t> acc(mask[1] ? C : 0);
    for_each_row_piece(C, S, n, [&](int64_t c, int64_t i, int64_t stop) {
      const scalar_t a = pw[c];
      const Vec va(a), zero(scalar_t(0));
      Vec s(scalar_t(0));
      for (; i + Vec::size() <= stop; i += Vec::size()) {
        Vec v = Vec::loadu(px + i), gv = Vec::loadu(pg + i);
        Vec pos = v > zero;
        if (pdx) Vec::blendv(gv * va, gv, pos).store(pdx + i);
        if (mask[1]) s += Vec::blendv(gv * v, zero, pos);    // g min(0, x)
      }
      scalar_t tail = 0;
      for (; i < stop; ++i) {
        if (pdx) pdx[i] = px[i] > 0 ? pg[i] : a * pg[i];
        if (mask[1] && !(px[i] > 0)) tail += pg[i] * px[i];
      }
      if (mask[1]) {
        scalar_t lanes[Vec::size()];
        s.store(lanes);
        for (int64_t k = 0; k < Vec::size(); ++k) tail += lanes[k];
        acc.mine()[c] += tail;
      }
    });
    if (mask[1]) acc.sum_into(dw.mutable_data_ptr<scalar_t>());
  });
  return {dx, dw};
}

// The lanes of a comparison result (each lane all ones or all zeros) as one bool per lane.
template <typename T>
inline void store_bools(const Vectorized<T>& m, bool* out) {
  T lanes[Vectorized<T>::size()];
  (m & Vectorized<T>(T(1))).store(lanes);
  for (int64_t k = 0; k < Vectorized<T>::size(); ++k) out[k] = lanes[k] != T(0);
}

#if defined(CPU_CAPABILITY_AVX2) && defined(__BMI2__)
// AVX2: the 8 sign bits in one instruction (movemask), spread to one byte each (pdep), one 8-byte store.
template <>
inline void store_bools<float>(const Vectorized<float>& m, bool* out) {
  const uint64_t bytes = _pdep_u64(static_cast<uint64_t>(_mm256_movemask_ps(m)), 0x0101010101010101ULL);
  std::memcpy(out, &bytes, sizeof(bytes));
}
#endif

// ------------------------------------------------------------------- fake quantize (per tensor)
// As torch's CPU kernel: q = z + nearbyint(x * (1/s)) with 1/s in float (the product in the input's
// precision); y = (clamp(q) - z) s rounded to float (exact integer times float, then one rounding);
// mask = quant_min <= q <= quant_max. The clamp is std::fmax / std::fmin in floating point, so NaN
// becomes quant_min (and is outside the range) and +-inf clamp to the nearest end.
std::tuple<Tensor, Tensor> fake_quantize_cpu(const Tensor& input, double scale, int64_t zero_point,
                                            int64_t quant_min, int64_t quant_max) {
  Tensor x = input.contiguous();
  Tensor y = at::empty_like(x);
  Tensor mask = at::empty(x.sizes(), x.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fake_quantize_cpu", [&] {
    using Vec = Vectorized<scalar_t>;
    const float sc = static_cast<float>(scale);
    const float inv = 1.0f / sc;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    bool* pm = mask.mutable_data_ptr<bool>();
    const scalar_t lo = static_cast<scalar_t>(quant_min), hi = static_cast<scalar_t>(quant_max);
    const scalar_t z = static_cast<scalar_t>(zero_point);
    at::parallel_for(0, x.numel(), 32768, [&](int64_t begin, int64_t end) {
      const Vec vinv(static_cast<scalar_t>(inv)), vz(z), vlo(lo), vhi(hi), vsc(static_cast<scalar_t>(sc));
      const Vec one(scalar_t(1));
      int64_t i = begin;
      for (; i + Vec::size() <= end; i += Vec::size()) {
        Vec q = (Vec::loadu(px + i) * vinv).round() + vz;               // z + nearbyint(x / s)
        q = Vec::blendv(vlo - one, q, q == q);                           // NaN -> below the range (fmax)
        Vec inside = (q >= vlo) & (q <= vhi);
        ((at::vec::minimum(at::vec::maximum(q, vlo), vhi) - vz) * vsc).store(py + i);
        if constexpr (std::is_same_v<scalar_t, double>) {              // the product is a float, as in torch
          for (int64_t k = 0; k < Vec::size(); ++k) py[i + k] = static_cast<float>(py[i + k]);
        }
        store_bools(inside, pm + i);
      }
      for (; i < end; ++i) {
        scalar_t q = std::nearbyint(px[i] * static_cast<scalar_t>(inv)) + z;
        if (q != q) q = lo - 1;
        pm[i] = q >= lo && q <= hi;
        py[i] = static_cast<float>((std::min(std::max(q, lo), hi) - z) * static_cast<scalar_t>(sc));
      }
    });
  });
  return {y, mask};
}

// dx = g * mask (the straight-through gradient). One read of g and of the bool mask, one write: a plain
// loop that the compiler vectorizes (bytes widened to floats, then a multiply).
Tensor fake_quantize_backward_cpu(const Tensor& grad_out, const Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == at::kBool, "fake_quantize_backward: expected a bool mask");
  TORCH_CHECK(grad_out.sizes() == mask.sizes(), "fake_quantize_backward: grad_out and mask differ in shape");
  Tensor g = grad_out.contiguous(), m = mask.contiguous();
  Tensor dx = at::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "fake_quantize_backward_cpu", [&] {
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    const bool* pm = m.const_data_ptr<bool>();
    scalar_t* pd = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.numel(), 32768, [&](int64_t begin, int64_t end) {
      // g * mask as torch computes it (so inf * 0 is NaN there too); a multiply by the 0/1 byte
      // converted to float vectorizes, a branch on it does not
      for (int64_t i = begin; i < end; ++i) pd[i] = pg[i] * static_cast<scalar_t>(pm[i]);
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY(layers, m) {
  m.def("layer_norm(Tensor input, Tensor? weight, Tensor? bias, int M, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("layer_norm_backward(Tensor grad_out, Tensor input, Tensor mean, Tensor rstd, Tensor? weight, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("cross_entropy(Tensor input, Tensor target, int reduction) -> (Tensor, Tensor)");
  m.def("cross_entropy_inplace(Tensor(a!) input, Tensor target, int reduction) -> Tensor");
  m.def("gelu(Tensor input) -> Tensor");
  m.def("gelu_backward(Tensor grad_out, Tensor input) -> Tensor");
  m.def("prelu(Tensor input, Tensor weight) -> Tensor");
  m.def("prelu_backward(Tensor grad_out, Tensor input, Tensor weight, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def("fake_quantize(Tensor input, float scale, int zero_point, int quant_min, int quant_max) -> (Tensor, Tensor)");
  m.def("fake_quantize_backward(Tensor grad_out, Tensor mask) -> Tensor");
}

TORCH_LIBRARY_IMPL(layers, CPU, m) {
  m.impl("layer_norm", &layer_norm_cpu);
  m.impl("layer_norm_backward", &layer_norm_backward_cpu);
  m.impl("cross_entropy", &cross_entropy_cpu);
  m.impl("cross_entropy_inplace", &cross_entropy_inplace_cpu);
  m.impl("gelu", &gelu_cpu);
  m.impl("gelu_backward", &gelu_backward_cpu);
  m.impl("prelu", &prelu_cpu);
  m.impl("prelu_backward", &prelu_backward_cpu);
  m.impl("fake_quantize", &fake_quantize_cpu);
  m.impl("fake_quantize_backward", &fake_quantize_backward_cpu);
}
