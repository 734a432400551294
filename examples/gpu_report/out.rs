//! The report as it grows: one JSON object (a key per section) and a text summary, both
//! rewritten after every section, so a run cut short still leaves what it measured.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Map, Value};

pub struct Out {
    json: Map<String, Value>,
    text: String,
    json_path: PathBuf,
    text_path: PathBuf,
    started: Instant,
    /// Seconds after which the sections that are left are skipped.
    budget_s: f64,
}

impl Out {
    pub fn new(dir: &Path, budget_s: f64) -> Result<Out, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Out {
            json: Map::new(),
            text: String::new(),
            json_path: dir.join("gpu-report.json"),
            text_path: dir.join("gpu-report.txt"),
            started: Instant::now(),
            budget_s,
        })
    }

    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Whether `section` may still start; when not, it is recorded as skipped.
    pub fn may_start(&mut self, section: &str) -> bool {
        if self.elapsed_s() < self.budget_s {
            return true;
        }
        let why = format!(
            "out of time: {:.0} s of the {:.0} s budget spent",
            self.elapsed_s(),
            self.budget_s
        );
        self.line(&format!("{section}: skipped, {why}"));
        self.set(section, serde_json::json!({ "skipped": why }));
        false
    }

    /// A line of the text summary, printed as it comes.
    pub fn line(&mut self, line: &str) {
        println!("{line}");
        self.text.push_str(line);
        self.text.push('\n');
    }

    pub fn heading(&mut self, title: &str) {
        self.line("");
        self.line(&format!("== {title} ({:.0} s)", self.elapsed_s()));
    }

    /// Sets a section's JSON and writes both files.
    pub fn set(&mut self, section: &str, value: Value) {
        self.json.insert(section.to_string(), value);
        self.save();
    }

    pub fn save(&mut self) {
        self.json.insert("elapsed_s".into(), Value::from(self.elapsed_s()));
        let json = serde_json::to_string_pretty(&self.json).unwrap_or_else(|e| format!("{e}"));
        for (path, body) in
            [(&self.json_path, json.as_str()), (&self.text_path, self.text.as_str())]
        {
            if let Err(e) = std::fs::write(path, body) {
                eprintln!("could not write {}: {e}", path.display());
            }
        }
    }

    pub fn paths(&self) -> [&Path; 2] {
        [&self.json_path, &self.text_path]
    }
}
