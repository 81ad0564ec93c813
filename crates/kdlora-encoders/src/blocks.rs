//! Math shared by the BERT-family architectures: the attention mask bias and multi-head attention.

use burn::tensor::{Int, Tensor};
use kdlora_kernels::Dropout;
use kdlora_kernels::{matmul, softmax_with_bias, swap_middle_dims};
use kdlora_lora::LoraOps;

/// Added to the attention scores of padded keys. transformers uses the dtype's minimum; any value
/// far below the scores gives the same softmax (exactly zero weight), and a finite one keeps fully
/// padded rows free of NaN on every backend.
const MASKED: f32 = -1.0e9;

/// Additive attention bias `[batch, 1, 1, seq]` from a `[batch, seq]` mask of 1 (attend) / 0 (pad).
pub fn attention_bias<B: LoraOps>(attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 4> {
    let [batch, seq] = attention_mask.dims();
    let keep = attention_mask.float();
    keep.neg()
        .add_scalar(1.0)
        .mul_scalar(MASKED)
        .reshape([batch, 1, 1, seq])
}

/// Scaled dot-product attention over `n_heads` heads of projected `[batch, seq, hidden]` queries,
/// keys and values; returns the concatenated heads `[batch, seq, hidden]`.
pub fn multi_head_attention<B: LoraOps>(
    query: Tensor<B, 3>,
    key: Tensor<B, 3>,
    value: Tensor<B, 3>,
    bias: Tensor<B, 4>,
    n_heads: usize,
    dropout: &Dropout,
) -> Tensor<B, 3> {
    let [batch, seq, hidden] = query.dims();
    let head_dim = hidden / n_heads;
    // `swap_middle_dims` instead of Burn's `swap_dims`: the heads move in whole rows on every core,
    // where the strided view's later `reshape` (and the same in the backward) was an element-by-element
    // copy on one thread.
    let split = |x: Tensor<B, 3>| swap_middle_dims(x.reshape([batch, seq, n_heads, head_dim]));
    // Scaling the queries instead of the scores touches `head_dim / seq` as many elements, and the
    // mask bias is added inside the softmax pass: on the CPU both were full passes over the largest
    // tensor of the layer, the broadcast add a slow strided one. The queries are scaled while still
    // contiguous (a strided scalar op is another one-thread element loop).
    let q = split(query.div_scalar((head_dim as f64).sqrt()));
    let (k, v) = (split(key), split(value));
    let scores = matmul(q, k.swap_dims(2, 3));
    let probs = dropout.forward(softmax_with_bias(scores, bias));
    swap_middle_dims(matmul(probs, v)).reshape([batch, seq, hidden])
}

/// The hidden state of the first token (`[CLS]` / `<s>`) of every sequence: `[batch, hidden]`.
pub fn first_token<B: LoraOps>(hidden: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, _, width] = hidden.dims();
    hidden.narrow(1, 0, 1).reshape([batch, width])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    type B = NdArray<f32>;

    #[test]
    fn masked_keys_get_no_weight() {
        let device = burn::backend::ndarray::NdArrayDevice::default();
        // One head of width 1: scores are q*k; value = key index, so the output is the
        // attention-weighted index.
        let q = Tensor::<B, 3>::from_data(TensorData::new(vec![1.0f32; 3], [1, 3, 1]), &device);
        let k =
            Tensor::<B, 3>::from_data(TensorData::new(vec![0.0f32, 0.0, 5.0], [1, 3, 1]), &device);
        let v =
            Tensor::<B, 3>::from_data(TensorData::new(vec![0.0f32, 1.0, 2.0], [1, 3, 1]), &device);
        let mask =
            Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64, 1, 0], [1, 3]), &device);
        let dropout = Dropout::new(0.5);
        let out = multi_head_attention(q, k, v, attention_bias(mask), 1, &dropout);
        // Key 2 (score 5) is masked: the remaining two have equal scores, so the mean of 0 and 1.
        let values = out.into_data().into_vec::<f32>().unwrap();
        for value in values {
            assert!((value - 0.5).abs() < 1e-6, "{value}");
        }
    }
}
