//! The CPU kernels alone, without burn: forward, and forward (storing the probabilities) plus
//! backward, on the three cases of `shared/anchors/bench_dice.py` (a: sigmoid, dense target,
//! [8,1,256,256]; b: softmax, class indices, [8,4,128,128]; c: the same in 3-D,
//! [2,4,64,64,64]), for the statistics alone (`DiceLoss`), with `soft_label`, with the
//! cross-entropy term (`DiceCELoss`) and with the focal term (`DiceFocalLoss`, γ = 2). The
//! median of `--runs` calls after `--warmup`, at the instruction set `BURN_DICE_ISA` caps
//! (printed first), and the two halves of forward+backward apart: the forward that stores the
//! probabilities, and the backward alone (from a copy of them, made before its timer starts).
//! It builds in seconds, so that a kernel change can be timed at every level before the
//! burn-level `compare` benchmark of burn-dice.
//!
//! `cargo bench -p burn-dice-core --features cpu --bench kernels -- [--runs N] [--warmup N]
//! [--cases abc] [--json FILE]`

use std::time::Instant;

use burn_dice_core::cpu::{
    backward_stored, forward, forward_storing, instruction_set, CeProblem, FocalProblem, Labels,
    Problem, Target, Term,
};
use burn_dice_core::{Activation, Terms};

/// A reproducible stream of uniform values in `[0, 1)` (SplitMix64).
struct Stream(u64);

impl Stream {
    fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A standard normal value (Box-Muller).
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-7), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

struct Case {
    name: &'static str,
    dims: [usize; 3],
    activation: Activation,
}

const CASES: [Case; 3] = [
    Case {
        name: "a",
        dims: [8, 1, 256 * 256],
        activation: Activation::Sigmoid,
    },
    Case {
        name: "b",
        dims: [8, 4, 128 * 128],
        activation: Activation::Softmax,
    },
    Case {
        name: "c",
        dims: [2, 4, 64 * 64 * 64],
        activation: Activation::Softmax,
    },
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(runs: usize, warmup: usize, mut f: impl FnMut()) -> f64 {
    time_after(runs, warmup, &mut (), |_| {}, |_| f())
}

/// The median ms of `f(state)` over `runs` calls (after `warmup`), each after an untimed
/// `setup(state)`.
fn time_after<T>(
    runs: usize,
    warmup: usize,
    state: &mut T,
    mut setup: impl FnMut(&mut T),
    mut f: impl FnMut(&mut T),
) -> f64 {
    for _ in 0..warmup {
        setup(state);
        f(state);
    }
    median(
        (0..runs)
            .map(|_| {
                setup(state);
                let t = Instant::now();
                f(state);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn main() {
    let (mut runs, mut warmup, mut cases, mut json) = (30, 5, "abc".to_string(), None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--warmup" => {
                warmup = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--warmup N")
            }
            "--cases" => cases = args.next().expect("--cases LETTERS"),
            "--json" => json = args.next(),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    println!("instruction set: {}", instruction_set());
    println!("| case | loss | fwd ms | fwd+bwd ms | fwd storing ms | bwd ms |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for case in CASES.iter().filter(|c| cases.contains(c.name)) {
        let [batch, classes, pixels] = case.dims;
        let mut stream = Stream(1234);
        let x: Vec<f32> = (0..batch * classes * pixels)
            .map(|_| stream.normal())
            .collect();
        let dense: Vec<f32>;
        let labels: Vec<i64>;
        let target = if classes == 1 {
            dense = (0..x.len())
                .map(|_| (stream.uniform() < 0.5) as u8 as f32)
                .collect();
            Target::Dense(&dense)
        } else {
            labels = (0..batch * pixels)
                .map(|_| (stream.uniform() * classes as f32) as i64)
                .collect();
            Target::Indices(Labels::I64(&labels))
        };
        let base = Problem {
            x: &x,
            target,
            valid: None,
            batch,
            classes,
            pixels,
            activation: case.activation,
            terms: Terms::Linear,
        };
        let soft = Problem {
            terms: Terms::SoftL1,
            ..base
        };
        let losses: [(&str, Problem, Term); 4] = [
            ("DiceLoss", base, Term::None),
            ("soft_label", soft, Term::None),
            (
                "DiceCELoss",
                base,
                Term::Ce(CeProblem {
                    base,
                    class_weight: None,
                    pos_weight: 1.0,
                    label_smoothing: 0.0,
                }),
            ),
            (
                "DiceFocalLoss",
                base,
                Term::Focal(FocalProblem {
                    base,
                    gamma: 2.0,
                    alpha: None,
                }),
            ),
        ];
        for (name, problem, term) in losses {
            let grad: Vec<f32> = (0..(3 + term.rows()) * batch * classes)
                .map(|i| ((i % 7) as f32 - 3.0) * 0.1)
                .collect();
            let fwd = time(runs, warmup, || {
                std::hint::black_box(forward(&problem, &term));
            });
            let fwd_bwd = time(runs, warmup, || {
                let (sums, mut probs) = forward_storing(&problem, &term);
                std::hint::black_box(sums);
                backward_stored(&problem, &term, &grad, &mut probs);
                std::hint::black_box(probs);
            });
            // The two halves of `fwd_bwd` apart: the forward that stores the probabilities
            // (it writes the input's size more than `fwd`), and the backward alone, from a
            // copy of them made before its timer starts.
            let fwd_storing = time(runs, warmup, || {
                std::hint::black_box(forward_storing(&problem, &term));
            });
            let (_, stored) = forward_storing(&problem, &term);
            let mut probs = stored.clone();
            let bwd = time_after(
                runs,
                warmup,
                &mut probs,
                |probs| probs.copy_from_slice(&stored),
                |probs| backward_stored(&problem, &term, &grad, probs),
            );
            println!(
                "| {} | {name} | {fwd:.3} | {fwd_bwd:.3} | {fwd_storing:.3} | {bwd:.3} |",
                case.name
            );
            rows.push(format!(
                "{{\"isa\":\"{}\",\"case\":\"{}\",\"loss\":\"{name}\",\"fwd_ms\":{fwd},\"fwd_bwd_ms\":{fwd_bwd},\"fwd_storing_ms\":{fwd_storing},\"bwd_ms\":{bwd}}}",
                instruction_set(),
                case.name
            ));
        }
    }
    if let Some(path) = json {
        std::fs::write(&path, format!("[{}]\n", rows.join(",\n"))).expect("--json FILE writable");
    }
}
