//! `LoraOps` for the CPU backend: the trait's defaults, i.e. the plain-tensor [`crate::reference`].

use burn::backend::{
    NdArray,
    ndarray::{FloatNdArrayElement, IntNdArrayElement, NdArrayTensor, QuantElement, SharedArray},
};

use crate::LoraOps;

impl<E, I, Q> LoraOps for NdArray<E, I, Q>
where
    E: FloatNdArrayElement,
    I: IntNdArrayElement,
    Q: QuantElement,
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
}
