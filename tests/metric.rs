//! The Dice metric against MONAI 1.5's `compute_dice` / `DiceMetric` (fixtures written by
//! `tests/fixtures/gen.py`): every `EmptyPolicy`, with and without the background, 2-D and 3-D,
//! the argmax and the threshold paths, exact to 1e-6.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_dice::metric::{DiceCounts, DiceMetric, DiceMetricInput, EmptyPolicy, Prediction};
use burn_dice_tests::{backend_tests, values};
use serde::Deserialize;

const FIXTURES: &str = include_str!("fixtures/dice_metric.json");

#[derive(Deserialize)]
struct File {
    cases: Vec<MetricCase>,
}

#[derive(Deserialize)]
struct MetricCase {
    name: String,
    shape: Vec<usize>,
    path: String,
    include_background: bool,
    empty: String,
    target_kind: String,
    input: Vec<f64>,
    target: Vec<f64>,
    scores: Vec<Option<f64>>,
    metric: Option<f64>,
    samples: usize,
}

fn counts<B: Backend, const D: usize>(case: &MetricCase, device: &B::Device) -> DiceCounts<B> {
    let logits = Tensor::<B, D>::from_data(
        TensorData::new(case.input.clone(), case.shape.clone()),
        device,
    );
    let classes = case.shape[1];
    let prediction = match case.path.as_str() {
        "argmax" => Prediction::Argmax,
        _ => Prediction::Threshold(0.5),
    };
    if case.target_kind == "index" {
        assert_eq!(
            prediction,
            Prediction::for_channels(classes),
            "{}",
            case.name
        );
    }
    let pred = prediction.apply(logits);
    if case.target_kind == "dense" {
        let t = Tensor::<B, D>::from_data(
            TensorData::new(case.target.clone(), case.shape.clone()),
            device,
        );
        DiceCounts::new(pred, t, classes, None)
    } else {
        let mut shape = case.shape.clone();
        shape[1] = 1;
        let labels: Vec<i64> = case.target.iter().map(|&v| v as i64).collect();
        let t = Tensor::<B, D, Int>::from_data(TensorData::new(labels, shape), device);
        DiceCounts::new(pred, t, classes, None)
    }
}

fn close(got: f64, want: Option<f64>) -> bool {
    match want {
        None => got.is_nan(),
        Some(w) => (got - w).abs() <= 1e-6,
    }
}

fn compute_dice_matches_monai<B: Backend>(device: &B::Device) {
    let file: File = serde_json::from_str(FIXTURES).expect("fixture JSON");
    assert!(file.cases.len() >= 30);
    let mut failures = Vec::new();
    for case in &file.cases {
        let counts = match case.shape.len() {
            4 => counts::<B, 4>(case, device),
            5 => counts::<B, 5>(case, device),
            r => panic!("rank {r}"),
        };
        let empty = match case.empty.as_str() {
            "NaN" => EmptyPolicy::NaN,
            "One" => EmptyPolicy::One,
            _ => EmptyPolicy::Zero,
        };
        // On the device.
        let scores = values(counts.clone().dice(case.include_background, empty));
        // On the host, as the metric computes them.
        let input = DiceMetricInput::from_counts(counts);
        let host: Vec<f64> = input
            .scores(case.include_background, empty)
            .into_iter()
            .flatten()
            .collect();
        for (k, want) in case.scores.iter().enumerate() {
            if !close(scores[k], *want) || !close(host[k], *want) {
                failures.push(format!(
                    "{}[{k}]: {} / {} vs {want:?}",
                    case.name, scores[k], host[k]
                ));
            }
        }
        let metric = DiceMetric::new()
            .with_include_background(case.include_background)
            .with_empty_policy(empty);
        let (value, samples) = metric.batch_value(&input);
        let ok = samples == case.samples
            && match case.metric {
                Some(m) => (value - m).abs() <= 1e-6,
                None => samples == 0,
            };
        if !ok {
            failures.push(format!(
                "{}: metric {value} over {samples} vs {:?} over {}",
                case.name, case.metric, case.samples
            ));
        }
    }
    println!(
        "{} MONAI compute_dice/DiceMetric fixtures",
        file.cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

backend_tests!(compute_dice_matches_monai);
