// CPU build of the fused RMSNorm (megatron_ar._ext.rmsnorm_cpu): the per-row functions of
// csrc/include/mar/rmsnorm.h, the ones the CUDA kernels call, run over rows with
// at::parallel_for. Same Python API as the CUDA build (csrc/rmsnorm/rmsnorm.cpp):
//
//   forward(x, residual|None, weight|None, kind, mode, eps) -> (out, h|None, rstd)
//   backward(dout, dh|None, xin, weight|None, rstd, kind) -> (dx, dw fp32|None)
//
// x, residual, dout, dh, xin: contiguous [rows, n] of one dtype (fp32 or bf16); weight: [n]
// fp32 or bf16; rstd: [rows] fp32. kind / mode: mar::rmsnorm::WeightKind / ResidualMode.
//
// dw: rows are split into a fixed number of chunks that depends only on the row count (not on
// the thread count), each chunk sums its rows into its own fp32 row of partials, and the
// partials are summed in chunk order: the result is the same for any number of threads.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>

#include "mar/rmsnorm.h"

namespace {

namespace R = mar::rmsnorm;

constexpr int64_t kMaxChunks = 64;  // partial dw rows: kMaxChunks * n * 4 bytes at most

void check_rows(const torch::Tensor& t, const char* name, const torch::Tensor& like) {
  TORCH_CHECK(t.device().is_cpu(), "rmsnorm_cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), "rmsnorm_cpu: ", name, " must be contiguous");
  TORCH_CHECK(t.sizes() == like.sizes(), "rmsnorm_cpu: ", name, " has shape ", t.sizes(),
              ", expected ", like.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "rmsnorm_cpu: ", name, " has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
}

void check_weight(const c10::optional<torch::Tensor>& w, int64_t kind, int64_t n) {
  TORCH_CHECK(kind >= 0 && kind <= 2, "rmsnorm_cpu: kind must be 0 (none), 1 (w) or 2 (1+w)");
  if (kind == R::kNoWeight) return;
  TORCH_CHECK(w.has_value() && w->defined(), "rmsnorm_cpu: kind ", kind, " needs a weight");
  TORCH_CHECK(w->device().is_cpu() && w->is_contiguous() && w->dim() == 1 && w->size(0) == n,
              "rmsnorm_cpu: weight must be a contiguous CPU vector of ", n, " elements");
  TORCH_CHECK(w->scalar_type() == at::kFloat || w->scalar_type() == at::kBFloat16,
              "rmsnorm_cpu: weight must be fp32 or bf16, got ", w->scalar_type());
}

template <typename T>
const T* ptr(const torch::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}
template <typename T>
T* mptr(torch::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}
template <typename T>
const T* opt_ptr(const c10::optional<torch::Tensor>& t) {
  return (t.has_value() && t->defined()) ? ptr<T>(*t) : nullptr;
}

// Calls f(T{}, W{}) for the runtime dtypes (T: activations, W: weight); C++17 generic lambdas
// take the types as tag values.
template <typename F>
void dispatch(at::ScalarType xt, at::ScalarType wt, F&& f) {
  TORCH_CHECK(xt == at::kFloat || xt == at::kBFloat16,
              "rmsnorm_cpu: inputs must be fp32 or bf16, got ", xt);
  bool xb = xt == at::kBFloat16, wb = wt == at::kBFloat16;
  if (!xb && !wb) f(float{}, float{});
  else if (!xb && wb) f(float{}, mar::bf16{});
  else if (xb && !wb) f(mar::bf16{}, float{});
  else f(mar::bf16{}, mar::bf16{});
}

std::tuple<torch::Tensor, c10::optional<torch::Tensor>, torch::Tensor> forward(
    const torch::Tensor& x, const c10::optional<torch::Tensor>& residual,
    const c10::optional<torch::Tensor>& weight, int64_t kind, int64_t mode, double eps) {
  TORCH_CHECK(x.dim() == 2, "rmsnorm_cpu: x must be [rows, n]");
  TORCH_CHECK(mode >= 0 && mode <= 2, "rmsnorm_cpu: mode must be 0 (none), 1 (add_after) or 2 "
              "(add_before)");
  check_rows(x, "x", x);
  const int64_t rows = x.size(0), n = x.size(1);
  TORCH_CHECK(n > 0, "rmsnorm_cpu: empty rows");
  if (mode != R::kNoResidual) {
    TORCH_CHECK(residual.has_value() && residual->defined(), "rmsnorm_cpu: mode ", mode,
                " needs a residual");
    check_rows(*residual, "residual", x);
  }
  check_weight(weight, kind, n);
  auto out = torch::empty_like(x);
  c10::optional<torch::Tensor> h;
  if (mode == R::kAddBefore) h = torch::empty_like(x);
  auto rstd = torch::empty({rows}, x.options().dtype(at::kFloat));
  at::ScalarType wt = kind == R::kNoWeight ? at::kFloat : weight->scalar_type();
  dispatch(x.scalar_type(), wt, [&](auto t_tag, auto w_tag) {
    using T = decltype(t_tag);
    using W = decltype(w_tag);
    const T* px = ptr<T>(x);
    const T* pr = mode != R::kNoResidual ? ptr<T>(*residual) : nullptr;
    const W* pw = opt_ptr<W>(weight);
    T* po = mptr<T>(out);
    T* ph = h.has_value() ? mptr<T>(*h) : nullptr;
    float* ps = rstd.data_ptr<float>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / n), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t o = r * n;
        ps[r] = R::forward_row(px + o, pr ? pr + o : nullptr, pw, static_cast<int>(kind),
                               static_cast<int>(mode), static_cast<float>(eps), n, po + o,
                               ph ? ph + o : nullptr);
      }
    });
  });
  return {out, h, rstd};
}

std::tuple<torch::Tensor, c10::optional<torch::Tensor>> backward(
    const torch::Tensor& dout, const c10::optional<torch::Tensor>& dh, const torch::Tensor& xin,
    const c10::optional<torch::Tensor>& weight, const torch::Tensor& rstd, int64_t kind) {
  TORCH_CHECK(xin.dim() == 2, "rmsnorm_cpu: xin must be [rows, n]");
  check_rows(xin, "xin", xin);
  check_rows(dout, "dout", xin);
  if (dh.has_value() && dh->defined()) check_rows(*dh, "dh", xin);
  const int64_t rows = xin.size(0), n = xin.size(1);
  check_weight(weight, kind, n);
  TORCH_CHECK(rstd.scalar_type() == at::kFloat && rstd.is_contiguous() && rstd.numel() == rows,
              "rmsnorm_cpu: rstd must be a contiguous fp32 vector of ", rows, " elements");
  auto dx = torch::empty_like(xin);
  const bool has_w = kind != R::kNoWeight;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(kMaxChunks, rows));
  const int64_t per_chunk = (rows + chunks - 1) / chunks;
  auto partial = has_w ? torch::zeros({chunks, n}, xin.options().dtype(at::kFloat))
                       : torch::Tensor();
  at::ScalarType wt = has_w ? weight->scalar_type() : at::kFloat;
  dispatch(xin.scalar_type(), wt, [&](auto t_tag, auto w_tag) {
    using T = decltype(t_tag);
    using W = decltype(w_tag);
    const T* pdy = ptr<T>(dout);
    const T* pdh = opt_ptr<T>(dh);
    const T* px = ptr<T>(xin);
    const W* pw = opt_ptr<W>(weight);
    const float* ps = rstd.data_ptr<float>();
    T* pdx = mptr<T>(dx);
    float* pp = has_w ? partial.data_ptr<float>() : nullptr;
    at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        float* acc = pp ? pp + c * n : nullptr;
        const int64_t r_end = std::min(rows, (c + 1) * per_chunk);
        for (int64_t r = c * per_chunk; r < r_end; ++r) {
          const int64_t o = r * n;
          R::backward_row(pdy + o, pdh ? pdh + o : nullptr, px + o, pw, static_cast<int>(kind),
                          ps[r], n, pdx + o, acc);
        }
      }
    });
  });
  if (!has_w) return {dx, c10::nullopt};
  // Sum the chunk partials in chunk order (per column; columns in parallel).
  auto dw = torch::empty({n}, xin.options().dtype(at::kFloat));
  const float* pp = partial.data_ptr<float>();
  float* pdw = dw.data_ptr<float>();
  at::parallel_for(0, n, 1024, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      float s = 0.0f;
      for (int64_t c = 0; c < chunks; ++c) s += pp[c * n + j];
      pdw[j] = s;
    }
  });
  return {dx, dw};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused RMSNorm (+ residual add), CPU build of csrc/include/mar/rmsnorm.h";
  m.def("forward", &forward, "forward(x, residual, weight, kind, mode, eps) -> (out, h, rstd)",
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("kind"), py::arg("mode"),
        py::arg("eps"));
  m.def("backward", &backward, "backward(dout, dh, xin, weight, rstd, kind) -> (dx, dw)",
        py::arg("dout"), py::arg("dh"), py::arg("xin"), py::arg("weight"), py::arg("rstd"),
        py::arg("kind"));
}
