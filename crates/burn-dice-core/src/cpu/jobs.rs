//! How a kernel's work is cut and run: jobs of one sample and a run of pixels (walked in blocks
//! of [`BLOCK`]), run in parallel on large problems with the calling thread taking part, each
//! writing its own disjoint runs of the output.

use super::common::{Problem, BLOCK};

/// Pixels per job (per thread task).
pub(super) const JOB: usize = 16 * 1024;
/// Below this many input elements everything runs on the calling thread.
pub(super) const PARALLEL_MIN: usize = 64 * 1024;

/// Jobs: `(sample, first pixel, pixel count)`.
pub(super) type Job = (usize, usize, usize);

/// The jobs of a problem, sample by sample.
pub(super) fn jobs(problem: &Problem) -> Vec<Job> {
    let mut out = Vec::new();
    for b in 0..problem.batch {
        let mut n0 = 0;
        while n0 < problem.pixels {
            let len = JOB.min(problem.pixels - n0);
            out.push((b, n0, len));
            n0 += len;
        }
    }
    out
}

/// The blocks of the job of pixels `start..start + count`: `(first pixel, pixel count, offset
/// in the job)`, [`BLOCK`] pixels each but the last.
#[inline(always)]
pub(super) fn blocks(start: usize, count: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (start..start + count)
        .step_by(BLOCK)
        .map(move |n0| (n0, BLOCK.min(start + count - n0), n0 - start))
}

pub(super) fn parallel(problem: &Problem) -> bool {
    problem.x.len() >= PARALLEL_MIN
}

/// `buf` (`[batch, class, pixels]`) cut along the jobs: for each job of `jobs`, in order, its
/// run of pixels in each class row of its sample. The pieces are disjoint, so the jobs can
/// write them in parallel.
pub(super) fn job_rows<'a, T>(
    problem: &Problem,
    jobs: &[Job],
    buf: &'a mut [T],
) -> Vec<Vec<&'a mut [T]>> {
    let (c_count, n) = (problem.classes, problem.pixels);
    // Every (sample, class) row cut into its jobs' runs, each list reversed to pop in order.
    let mut per_row: Vec<Vec<&mut [T]>> = buf
        .chunks_mut(n)
        .map(|row| {
            let mut parts: Vec<&mut [T]> = row.chunks_mut(JOB).collect();
            parts.reverse();
            parts
        })
        .collect();
    jobs.iter()
        .map(|&(b, _, _)| {
            (0..c_count)
                .map(|c| {
                    per_row[b * c_count + c]
                        .pop()
                        .expect("one run per job and row")
                })
                .collect()
        })
        .collect()
}

/// Runs `job` for each job with its rows of the output, in parallel on large problems.
///
/// The calling thread takes part: it and `threads − 1` tasks spawned on rayon's pool pull jobs
/// from a shared counter until none are left. (A rayon parallel iterator would leave the
/// calling thread asleep until the pool is done, and wake it afterwards: tens of
/// microseconds on a sub-millisecond loss.)
pub(super) fn run_jobs<T: Send, R: Send>(
    problem: &Problem,
    jobs: &[Job],
    rows: &mut [Vec<&mut [T]>],
    job: impl Fn(Job, &mut [&mut [T]]) -> R + Sync,
) -> Vec<R> {
    if !parallel(problem) {
        return jobs
            .iter()
            .zip(rows.iter_mut())
            .map(|(&j, out)| job(j, out))
            .collect();
    }
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    // One slot per job: its rows, then its result. Each is locked once, by the thread that
    // claimed the job.
    type Slot<'r, 'a, T, R> = Mutex<(&'r mut Vec<&'a mut [T]>, Option<R>)>;
    let slots: Vec<Slot<T, R>> = rows.iter_mut().map(|r| Mutex::new((r, None))).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(&j) = jobs.get(i) else { break };
        let mut slot = slots[i].lock().expect("a job slot is locked once");
        let result = job(j, slot.0);
        slot.1 = Some(result);
    };
    let helpers = rayon::current_num_threads()
        .saturating_sub(1)
        .min(jobs.len());
    rayon::in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| work());
        }
        work();
    });
    slots
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .expect("no job panicked")
                .1
                .expect("every job ran")
        })
        .collect()
}
