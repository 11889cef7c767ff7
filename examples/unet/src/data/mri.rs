//! `mri`: real data. The Colin27 T1 brain MRI shipped by Debian's `mricron-data` package (BSD
//! licensed): `ch2.nii.gz` (the head), `ch2bet.nii.gz` (skull-stripped: brain mask =
//! `ch2bet > 0`) and the hand-drawn AAL atlas `aal.nii.gz` (116 regions), all on one 181×217×181
//! 1 mm grid. Axial slices are padded to a square and resized.
//!
//! Tasks:
//! - `brain`: brain extraction, background / brain.
//! - `regions`: AAL grouped into background, left cerebrum (odd AAL labels 1–89), right
//!   cerebrum (even labels 2–90) and cerebellum with vermis (labels 91–116); brain tissue
//!   outside the atlas counts as background.
//!
//! Validation is a held-out contiguous block of slices (60–75 % up the brain, with 2 slices on
//! each side left out of both splits), never random slices: neighbouring slices are nearly
//! identical and would leak.

use std::path::{Path, PathBuf};

use nifti::{NiftiObject, NiftiVolume, RandomAccessNiftiVolume, ReaderOptions};

use super::{resize_image, resize_mask, Sample, SegmentationData, Splits};

/// Where `mricron-data` puts its templates.
pub const DEFAULT_DIR: &str = "/usr/share/mricron/templates";

/// Which labels to learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MriTask {
    /// Background / brain.
    Brain,
    /// Background / left cerebrum / right cerebrum / cerebellum.
    Regions,
}

/// The Colin27 slices.
#[derive(Debug, Clone)]
pub struct Mri {
    /// Folder holding `ch2.nii.gz`, `ch2bet.nii.gz`, `aal.nii.gz`.
    pub dir: PathBuf,
    /// The task.
    pub task: MriTask,
    /// Output side in pixels.
    pub size: usize,
}

impl SegmentationData for Mri {
    fn name(&self) -> String {
        format!(
            "mri {:?} (Colin27 axial slices, {}×{})",
            self.task, self.size, self.size
        )
    }

    fn class_names(&self) -> Vec<String> {
        match self.task {
            MriTask::Brain => vec!["background".into(), "brain".into()],
            MriTask::Regions => [
                "background",
                "left cerebrum",
                "right cerebrum",
                "cerebellum",
            ]
            .map(String::from)
            .to_vec(),
        }
    }

    fn augment_by_default(&self) -> bool {
        true
    }

    fn load(&self) -> Result<Splits, String> {
        let t1 = read(&self.dir.join("ch2.nii.gz"))?;
        let bet = read(&self.dir.join("ch2bet.nii.gz"))?;
        let aal = match self.task {
            MriTask::Regions => Some(read(&self.dir.join("aal.nii.gz"))?),
            MriTask::Brain => None,
        };
        if bet.dims != t1.dims || aal.as_ref().is_some_and(|a| a.dims != t1.dims) {
            return Err("mri: the volumes are not on one grid".into());
        }
        let [nx, ny, nz] = t1.dims;
        // Intensity scale: the 99.5th percentile of the head.
        let mut sorted: Vec<f32> = t1.data.iter().copied().filter(|v| *v > 0.0).collect();
        sorted.sort_by(f32::total_cmp);
        let scale = sorted[(sorted.len() as f64 * 0.995) as usize].max(1e-6);
        let side = nx.max(ny);
        let brain_slices: Vec<usize> = (0..nz)
            .filter(|&z| {
                (0..nx * ny)
                    .filter(|&p| bet.data[z * nx * ny + p] > 0.0)
                    .count()
                    > 200
            })
            .collect();
        let (first, last) = (brain_slices[0], *brain_slices.last().expect("brain slices"));
        let span = (last - first) as f32;
        let valid_lo = first + (0.60 * span) as usize;
        let valid_hi = first + (0.75 * span) as usize;
        let mut splits = Splits {
            train: Vec::new(),
            valid: Vec::new(),
        };
        for &z in &brain_slices {
            let in_valid = (valid_lo..=valid_hi).contains(&z);
            let gap = (valid_lo.saturating_sub(2)..valid_lo).contains(&z)
                || (valid_hi + 1..=valid_hi + 2).contains(&z);
            if gap {
                continue;
            }
            let mut image = vec![0.0f32; side * side];
            let mut mask = vec![0i64; side * side];
            let (oy, ox) = ((side - ny) / 2, (side - nx) / 2);
            for y in 0..ny {
                for x in 0..nx {
                    let v = z * nx * ny + y * nx + x;
                    // Rows from anterior (top) to posterior: flip y for a conventional view.
                    let p = (oy + (ny - 1 - y)) * side + ox + x;
                    image[p] = (t1.data[v] / scale).min(1.2);
                    mask[p] = match &aal {
                        None => i64::from(bet.data[v] > 0.0),
                        Some(aal) => region(aal.data[v] as i64),
                    };
                }
            }
            let sample = Sample {
                image: resize_image(&image, side, side, self.size, self.size),
                mask: resize_mask(&mask, side, side, self.size, self.size),
                height: self.size,
                width: self.size,
            };
            if in_valid {
                splits.valid.push(sample);
            } else {
                splits.train.push(sample);
            }
        }
        Ok(splits)
    }
}

/// AAL label → grouped class.
fn region(label: i64) -> i64 {
    match label {
        1..=90 if label % 2 == 1 => 1,
        1..=90 => 2,
        91..=116 => 3,
        _ => 0,
    }
}

struct Volume {
    dims: [usize; 3],
    /// x fastest, then y, then z.
    data: Vec<f32>,
}

fn read(path: &Path) -> Result<Volume, String> {
    if !path.exists() {
        return Err(format!(
            "mri: {} not found. The Colin27 templates come with Debian's `mricron-data` \
             package: `sudo apt-get install mricron-data` (or pass --mri-dir to a folder \
             holding ch2.nii.gz, ch2bet.nii.gz and aal.nii.gz)",
            path.display()
        ));
    }
    let obj = ReaderOptions::new()
        .read_file(path)
        .map_err(|e| format!("mri: cannot read {}: {e}", path.display()))?;
    let volume = obj.volume();
    let d = volume.dim();
    if d.len() < 3 {
        return Err(format!("mri: {} is not a 3-D volume", path.display()));
    }
    let dims = [d[0] as usize, d[1] as usize, d[2] as usize];
    let mut data = Vec::with_capacity(dims.iter().product());
    for z in 0..d[2] {
        for y in 0..d[1] {
            for x in 0..d[0] {
                data.push(
                    volume
                        .get_f32(&[x, y, z])
                        .map_err(|e| format!("mri: {}: {e}", path.display()))?,
                );
            }
        }
    }
    Ok(Volume { dims, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aal_grouping() {
        assert_eq!(
            (region(0), region(1), region(2), region(89), region(90)),
            (0, 1, 2, 1, 2)
        );
        assert_eq!((region(91), region(116), region(117)), (3, 3, 0));
    }

    #[test]
    fn missing_files_name_the_package() {
        let m = Mri {
            dir: "/nonexistent".into(),
            task: MriTask::Brain,
            size: 64,
        };
        let err = m.load().unwrap_err();
        assert!(err.contains("apt-get install mricron-data"), "{err}");
    }
}
