#include "common/value_inputs.h"

#include "common/checks.h"
#include "common/fusion_inputs.h"  // to_dtype

namespace mogen {

ValueScoresArgs make_value_args(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& ids,
                                const std::optional<at::Tensor>& bias) {
  MOGEN_CHECK_ARG(hidden.dim() == 2, "hidden must be 2-D [B, H], got ", hidden.sizes());
  MOGEN_CHECK_ARG(weight.dim() == 2, "weight must be 2-D [V, H], got ", weight.sizes());
  MOGEN_CHECK_ARG(ids.dim() == 2, "ids must be 2-D [B, k], got ", ids.sizes());
  const at::Device device = hidden.device();
  MOGEN_CHECK_ARG(weight.device() == device, "weight is on ", weight.device(), " but hidden is on ", device);
  MOGEN_CHECK_ARG(ids.device() == device, "ids is on ", ids.device(), " but hidden is on ", device);

  ValueScoresArgs a;
  a.batch = hidden.size(0);
  a.hidden_size = hidden.size(1);
  a.vocab = weight.size(0);
  a.k = ids.size(1);
  MOGEN_CHECK_ARG(weight.size(1) == a.hidden_size, "weight has hidden size ", weight.size(1), " but hidden has ",
                  a.hidden_size, " (weight must be [V, H])");
  MOGEN_CHECK_ARG(ids.size(0) == a.batch, "ids has batch size ", ids.size(0), " but hidden has ", a.batch);
  // Rows are read as runs of H elements; a size-1 dim's stride is never used.
  MOGEN_CHECK_ARG(a.hidden_size <= 1 || hidden.stride(1) == 1, "hidden must be contiguous in its last dim (any row ",
                  "stride is fine), got strides ", hidden.strides());
  MOGEN_CHECK_ARG(a.hidden_size <= 1 || weight.stride(1) == 1, "weight must be contiguous in its last dim, got ",
                  "strides ", weight.strides());

  a.hidden = hidden.data_ptr();
  a.hidden_row_stride = hidden.stride(0);
  a.hidden_dtype = to_dtype(hidden, "hidden");
  a.weight = weight.data_ptr();
  a.weight_row_stride = weight.stride(0);
  a.weight_dtype = to_dtype(weight, "weight");

  MOGEN_CHECK_TYPE(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, "ids must be int64 or int32, got ",
                   ids.scalar_type());
  a.ids = ids.data_ptr();
  a.ids_int64 = ids.scalar_type() == at::kLong;
  a.ids_row_stride = ids.stride(0);
  a.ids_col_stride = ids.stride(1);

  if (bias.has_value()) {
    const at::Tensor& bs = *bias;
    MOGEN_CHECK_ARG(bs.dim() == 1 && bs.size(0) == a.vocab, "bias must have shape [V] = [", a.vocab, "], got ",
                    bs.sizes());
    MOGEN_CHECK_ARG(bs.device() == device, "bias is on ", bs.device(), " but hidden is on ", device);
    a.bias = bs.data_ptr();
    a.bias_stride = bs.stride(0);
    a.bias_dtype = to_dtype(bs, "bias");
  }
  return a;
}

}  // namespace mogen
