//! Checkpoints that are never half-written: each file is written under a temporary name,
//! read back in full, and only then renamed to `model-N.mpk` / `optim-N.mpk` /
//! `scheduler-N.mpk`; `--resume` takes the last epoch whose three files are all there.

use std::path::{Path, PathBuf};

use burn::record::{CompactRecorder, FileRecorder, Recorder, RecorderError};
use burn::tensor::backend::Backend;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;

/// The three files burn-train writes per checkpoint (model, optimizer, learning-rate scheduler).
pub const PARTS: [&str; 3] = ["model", "optim", "scheduler"];

/// A [`FileRecorder`] that writes through `R` to a temporary file, checks that it reads back,
/// and renames it into place: a process killed while saving leaves the previous checkpoints
/// and at most a `*-partial.*` file, never a truncated checkpoint under a checkpoint's name.
#[derive(Debug, Default, Clone)]
pub struct AtomicRecorder<R = CompactRecorder>(pub R);

impl<B: Backend, R: FileRecorder<B>> Recorder<B> for AtomicRecorder<R> {
    type Settings = R::Settings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, path: PathBuf) -> Result<(), RecorderError> {
        let ext = <R as FileRecorder<B>>::file_extension();
        let target = path.with_extension(ext);
        let mut partial = path.clone();
        partial.set_file_name(format!(
            "{}-partial",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let written = partial.with_extension(ext);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            let _ = std::fs::remove_file(&written);
            RecorderError::Unknown(format!("cannot {what} {}: {e}", target.display()))
        };
        self.0
            .save_item(item, partial.clone())
            .map_err(|e| fail("write", &e))?;
        // A short write (a full disk, say) can pass unnoticed when the writer is dropped:
        // decode the whole file before it takes the checkpoint's name.
        self.0
            .load_item::<IgnoredAny>(&mut partial.clone())
            .map_err(|e| fail("read back", &e))?;
        std::fs::rename(&written, &target).map_err(|e| fail("rename into", &e))
    }

    fn load_item<I: DeserializeOwned>(&self, path: &mut PathBuf) -> Result<I, RecorderError> {
        self.0.load_item(path)
    }
}

impl<B: Backend, R: FileRecorder<B>> FileRecorder<B> for AtomicRecorder<R> {
    fn file_extension() -> &'static str {
        R::file_extension()
    }
}

/// The last epoch with a complete checkpoint (all of [`PARTS`]) in `out/checkpoint`, if any.
pub fn last_checkpoint(out: &Path) -> Option<usize> {
    let dir = out.join("checkpoint");
    let ext = <CompactRecorder as FileRecorder<burn_flex::Flex>>::file_extension();
    std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("model-")?
                .strip_suffix(&format!(".{ext}"))?
                .parse::<usize>()
                .ok()
        })
        .filter(|epoch| {
            PARTS
                .iter()
                .all(|part| dir.join(format!("{part}-{epoch}.{ext}")).is_file())
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::LinearConfig;
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};

    type B = burn_flex::Flex;

    #[test]
    fn saves_under_the_final_name_only_when_complete() {
        let dir = std::env::temp_dir().join(format!("unet-ckpt-{}", std::process::id()));
        let ckpt = dir.join("checkpoint");
        std::fs::create_dir_all(&ckpt).unwrap();
        let model = LinearConfig::new(3, 2).init::<B>(&Default::default());
        // Parameters are initialized lazily: once, before the clones below.
        let _ = model.weight.val();
        // Full precision, so that what loads back is bit for bit what was saved.
        let recorder = AtomicRecorder(NamedMpkFileRecorder::<FullPrecisionSettings>::new());
        for part in PARTS {
            Recorder::<B>::record(
                &recorder,
                model.clone().into_record(),
                ckpt.join(format!("{part}-1")),
            )
            .unwrap();
        }
        // Epoch 2 died after the model file: not complete, so not resumed from.
        Recorder::<B>::record(&recorder, model.clone().into_record(), ckpt.join("model-2"))
            .unwrap();
        std::fs::write(ckpt.join("optim-2-partial.mpk"), b"half").unwrap();
        assert_eq!(last_checkpoint(&dir), Some(1));
        let names: Vec<String> = std::fs::read_dir(&ckpt)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(names.contains(&"model-1.mpk".to_string()), "{names:?}");
        // What was saved loads back.
        let loaded = model
            .clone()
            .load_file(ckpt.join("model-1"), &recorder, &Default::default())
            .unwrap();
        assert_eq!(loaded.weight.val().to_data(), model.weight.val().to_data());
        // A write that cannot happen (a folder that is a file) names the checkpoint.
        let file = dir.join("a-file");
        std::fs::write(&file, b"").unwrap();
        let err = Recorder::<B>::record(
            &recorder,
            LinearConfig::new(3, 2)
                .init::<B>(&Default::default())
                .into_record(),
            file.join("model-3"),
        )
        .unwrap_err();
        assert!(format!("{err:?}").contains("model-3.mpk"), "{err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_checkpoint_folder_means_none() {
        assert_eq!(last_checkpoint(Path::new("/nonexistent-run")), None);
    }
}
