//! `metrics.csv`, written row by row as the run goes (a killed run keeps its rows), and
//! continued by a resumed run: the rows before the step it resumes at are kept, later ones
//! replaced.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One row of the metrics CSV.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub step: u64,
    pub epoch: usize,
    pub samples: usize,
    pub loss: f64,
    pub lr: f64,
    pub step_ms: f64,
    pub samples_per_s: f64,
    /// Test metric (accuracy or loss) when one was measured after this step.
    pub eval: Option<f64>,
    pub shares: String,
}

impl Row {
    fn to_csv(&self) -> String {
        let eval = self.eval.map(|v| format!("{v:.5}")).unwrap_or_default();
        format!(
            "{},{},{:.6},{:.3e},{:.3},{:.1},{eval},\"{}\"",
            self.step,
            self.epoch,
            self.loss,
            self.lr,
            self.step_ms,
            self.samples_per_s,
            self.shares
        )
    }

    /// A line [`Row::to_csv`] wrote; `None` for anything else.
    fn from_csv(line: &str) -> Option<Row> {
        let mut f = line.splitn(8, ',');
        let mut next = || f.next();
        let step = next()?.parse().ok()?;
        let epoch = next()?.parse().ok()?;
        let loss = next()?.parse().ok()?;
        let lr = next()?.parse().ok()?;
        let step_ms = next()?.parse().ok()?;
        let samples_per_s = next()?.parse().ok()?;
        let eval = match next()? {
            "" => None,
            v => Some(v.parse().ok()?),
        };
        let shares = next()?.trim_matches('"').to_string();
        Some(Row { step, epoch, samples: 0, loss, lr, step_ms, samples_per_s, eval, shares })
    }
}

pub struct Metrics {
    path: PathBuf,
    file: BufWriter<File>,
    /// Rows of the run this one resumed, before its first step.
    earlier: Vec<Row>,
    /// This run's rows, each written (and flushed) as it comes: a row is on disk before
    /// the checkpoint after its step is saved.
    rows: Vec<Row>,
}

impl Metrics {
    /// Starts `path` afresh, or, resuming at step `start`, keeps the rows it has before it.
    pub fn open(path: &Path, eval_name: &str, start: u64) -> Result<Metrics, String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let earlier = if start > 0 { earlier_rows(path, start) } else { Vec::new() };
        let mut file = BufWriter::new(File::create(path).map_err(err)?);
        writeln!(file, "step,epoch,loss,lr,step_ms,samples_per_s,{eval_name},shares")
            .map_err(err)?;
        for row in &earlier {
            writeln!(file, "{}", row.to_csv()).map_err(err)?;
        }
        file.flush().map_err(err)?;
        Ok(Metrics { path: path.to_path_buf(), file, earlier, rows: Vec::new() })
    }

    /// `out/metrics.csv` for the process that writes files (`leads`), `out` created;
    /// `None` for the others (MPI ranks but the first).
    pub fn for_run(
        leads: bool,
        out: &Path,
        eval_name: &str,
        start: u64,
    ) -> Result<Option<Metrics>, String> {
        if !leads {
            return Ok(None);
        }
        std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
        Metrics::open(&out.join("metrics.csv"), eval_name, start).map(Some)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a row and writes it.
    pub fn push(&mut self, row: Row) -> Result<(), String> {
        let err = |e: std::io::Error| format!("{}: {e}", self.path.display());
        writeln!(self.file, "{}", row.to_csv()).map_err(err)?;
        self.file.flush().map_err(err)?;
        self.rows.push(row);
        Ok(())
    }

    /// The resumed run's rows and this run's, in order: what the plot shows.
    pub fn all_rows(&self) -> Vec<Row> {
        self.earlier.iter().chain(&self.rows).cloned().collect()
    }
}

/// The rows of an earlier `metrics.csv` before step `start`, up to the first line that is
/// not one of ours (a file that was edited or cut short keeps what reads back).
fn earlier_rows(path: &Path, start: u64) -> Vec<Row> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let rows: Vec<Row> = text.lines().skip(1).map_while(Row::from_csv).collect();
    let kept: Vec<Row> = rows.into_iter().filter(|r| r.step < start).collect();
    if kept.len() as u64 != start {
        println!(
            "{}: {} of the {start} earlier steps' rows found; the curves show those",
            path.display(),
            kept.len()
        );
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_and_a_resumed_log_keeps_the_earlier_ones() {
        let row = |step| Row {
            step,
            epoch: 1,
            samples: 0,
            loss: 0.25,
            lr: 1e-3,
            step_ms: 1.5,
            samples_per_s: 1000.0,
            eval: (step % 2 == 0).then_some(0.5),
            shares: "cpu:0 64 (1.2 ms) | vulkan:0 16 (1.3 ms)".into(),
        };
        assert_eq!(Row::from_csv(&row(7).to_csv()), Some(row(7)));
        assert_eq!(Row::from_csv(&row(8).to_csv()), Some(row(8)));
        assert_eq!(Row::from_csv("step,epoch"), None);
        let dir = std::env::temp_dir().join(format!("manychips-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.csv");
        let mut first = Metrics::open(&path, "acc", 0).unwrap();
        for step in 0..6 {
            first.push(row(step)).unwrap();
        }
        drop(first);
        // Resumed at step 4: rows 0..4 stay, 4 and 5 are the new run's.
        let mut resumed = Metrics::open(&path, "acc", 4).unwrap();
        resumed.push(row(4)).unwrap();
        let steps: Vec<u64> = resumed.all_rows().iter().map(|r| r.step).collect();
        assert_eq!(steps, [0, 1, 2, 3, 4]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 6, "a header and five rows:\n{text}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
