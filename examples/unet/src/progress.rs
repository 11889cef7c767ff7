//! What a run shows and keeps as it goes: burn's dashboard in a terminal (one plain line per
//! epoch otherwise), and after every epoch `metrics.csv` and `curves.png`, each written to a
//! temporary file and renamed, so that a run stopped at any point (even by SIGKILL) leaves
//! complete files holding every finished epoch exactly once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::{Interrupter, LearnerSummary};

use crate::plot;
use crate::training::EpochRow;

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename: readers
/// see the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let partial = partial_path(path);
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            format!("cannot write {}: {e}", path.display())
        })
}

/// `dir/name.ext` → `dir/name.partial.ext`.
pub fn partial_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    match path.extension() {
        Some(ext) => path.with_file_name(format!("{stem}.partial.{}", ext.to_string_lossy())),
        None => path.with_file_name(format!("{stem}.partial")),
    }
}

/// The per-epoch record of a run: `metrics.csv` and `curves.png` in the output folder.
#[derive(Debug)]
pub struct RunLog {
    out: PathBuf,
    class_names: Vec<String>,
    rows: Vec<EpochRow>,
}

impl RunLog {
    /// The log of a run writing to `out`. A fresh run (`resumed_after` `None`) starts empty; a
    /// resumed one keeps the rows of `metrics.csv` up to its checkpoint's epoch (the later
    /// ones are trained again).
    pub fn start(
        out: &Path,
        class_names: &[String],
        resumed_after: Option<usize>,
    ) -> Result<Self, String> {
        let path = out.join("metrics.csv");
        let rows = match resumed_after {
            None => Vec::new(),
            Some(epoch) => match std::fs::read_to_string(&path) {
                Ok(text) => parse_csv(&text, class_names.len())
                    .map_err(|e| format!("--resume: {}: {e}", path.display()))?
                    .into_iter()
                    .filter(|r| r.epoch <= epoch)
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(format!("--resume: cannot read {}: {e}", path.display())),
            },
        };
        let log = Self {
            out: out.to_path_buf(),
            class_names: class_names.to_vec(),
            rows,
        };
        log.write()?;
        Ok(log)
    }

    /// Every epoch so far, in order.
    pub fn rows(&self) -> &[EpochRow] {
        &self.rows
    }

    /// Adds (or replaces) the row of `row.epoch` and rewrites `metrics.csv` and `curves.png`.
    pub fn record(&mut self, row: EpochRow) -> Result<(), String> {
        self.rows.retain(|r| r.epoch != row.epoch);
        self.rows.push(row);
        self.rows.sort_by_key(|r| r.epoch);
        self.write()
    }

    fn write(&self) -> Result<(), String> {
        write_atomic(
            &self.out.join("metrics.csv"),
            csv(&self.rows, &self.class_names).as_bytes(),
        )?;
        let curves = self.out.join("curves.png");
        let partial = partial_path(&curves);
        plot::curves(&partial, &self.rows, &self.class_names)?;
        std::fs::rename(&partial, &curves)
            .map_err(|e| format!("cannot write {}: {e}", curves.display()))
    }
}

/// `metrics.csv`: one row per epoch, the foreground classes' Dice as the last columns.
pub fn csv(rows: &[EpochRow], class_names: &[String]) -> String {
    let mut text = String::from("epoch,train_loss,valid_loss,valid_dice");
    for name in &class_names[1..] {
        text.push_str(&format!(",valid_dice_{}", name.replace([' ', ','], "_")));
    }
    text.push('\n');
    for r in rows {
        text.push_str(&format!(
            "{},{:.6},{:.6},{:.6}",
            r.epoch, r.train_loss, r.valid_loss, r.valid_dice
        ));
        for d in &r.valid_dice_per_class {
            text.push_str(&format!(",{d:.6}"));
        }
        text.push('\n');
    }
    text
}

/// Reads `metrics.csv` back (`classes` counts the background).
pub fn parse_csv(text: &str, classes: usize) -> Result<Vec<EpochRow>, String> {
    let columns = 4 + classes.saturating_sub(1);
    text.lines()
        .enumerate()
        .skip(1)
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(k, line)| {
            let fields: Vec<&str> = line.split(',').collect();
            if fields.len() != columns {
                return Err(format!(
                    "line {}: {} fields, expected {columns}",
                    k + 1,
                    fields.len()
                ));
            }
            let num = |i: usize| {
                fields[i]
                    .trim()
                    .parse::<f64>()
                    .map_err(|e| format!("line {}, field {}: {e}", k + 1, i + 1))
            };
            Ok(EpochRow {
                epoch: fields[0]
                    .trim()
                    .parse()
                    .map_err(|e| format!("line {}, epoch: {e}", k + 1))?,
                train_loss: num(1)?,
                valid_loss: num(2)?,
                valid_dice: num(3)?,
                valid_dice_per_class: (4..columns).map(num).collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

/// Renders the run (burn's dashboard, or plain lines) and records each finished epoch in the
/// [`RunLog`]. A failure to write the log stops the training through `interrupter`, with the
/// message (`Interrupter::get_message`).
pub struct EpochRenderer {
    inner: Option<Box<dyn MetricsRenderer>>,
    names: HashMap<MetricId, String>,
    class_names: Vec<String>,
    sums: HashMap<(bool, String), (f64, usize)>,
    started: Instant,
    log: Arc<Mutex<RunLog>>,
    interrupter: Interrupter,
}

impl EpochRenderer {
    /// Plain lines when `dashboard` is `None`, else forwards everything to it as well.
    pub fn new(
        dashboard: Option<Box<dyn MetricsRenderer>>,
        log: Arc<Mutex<RunLog>>,
        interrupter: Interrupter,
    ) -> Self {
        let class_names = log.lock().expect("run log").class_names.clone();
        Self {
            inner: dashboard,
            names: HashMap::new(),
            class_names,
            sums: HashMap::new(),
            started: Instant::now(),
            log,
            interrupter,
        }
    }

    fn record(&mut self, valid: bool, state: &MetricState) {
        if let MetricState::Numeric(
            entry,
            NumericEntry::Aggregated {
                aggregated_value,
                count,
            },
        ) = state
        {
            let name = self
                .names
                .get(&entry.metric_id)
                .cloned()
                .unwrap_or_default();
            let slot = self.sums.entry((valid, name)).or_insert((0.0, 0));
            if *count > 0 {
                slot.0 += aggregated_value * *count as f64;
                slot.1 += count;
            }
        }
    }

    fn mean(&self, valid: bool, name: &str) -> Option<f64> {
        let (s, n) = self.sums.get(&(valid, name.to_string()))?;
        (*n > 0).then(|| s / *n as f64)
    }

    /// The finished epoch's row (NaN for a metric that saw no batch).
    fn row(&self, epoch: usize) -> EpochRow {
        let m = |valid, name: &str| self.mean(valid, name).unwrap_or(f64::NAN);
        EpochRow {
            epoch,
            train_loss: m(false, "Loss"),
            valid_loss: m(true, "Loss"),
            valid_dice: m(true, "Dice"),
            valid_dice_per_class: (1..self.class_names.len())
                .map(|c| m(true, &format!("Dice[class {c}]")))
                .collect(),
        }
    }

    fn line(&self, row: &EpochRow, total: usize) -> String {
        let f = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else {
                format!("{v:.4}")
            }
        };
        let mut line = format!(
            "epoch {}/{total}  train loss {}  valid loss {}  Dice {}",
            row.epoch,
            f(row.train_loss),
            f(row.valid_loss),
            f(row.valid_dice),
        );
        let per_class: Vec<String> = row
            .valid_dice_per_class
            .iter()
            .zip(&self.class_names[1..])
            .map(|(d, name)| format!("{name} {}", f(*d)))
            .collect();
        if !per_class.is_empty() {
            line.push_str(&format!("  [{}]", per_class.join(", ")));
        }
        line.push_str(&format!(
            "  ({:.0} s)",
            self.started.elapsed().as_secs_f64()
        ));
        line
    }

    /// The end of an epoch's validation: the row goes to the log, the sums start again.
    fn epoch_done(&mut self, epoch: usize, total: usize) {
        let row = self.row(epoch);
        if self.inner.is_none() {
            println!("{}", self.line(&row, total));
        }
        self.sums.clear();
        let written = self.log.lock().expect("run log").record(row);
        if let Err(e) = written {
            self.interrupter.stop(Some(&e));
        }
    }
}

impl MetricsRendererTraining for EpochRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(false, &state);
        if let Some(inner) = &mut self.inner {
            inner.update_train(state);
        }
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(true, &state);
        if let Some(inner) = &mut self.inner {
            inner.update_valid(state);
        }
    }

    fn render_train(&mut self, item: TrainingProgress, indicators: Vec<ProgressType>) {
        if let Some(inner) = &mut self.inner {
            inner.render_train(item, indicators);
        }
    }

    fn render_valid(&mut self, item: TrainingProgress, indicators: Vec<ProgressType>) {
        let done = item
            .progress
            .as_ref()
            .is_some_and(|p| p.items_processed == p.items_total);
        let (epoch, total) = (
            item.global_progress.items_processed,
            item.global_progress.items_total,
        );
        if let Some(inner) = &mut self.inner {
            inner.render_valid(item, indicators);
        }
        if done {
            self.epoch_done(epoch, total);
        }
    }

    fn on_train_end(
        &mut self,
        summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        match &mut self.inner {
            Some(inner) => inner.on_train_end(summary),
            None => {
                if let Some(summary) = summary {
                    println!("{summary}");
                }
                Ok(())
            }
        }
    }
}

impl MetricsRendererEvaluation for EpochRenderer {
    fn update_test(&mut self, name: EvaluationName, state: MetricState) {
        if let Some(inner) = &mut self.inner {
            inner.update_test(name, state);
        }
    }

    fn render_test(&mut self, item: EvaluationProgress, indicators: Vec<ProgressType>) {
        if let Some(inner) = &mut self.inner {
            inner.render_test(item, indicators);
        }
    }
}

impl MetricsRenderer for EpochRenderer {
    fn manual_close(&mut self) {
        if let Some(inner) = &mut self.inner {
            inner.manual_close();
        }
    }

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id.clone(), definition.name.clone());
        if let Some(inner) = &mut self.inner {
            inner.register_metric(definition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: usize, v: f64) -> EpochRow {
        EpochRow {
            epoch,
            train_loss: v,
            valid_loss: v + 0.5,
            valid_dice: 1.0 - v,
            valid_dice_per_class: vec![f64::NAN, 0.25],
        }
    }

    #[test]
    fn csv_round_trips_and_keeps_each_epoch_once() {
        let names: Vec<String> = ["bg", "a", "b c"].map(String::from).to_vec();
        let rows = vec![row(1, 0.5), row(2, 0.25)];
        let text = csv(&rows, &names);
        assert!(text
            .starts_with("epoch,train_loss,valid_loss,valid_dice,valid_dice_a,valid_dice_b_c\n"));
        let back = parse_csv(&text, 3).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!((back[1].epoch, back[1].train_loss), (2, 0.25));
        assert!(back[0].valid_dice_per_class[0].is_nan());
        assert!(parse_csv("h\n1,2,3\n", 3).unwrap_err().contains("line 2"));

        let dir = std::env::temp_dir().join(format!("unet-runlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = RunLog::start(&dir, &names, None).unwrap();
        for r in [row(1, 0.5), row(2, 0.4), row(2, 0.3), row(3, 0.2)] {
            log.record(r).unwrap();
        }
        let on_disk = parse_csv(
            &std::fs::read_to_string(dir.join("metrics.csv")).unwrap(),
            3,
        );
        let epochs: Vec<usize> = on_disk.unwrap().iter().map(|r| r.epoch).collect();
        assert_eq!(epochs, [1, 2, 3]);
        assert!(dir.join("curves.png").exists());
        // Resumed after epoch 2: epoch 3 is trained again, so its row goes.
        let log = RunLog::start(&dir, &names, Some(2)).unwrap();
        assert_eq!(
            log.rows().iter().map(|r| r.epoch).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(log.rows()[1].train_loss, 0.3);
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(names.iter().all(|n| !n.contains("partial")), "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_atomic_names_the_path_when_it_cannot_write() {
        let err = write_atomic(Path::new("/nonexistent-dir/metrics.csv"), b"x").unwrap_err();
        assert!(err.contains("/nonexistent-dir/metrics.csv"), "{err}");
    }
}
