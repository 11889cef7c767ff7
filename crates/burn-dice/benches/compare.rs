//! Timings in the protocol of `shared/anchors/bench_dice.py` (median of `--runs` calls after
//! `--warmup` calls, forward without a tape, forward+backward with the input requiring a
//! gradient), the peak extra heap memory of one forward+backward (a counting global allocator:
//! bytes allocated beyond what was live before the call, the gradient included) and the minor
//! page faults per call, for every loss on `Autodiff<NdArray<f32>>` and `Autodiff<Flex>`, fused
//! and generic. `scripts/bench-ratios.sh` runs it next to the MONAI script and prints ratios.
//!
//! `cargo bench -p burn-dice --bench compare -- [--runs N] [--warmup N] [--json FILE]
//! [--losses all|dice|soft] [--backends ndarray,flex] [--paths fused|generic|both] [--cases abc]`

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use common::{forward, forward_backward, inputs, loss_fn, on_path, Case, Loss};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn minor_faults() -> u64 {
    // Field 10 of /proc/self/stat (after the parenthesised command name).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Args {
    runs: usize,
    warmup: usize,
    json: Option<String>,
    losses: Vec<Loss>,
    backends: Vec<String>,
    paths: Vec<bool>,
    cases: String,
}

fn args() -> Args {
    let mut a = Args {
        runs: 30,
        warmup: 5,
        json: None,
        losses: Loss::ALL.to_vec(),
        backends: vec!["ndarray".into(), "flex".into()],
        paths: vec![false, true],
        cases: "abc".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--warmup" => a.warmup = it.next().and_then(|v| v.parse().ok()).expect("--warmup N"),
            "--json" => a.json = it.next(),
            "--losses" => {
                a.losses = match it.next().as_deref() {
                    Some("all") => Loss::ALL.to_vec(),
                    Some("dice") => vec![Loss::Dice],
                    Some("soft") => vec![Loss::Dice, Loss::DiceSoftLabel],
                    other => panic!("--losses: expected all, dice or soft, got {other:?}"),
                }
            }
            "--backends" => {
                a.backends = it
                    .next()
                    .expect("--backends LIST")
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--cases" => a.cases = it.next().expect("--cases LETTERS (a, b, c)"),
            "--paths" => {
                a.paths = match it.next().as_deref() {
                    Some("fused") => vec![false],
                    Some("generic") => vec![true],
                    _ => vec![false, true],
                }
            }
            // cargo bench passes --bench; ignore it and anything unknown.
            _ => {}
        }
    }
    a
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Debug)]
struct Row {
    backend: String,
    case: Case,
    loss: Loss,
    path: &'static str,
    fwd_ms: f64,
    fwd_bwd_ms: f64,
    peak_extra_bytes: usize,
    faults_per_call: f64,
    loss_value: f32,
}

fn time(runs: usize, warmup: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..warmup {
        f();
    }
    let f0 = minor_faults();
    let times = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let faults = (minor_faults() - f0) as f64 / runs as f64;
    (median(times), faults)
}

fn case_on<B: AutodiffBackend, const D: usize>(
    backend: &str,
    case: Case,
    args: &Args,
    rows: &mut Vec<Row>,
) {
    if !args.cases.contains(case.short()) {
        return;
    }
    let device = Default::default();
    let data = inputs::<B, D>(case, &device);
    for &loss in &args.losses {
        let f = loss_fn::<B, D>(loss, case, &data.target, &device);
        for &generic in &args.paths {
            let mut value = 0.0;
            let (fwd_ms, _) = time(args.runs, args.warmup, || {
                on_path(generic, &mut || value = forward(&f, &data.logits))
            });
            let (fwd_bwd_ms, faults) = time(args.runs, args.warmup, || {
                on_path(generic, &mut || drop(forward_backward(&f, &data.logits)))
            });
            // Peak extra heap bytes of one forward+backward, the gradients included.
            let before = LIVE.load(Ordering::Relaxed);
            PEAK.store(before, Ordering::Relaxed);
            on_path(generic, &mut || drop(forward_backward(&f, &data.logits)));
            let peak = PEAK.load(Ordering::Relaxed) - before;
            let row = Row {
                backend: backend.into(),
                case,
                loss,
                path: if generic { "generic" } else { "fused" },
                fwd_ms,
                fwd_bwd_ms,
                peak_extra_bytes: peak,
                faults_per_call: faults,
                loss_value: value,
            };
            eprintln!(
                "{backend:8} {} {:20} {:7}  fwd {:8.3} ms  fwd+bwd {:8.3} ms  peak extra {:6.2}× logits  faults/call {:.0}",
                case.short(),
                loss.name(),
                row.path,
                fwd_ms,
                fwd_bwd_ms,
                peak as f64 / (4 * case.elements()) as f64,
                faults
            );
            rows.push(row);
        }
    }
}

fn on<B: AutodiffBackend>(backend: &str, args: &Args, rows: &mut Vec<Row>) {
    case_on::<B, 4>(backend, Case::SigmoidDense, args, rows);
    case_on::<B, 4>(backend, Case::SoftmaxIndices, args, rows);
    case_on::<B, 5>(backend, Case::SoftmaxIndices3d, args, rows);
}

fn main() {
    let args = args();
    println!(
        "instruction set of the CPU kernels: {} (BURN_DICE_ISA caps it)",
        burn_dice_core::cpu::instruction_set()
    );
    let mut rows = Vec::new();
    for backend in &args.backends {
        match backend.as_str() {
            "ndarray" => {
                on::<burn_autodiff::Autodiff<burn_ndarray::NdArray<f32>>>(backend, &args, &mut rows)
            }
            "flex" => on::<burn_autodiff::Autodiff<burn_flex::Flex>>(backend, &args, &mut rows),
            other => panic!("--backends: unknown backend {other:?} (ndarray, flex)"),
        }
    }
    println!("| backend | case | loss | path | fwd ms | fwd+bwd ms | peak extra (× logits) | faults/call |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.2} | {:.0} |",
            r.backend,
            r.case.name(),
            r.loss.name(),
            r.path,
            r.fwd_ms,
            r.fwd_bwd_ms,
            r.peak_extra_bytes as f64 / (4 * r.case.elements()) as f64,
            r.faults_per_call
        );
    }
    if let Some(path) = &args.json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "backend": r.backend,
                    "case": r.case.short(),
                    "loss": r.loss.name(),
                    "path": r.path,
                    "fwd_ms": r.fwd_ms,
                    "fwd_bwd_ms": r.fwd_bwd_ms,
                    "peak_extra_bytes": r.peak_extra_bytes,
                    "logits_bytes": 4 * r.case.elements(),
                    "faults_per_call": r.faults_per_call,
                    "loss_value": r.loss_value,
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&items).expect("plain values");
        std::fs::write(path, text).expect("--json: write");
        eprintln!("wrote {path}");
    }
}
