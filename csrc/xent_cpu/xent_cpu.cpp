// CPU build of the fused vocab-parallel cross-entropy: the per-row functions of
// csrc/include/mar/xent.h (which the CUDA kernel in csrc/xent/xent_kernels.cu also calls)
// looped over rows with at::parallel_for. Python API identical to megatron_ar._ext.xent
// (csrc/xent/xent.cpp):
//
//   forward_stats(logits, target, vocab_start, vocab_end, cap, ignore_index,
//                 row_max, row_sumexp, target_logit)      -> None (fills the three fp32 [rows])
//   backward_(logits, target, row_max, row_sumexp, grad_loss, vocab_start, vocab_end, cap,
//             ignore_index)                               -> None (gradient written into logits)
//
// logits: [rows, v_local] fp32 or bf16, last dim contiguous (row stride may be larger); target:
// int64 [rows] of global vocab ids; row_max / row_sumexp / grad_loss / target_logit: fp32
// [rows], contiguous. The outputs are allocated by the caller (megatron_ar.kernels.cross_entropy)
// so that they carry the caller's device placement. One row is the unit of work: it is read once
// in the forward and read + written once in the backward, in the order of the GPU's strided loop
// with stride 1.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "mar/xent.h"

namespace {

void check_common(const torch::Tensor& logits, const torch::Tensor& target) {
  TORCH_CHECK(logits.device().is_cpu(), "xent_cpu: logits must be a CPU tensor");
  TORCH_CHECK(logits.dim() == 2, "xent_cpu: logits must be [rows, v_local], got ",
              logits.sizes());
  TORCH_CHECK(logits.stride(1) == 1, "xent_cpu: logits' last dim must be contiguous");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16,
              "xent_cpu: logits must be float32 or bfloat16, got ", logits.scalar_type());
  TORCH_CHECK(target.scalar_type() == at::kLong && target.dim() == 1 && target.is_contiguous() &&
                  target.size(0) == logits.size(0),
              "xent_cpu: target must be a contiguous int64 [rows] tensor");
}

void check_row_vector(const torch::Tensor& t, int64_t rows, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 1 && t.is_contiguous() &&
                  t.size(0) == rows && t.device().is_cpu(),
              "xent_cpu: ", name, " must be a contiguous float32 CPU tensor of [rows]");
}

// Grain: rows are long (a vocab shard), so a few rows per task are plenty.
constexpr int64_t kGrain = 4;

template <typename T>
void forward_impl(const torch::Tensor& logits, const int64_t* tgt, int64_t vocab_start,
                  int64_t vocab_end, float cap, int64_t ignore_index, float* mx, float* se,
                  float* tl) {
  const T* base = reinterpret_cast<const T*>(logits.data_ptr());
  const int64_t n = logits.size(1), ld = logits.stride(0);
  at::parallel_for(0, logits.size(0), kGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = base + r * ld;
      mar::xent::Stats st = mar::xent::row_stats(row, 0, n, 1, cap);
      mx[r] = st.m;
      se[r] = st.s;
      tl[r] = mar::xent::target_logit(row, tgt[r], vocab_start, vocab_end, cap, ignore_index);
    }
  });
}

template <typename T>
void backward_impl(torch::Tensor& logits, const int64_t* tgt, const float* mx, const float* se,
                   const float* g,
                   int64_t vocab_start, int64_t vocab_end, float cap, int64_t ignore_index) {
  T* base = reinterpret_cast<T*>(logits.data_ptr());
  const int64_t n = logits.size(1), ld = logits.stride(0);
  at::parallel_for(0, logits.size(0), kGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      mar::xent::row_backward(base + r * ld, 0, n, 1,
                              mar::xent::local_column(tgt[r], vocab_start, vocab_end),
                              tgt[r] == ignore_index, mx[r], se[r], cap, g[r]);
    }
  });
}

void forward_stats(torch::Tensor logits, torch::Tensor target, int64_t vocab_start,
                   int64_t vocab_end, double cap, int64_t ignore_index, torch::Tensor row_max,
                   torch::Tensor row_sumexp, torch::Tensor target_logit) {
  check_common(logits, target);
  const int64_t rows = logits.size(0);
  TORCH_CHECK(vocab_end - vocab_start == logits.size(1),
              "xent_cpu: vocab_end - vocab_start must equal logits.size(1)");
  check_row_vector(row_max, rows, "row_max");
  check_row_vector(row_sumexp, rows, "row_sumexp");
  check_row_vector(target_logit, rows, "target_logit");
  const int64_t* tgt = target.data_ptr<int64_t>();
  if (logits.scalar_type() == at::kFloat) {
    forward_impl<float>(logits, tgt, vocab_start, vocab_end, static_cast<float>(cap),
                        ignore_index, row_max.data_ptr<float>(), row_sumexp.data_ptr<float>(),
                        target_logit.data_ptr<float>());
  } else {
    forward_impl<mar::bf16>(logits, tgt, vocab_start, vocab_end, static_cast<float>(cap),
                            ignore_index, row_max.data_ptr<float>(),
                            row_sumexp.data_ptr<float>(), target_logit.data_ptr<float>());
  }
}

void backward_(torch::Tensor logits, torch::Tensor target, torch::Tensor row_max,
               torch::Tensor row_sumexp,
               torch::Tensor grad_loss, int64_t vocab_start, int64_t vocab_end, double cap,
               int64_t ignore_index) {
  check_common(logits, target);
  const int64_t rows = logits.size(0);
  TORCH_CHECK(vocab_end - vocab_start == logits.size(1),
              "xent_cpu: vocab_end - vocab_start must equal logits.size(1)");
  check_row_vector(row_max, rows, "row_max");
  check_row_vector(row_sumexp, rows, "row_sumexp");
  check_row_vector(grad_loss, rows, "grad_loss");
  const int64_t* tgt = target.data_ptr<int64_t>();
  if (logits.scalar_type() == at::kFloat) {
    backward_impl<float>(logits, tgt, row_max.data_ptr<float>(), row_sumexp.data_ptr<float>(),
                         grad_loss.data_ptr<float>(),
                         vocab_start, vocab_end, static_cast<float>(cap), ignore_index);
  } else {
    backward_impl<mar::bf16>(logits, tgt, row_max.data_ptr<float>(),
                             row_sumexp.data_ptr<float>(), grad_loss.data_ptr<float>(),
                             vocab_start, vocab_end, static_cast<float>(cap), ignore_index);
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused vocab-parallel cross-entropy, CPU build (csrc/include/mar/xent.h)";
  m.def("forward_stats", &forward_stats,
        "Per-row local (max, sum exp(z - max)) and target logit of the capped logits",
        py::arg("logits"), py::arg("target"), py::arg("vocab_start"), py::arg("vocab_end"),
        py::arg("cap"), py::arg("ignore_index"), py::arg("row_max"), py::arg("row_sumexp"),
        py::arg("target_logit"));
  m.def("backward_", &backward_, "Overwrite logits with d loss / d logits",
        py::arg("logits"), py::arg("target"), py::arg("row_max"),
        py::arg("row_sumexp"), py::arg("grad_loss"),
        py::arg("vocab_start"), py::arg("vocab_end"), py::arg("cap"), py::arg("ignore_index"));
}
