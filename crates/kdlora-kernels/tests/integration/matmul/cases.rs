// Included once per CPU backend by `matmul.rs`, with `Cpu` naming the backend.

use burn::backend::Autodiff;
use burn::module::Param;
use burn::nn::LinearConfig;
use burn::tensor::{Distribution, Tensor};
use kdlora_kernels::{linear, matmul, swap_middle_dims};

type Ad = Autodiff<Cpu>;

fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn random<B: burn::tensor::backend::Backend, const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Uniform(-1.0, 1.0), &Default::default())
}

/// Row-major f64 product of `batch` pairs (`rhs_batch` 1 = one rhs for all) of `[m, k] x [k, n]`.
fn product64(
    lhs: &[f32],
    rhs: &[f32],
    batch: usize,
    rhs_batch: usize,
    [m, k, n]: [usize; 3],
) -> Vec<f64> {
    let mut out = vec![0.0; batch * m * n];
    for b in 0..batch {
        let rb = if rhs_batch == 1 { 0 } else { b };
        for i in 0..m {
            for j in 0..n {
                out[(b * m + i) * n + j] = (0..k)
                    .map(|p| lhs[(b * m + i) * k + p] as f64 * rhs[(rb * k + p) * n + j] as f64)
                    .sum();
            }
        }
    }
    out
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn paired_batches_match_f64_products() {
    let (a, b) = (random::<Cpu, 4>([2, 3, 5, 7]), random::<Cpu, 4>([2, 3, 7, 4]));
    let want = product64(&values(a.clone()), &values(b.clone()), 6, 6, [5, 7, 4]);
    assert_close(&values(matmul(a, b)), &want, 1e-5, "paired");
}

#[test]
fn a_shared_rhs_matches_f64_products() {
    let (a, w) = (random::<Cpu, 3>([3, 9, 6]), random::<Cpu, 3>([1, 6, 5]));
    let want = product64(&values(a.clone()), &values(w.clone()), 3, 1, [9, 6, 5]);
    assert_close(&values(matmul(a, w)), &want, 1e-5, "shared");
}

#[test]
fn a_shared_transposed_rhs_matches_f64_products() {
    // A linear's backward `dy @ W^T`: the weight as a transposed view, shared by 3 entries; 37 rows
    // of W^T so the copy's 16-row tasks end with a partial one.
    let a = random::<Cpu, 3>([3, 9, 37]);
    let w = random::<Cpu, 3>([1, 11, 37]).swap_dims(1, 2); // [1, 37, 11], column-major
    let want = product64(&values(a.clone()), &values(w.clone()), 3, 1, [9, 37, 11]);
    assert_close(&values(matmul(a, w)), &want, 1e-5, "shared transposed");
}

#[test]
fn strided_operands_use_their_logical_layout() {
    // Transposed and narrowed views, as attention's `k.swap_dims(2, 3)` and sliced inputs.
    let a = random::<Cpu, 4>([2, 7, 3, 5]).swap_dims(1, 2); // [2, 3, 7, 5], strided
    let b = random::<Cpu, 4>([2, 3, 6, 5]).swap_dims(2, 3); // [2, 3, 5, 6], transposed
    let c = random::<Cpu, 3>([4, 5, 9]).narrow(2, 2, 6); // [4, 5, 6], offset rows
    let want = product64(
        &values(a.clone()),
        &values(b.clone()),
        6,
        6,
        [7, 5, 6],
    );
    assert_close(&values(matmul(a.clone(), b.clone())), &want, 1e-5, "strided");
    let d = random::<Cpu, 3>([4, 6, 3]);
    let want = product64(&values(c.clone()), &values(d.clone()), 4, 4, [5, 6, 3]);
    assert_close(&values(matmul(c, d)), &want, 1e-5, "narrowed");
}

#[test]
fn a_lone_large_product_matches_burn() {
    // Above the size at which one product is split across threads.
    let (a, b) = (random::<Cpu, 2>([200, 210]), random::<Cpu, 2>([210, 190]));
    let want: Vec<f64> = values(a.clone().matmul(b.clone())).iter().map(|&v| v as f64).collect();
    assert_close(&values(matmul(a, b)), &want, 1e-5, "large");
}

#[test]
fn other_broadcasts_fall_back_to_burn() {
    // lhs broadcast over rhs's batch: not a shape the fast path takes.
    let (a, b) = (random::<Cpu, 3>([1, 4, 3]), random::<Cpu, 3>([2, 3, 5]));
    let want: Vec<f64> = values(a.clone().matmul(b.clone())).iter().map(|&v| v as f64).collect();
    let got = matmul(a, b);
    assert_eq!(got.dims(), [2, 4, 5]);
    assert_close(&values(got), &want, 1e-6, "fallback");
}

/// `(dA, dB)` of `Σ (A B) ⊙ G` by the closed forms, `rhs_batch` 1 summing dB over the batch.
fn closed_form_grads(
    a: &[f32],
    b: &[f32],
    g: &[f32],
    batch: usize,
    rhs_batch: usize,
    [m, k, n]: [usize; 3],
) -> (Vec<f64>, Vec<f64>) {
    let mut da = vec![0.0; batch * m * k];
    let mut db = vec![0.0; rhs_batch * k * n];
    for bi in 0..batch {
        let rb = if rhs_batch == 1 { 0 } else { bi };
        for i in 0..m {
            for p in 0..k {
                for j in 0..n {
                    let gv = g[(bi * m + i) * n + j] as f64;
                    da[(bi * m + i) * k + p] += gv * b[(rb * k + p) * n + j] as f64;
                    db[(rb * k + p) * n + j] += a[(bi * m + i) * k + p] as f64 * gv;
                }
            }
        }
    }
    (da, db)
}

#[test]
fn gradients_match_the_closed_forms() {
    for (rhs_batch, what) in [(3, "paired"), (1, "shared")] {
        let (a0, b0) = (random::<Cpu, 3>([3, 6, 5]), random::<Cpu, 3>([rhs_batch, 5, 4]));
        let g = random::<Cpu, 3>([3, 6, 4]);
        let a = Tensor::<Ad, 3>::from_inner(a0.clone()).require_grad();
        let b = Tensor::<Ad, 3>::from_inner(b0.clone()).require_grad();
        let loss = (matmul(a.clone(), b.clone()) * Tensor::from_inner(g.clone())).sum();
        let grads = loss.backward();
        let (da, db) = closed_form_grads(
            &values(a0),
            &values(b0),
            &values(g),
            3,
            rhs_batch,
            [6, 5, 4],
        );
        assert_close(&values(a.grad(&grads).unwrap()), &da, 1e-5, what);
        let got_db = b.grad(&grads).unwrap();
        assert_eq!(got_db.dims(), [rhs_batch, 5, 4], "{what}: dB keeps B's shape");
        assert_close(&values(got_db), &db, 1e-5, what);
    }
}

#[test]
fn a_frozen_operand_gets_no_gradient_and_the_other_is_unchanged() {
    let (a0, w0) = (random::<Cpu, 3>([2, 4, 3]), random::<Cpu, 3>([1, 3, 5]));
    let a = Tensor::<Ad, 3>::from_inner(a0.clone()).require_grad();
    let w = Tensor::<Ad, 3>::from_inner(w0.clone());
    let grads = matmul(a.clone(), w.clone()).sum().backward();
    assert!(w.grad(&grads).is_none());
    let ones = vec![1.0f32; 2 * 4 * 5];
    let (da, _) = closed_form_grads(&values(a0), &values(w0), &ones, 2, 1, [4, 3, 5]);
    assert_close(&values(a.grad(&grads).unwrap()), &da, 1e-5, "dA");
}

#[test]
fn linear_equals_nn_linear_forward_and_gradients() {
    let device = Default::default();
    let layer = LinearConfig::new(6, 4).init::<Ad>(&device);
    let x0 = random::<Cpu, 3>([2, 5, 6]);
    let g = Tensor::<Ad, 3>::from_inner(random::<Cpu, 3>([2, 5, 4]));

    let run = |ours: bool| {
        let weight = Param::from_tensor(layer.weight.val().detach().require_grad());
        let bias = Param::from_tensor(layer.bias.as_ref().unwrap().val().detach().require_grad());
        let x = Tensor::<Ad, 3>::from_inner(x0.clone()).require_grad();
        let y = if ours {
            linear(x.clone(), weight.val(), Some(bias.val()))
        } else {
            let mut l = layer.clone();
            l.weight = weight.clone();
            l.bias = Some(bias.clone());
            l.forward(x.clone())
        };
        let grads = (y.clone() * g.clone()).sum().backward();
        (
            values(y.inner()),
            values(x.grad(&grads).unwrap()),
            values(weight.val().grad(&grads).unwrap()),
            values(bias.val().grad(&grads).unwrap()),
        )
    };
    let (ours, burn) = (run(true), run(false));
    let as64 = |v: &Vec<f32>| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    assert_close(&ours.0, &as64(&burn.0), 1e-5, "y");
    assert_close(&ours.1, &as64(&burn.1), 1e-5, "dx");
    assert_close(&ours.2, &as64(&burn.2), 1e-5, "dW");
    assert_close(&ours.3, &as64(&burn.3), 1e-5, "db");
}

#[test]
fn linear_of_a_single_vector_is_the_one_row_product() {
    let device = Default::default();
    let x = Tensor::<Cpu, 1>::from_floats([1.0, 2.0, 3.0], &device);
    let w = Tensor::<Cpu, 2>::from_floats([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], &device);
    let b = Tensor::<Cpu, 1>::from_floats([0.5, -0.5], &device);
    let y = linear(x, w, Some(b));
    assert_eq!(y.dims(), [2]);
    assert_eq!(values(y), [4.5, 4.5]);
}

#[test]
fn swap_middle_dims_equals_swap_dims_forward_and_backward() {
    // Contiguous and strided inputs.
    for x0 in [random::<Cpu, 4>([2, 3, 4, 5]), random::<Cpu, 4>([2, 4, 3, 5]).swap_dims(1, 2)] {
        let want = values(x0.clone().swap_dims(1, 2));
        let got = swap_middle_dims(x0.clone());
        assert_eq!(got.dims(), [2, 4, 3, 5]);
        assert_eq!(values(got), want);

        let g = random::<Cpu, 4>([2, 4, 3, 5]);
        let x = Tensor::<Ad, 4>::from_inner(x0).require_grad();
        let grads = (swap_middle_dims(x.clone()) * Tensor::from_inner(g.clone()))
            .sum()
            .backward();
        assert_eq!(values(x.grad(&grads).unwrap()), values(g.swap_dims(1, 2)));
    }
}
