//! Flattening `[batch, class, *spatial]` to `[batch, class, pixels]` (and the gradient back):
//! burn's `reshape`, but on burn-ndarray (plain or under `Autodiff`), whose 0.21 `reshape`
//! copies the data every time (`to_shape(..).into_shared()`), where a contiguous array only
//! needs new dimensions over the same shared buffer. Not a kernel: every path of every loss
//! flattens its input and target this way.

use burn::tensor::{backend::Backend, Int, Tensor};

/// `t.reshape(shape)`, without burn-ndarray's copy where the data is contiguous.
pub(crate) fn reshape<B: Backend, const D: usize, const D2: usize>(
    t: Tensor<B, D>,
    shape: [usize; D2],
) -> Tensor<B, D2> {
    #[cfg(feature = "ndarray")]
    let t = match ndarray::zero_copy(t, shape) {
        Ok(out) => return out,
        Err(t) => t,
    };
    t.reshape(shape)
}

/// [`reshape`] for class indices.
pub(crate) fn reshape_int<B: Backend, const D: usize, const D2: usize>(
    t: Tensor<B, D, Int>,
    shape: [usize; D2],
) -> Tensor<B, D2, Int> {
    #[cfg(feature = "ndarray")]
    let t = match ndarray::zero_copy_int(t, shape) {
        Ok(out) => return out,
        Err(t) => t,
    };
    t.reshape(shape)
}

#[cfg(feature = "ndarray")]
mod ndarray {
    use burn::tensor::backend::Backend;
    use burn::tensor::ops::FloatTensorOps;
    use burn::tensor::{Int, Tensor, TensorMetadata, TensorPrimitive};
    use burn_autodiff::checkpoint::base::Checkpointer;
    use burn_autodiff::checkpoint::strategy::NoCheckpointing;
    use burn_autodiff::grads::Gradients;
    use burn_autodiff::ops::{Backward, Ops, OpsKind};
    use burn_autodiff::Autodiff;
    use burn_ndarray::{NdArray, NdArrayTensor};

    use crate::downcast::cast;

    /// burn-ndarray 0.21 copies the data on every reshape (`to_shape(..).into_shared()`); a
    /// contiguous array only needs new dimensions over the same shared buffer.
    fn ndarray_reshape(t: NdArrayTensor, shape: &[usize]) -> NdArrayTensor {
        macro_rules! zero_copy {
            ($($variant:ident),*) => {
                match t {
                    $(NdArrayTensor::$variant(s) => {
                        let array = s.into_shared();
                        if array.is_standard_layout() {
                            if let Ok(reshaped) = array.clone().into_shape_with_order(shape.to_vec()) {
                                return reshaped.into();
                            }
                        }
                        NdArray::<f32>::float_reshape(array.into(), shape.into())
                    })*
                    other => NdArray::<f32>::float_reshape(other, shape.into()),
                }
            };
        }
        zero_copy!(F32, I64, I32)
    }

    /// The autodiff reshape of [`ndarray_reshape`]: the gradient is reshaped back the same way.
    #[derive(Debug)]
    struct ReshapeBackward;

    impl Backward<NdArray<f32>, 1> for ReshapeBackward {
        type State = Vec<usize>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<NdArray<f32>>(&ops.node);
            let [parent] = ops.parents;
            if let Some(parent) = parent {
                grads.register::<NdArray<f32>>(parent.id, ndarray_reshape(grad, &ops.state));
            }
        }
    }

    /// `t.reshape(shape)` without burn-ndarray's copy, where `B` is `NdArray<f32>` (plain or under
    /// `Autodiff`); `Err(t)` for every other backend.
    pub(super) fn zero_copy<B: Backend, const D: usize, const D2: usize>(
        t: Tensor<B, D>,
        shape: [usize; D2],
    ) -> Result<Tensor<B, D2>, Tensor<B, D>> {
        type Nd = NdArray<f32>;
        type AdNd = Autodiff<Nd, NoCheckpointing>;
        let t = match cast::<Tensor<B, D>, Tensor<Nd, D>>(t) {
            Ok(t) => {
                let out = ndarray_reshape(t.into_primitive().tensor(), &shape);
                let out = Tensor::<Nd, D2>::from_primitive(TensorPrimitive::Float(out));
                return Ok(cast(out).expect("B is NdArray<f32>"));
            }
            Err(t) => t,
        };
        let t = match cast::<Tensor<B, D>, Tensor<AdNd, D>>(t) {
            Ok(t) => {
                let x = t.into_primitive().tensor();
                let original = x.primitive.shape().dims::<D>().to_vec();
                let out = ndarray_reshape(x.primitive.clone(), &shape);
                let out = match ReshapeBackward
                    .prepare::<NoCheckpointing>([x.node.clone()])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish(original, out),
                    OpsKind::UnTracked(prep) => prep.finish(out),
                };
                let out = Tensor::<AdNd, D2>::from_primitive(TensorPrimitive::Float(out));
                return Ok(cast(out).expect("B is Autodiff<NdArray<f32>>"));
            }
            Err(t) => t,
        };
        Err(t)
    }

    /// [`zero_copy`] for integer tensors (no autodiff node: integer tensors carry no gradient).
    pub(super) fn zero_copy_int<B: Backend, const D: usize, const D2: usize>(
        t: Tensor<B, D, Int>,
        shape: [usize; D2],
    ) -> Result<Tensor<B, D2, Int>, Tensor<B, D, Int>> {
        fn on<
            B: Backend,
            T: Backend<IntTensorPrimitive = NdArrayTensor>,
            const D: usize,
            const D2: usize,
        >(
            t: Tensor<B, D, Int>,
            shape: [usize; D2],
        ) -> Result<Tensor<B, D2, Int>, Tensor<B, D, Int>> {
            let t: Tensor<T, D, Int> = cast(t)?;
            let out =
                Tensor::<T, D2, Int>::from_primitive(ndarray_reshape(t.into_primitive(), &shape));
            Ok(cast(out).expect("same backend"))
        }
        on::<B, NdArray<f32>, D, D2>(t, shape)
            .or_else(|t| on::<B, Autodiff<NdArray<f32>, NoCheckpointing>, D, D2>(t, shape))
    }
}

#[cfg(all(test, feature = "ndarray", feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};
    use burn_autodiff::Autodiff;
    use burn_flex::Flex;
    use burn_ndarray::NdArray;

    type Ad = Autodiff<NdArray<f32>>;

    #[test]
    fn ndarray_reshape_matches_burns_with_gradients() {
        let device = Default::default();
        let base = Tensor::<Ad, 4>::random([2, 3, 4, 5], Distribution::Default, &device);
        let weights = Tensor::<Ad, 3>::random([2, 3, 20], Distribution::Default, &device);
        // Contiguous, and a permuted (non-contiguous) view that must fall back to a copy.
        for permuted in [false, true] {
            // Value and input gradient of `weights · reshape(x)`, one graph per call.
            let run = |ours: bool| {
                let x = base.clone().detach().require_grad();
                let input = if permuted {
                    x.clone().swap_dims(2, 3)
                } else {
                    x.clone()
                };
                let y = if ours {
                    ndarray::zero_copy(input, [2, 3, 20]).expect("ndarray handled")
                } else {
                    input.reshape([2, 3, 20])
                };
                let value = y.to_data();
                let grads = (y * weights.clone()).sum().backward();
                (value, x.grad(&grads).expect("tracked").to_data())
            };
            let ((v, g), (v_ref, g_ref)) = (run(true), run(false));
            v.assert_approx_eq::<f32>(&v_ref, Tolerance::absolute(0.0));
            g.assert_approx_eq::<f32>(&g_ref, Tolerance::absolute(0.0));
        }
        let labels = Tensor::<Ad, 1, Int>::arange(0..120, &device).reshape([2, 3, 4, 5]);
        let flat = ndarray::zero_copy_int(labels.clone(), [2, 3, 20]).expect("ndarray handled");
        assert_eq!(flat.to_data(), labels.reshape([2, 3, 20]).to_data());
        // Other backends are left to burn.
        let flex = Tensor::<Flex, 2>::zeros([2, 3], &Default::default());
        assert!(ndarray::zero_copy(flex, [6]).is_err());
    }
}
