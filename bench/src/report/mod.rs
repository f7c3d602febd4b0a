//! What a benchmark run reports: repeated runs per target, summarized as median and range, with
//! Palisade's ratio to each baseline; written as a terminal/Markdown table, JSON, and SVG
//! latency charts.
//!
//! **The invalid-run rule**: a run with any error or non-2xx answer ([`Run::invalid`] set) is
//! never a number. One invalid run makes its whole cell invalid (shown with the reason, and
//! no ratio is computed from it), so a figure is always the median of runs that all succeeded.

use serde::Serialize;

use crate::load::Outcome;

mod svg;

pub use svg::latency_svg;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub value: f64,
    /// Why this run cannot count (errors, non-2xx answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

impl Run {
    pub fn valid(value: f64) -> Run {
        Run {
            value,
            invalid: None,
        }
    }

    /// `value`, invalid for `problem` if there is one (an outside generator's run).
    pub fn checked(value: f64, problem: Option<String>) -> Run {
        Run {
            value,
            invalid: problem,
        }
    }

    /// `value` taken from `load`'s outcome: invalid when it had errors or non-2xx answers.
    pub fn of(value: f64, load: &Outcome) -> Run {
        Run {
            value,
            invalid: load.problem(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Summary {
    Valid {
        median: f64,
        min: f64,
        max: f64,
        runs: usize,
    },
    Invalid {
        reason: String,
    },
}

/// One target's runs of one figure.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub target: String,
    pub summary: Summary,
    pub runs: Vec<Run>,
}

impl Cell {
    pub fn new(target: &str, runs: Vec<Run>) -> Cell {
        let summary = if runs.is_empty() {
            Summary::Invalid {
                reason: "not measured".into(),
            }
        } else if let Some((i, r)) = runs.iter().enumerate().find(|(_, r)| r.invalid.is_some()) {
            Summary::Invalid {
                reason: format!(
                    "run {} of {}: {}",
                    i + 1,
                    runs.len(),
                    r.invalid.as_deref().unwrap_or("")
                ),
            }
        } else {
            let mut v: Vec<f64> = runs.iter().map(|r| r.value).collect();
            v.sort_by(f64::total_cmp);
            Summary::Valid {
                median: median(&v),
                min: v[0],
                max: v[v.len() - 1],
                runs: v.len(),
            }
        };
        Cell {
            target: target.to_string(),
            summary,
            runs,
        }
    }

    pub fn median(&self) -> Option<f64> {
        match self.summary {
            Summary::Valid { median, .. } => Some(median),
            Summary::Invalid { .. } => None,
        }
    }
}

/// The median of sorted values (the mean of the middle two for an even count).
pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// One figure for every target of a section; `cells[0]` is Palisade (or the feature-off
/// baseline in `features`), the others what it is divided by.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub figure: String,
    pub unit: String,
    pub better: Better,
    pub cells: Vec<Cell>,
}

impl Row {
    pub fn new(figure: &str, unit: &str, better: Better) -> Row {
        Row {
            figure: figure.to_string(),
            unit: unit.to_string(),
            better,
            cells: Vec::new(),
        }
    }

    pub fn cell(mut self, target: &str, runs: Vec<Run>) -> Row {
        self.cells.push(Cell::new(target, runs));
        self
    }

    /// `cells[0]`'s median divided by `cells[i]`'s; none if either is invalid.
    pub fn ratio(&self, i: usize) -> Option<f64> {
        let a = self.cells.first()?.median()?;
        let b = self.cells.get(i)?.median()?;
        (b != 0.0).then(|| a / b)
    }
}

/// A ratio column of a section: which cells it divides, and its heading.
#[derive(Debug, Clone, Serialize)]
pub struct RatioColumn {
    pub heading: String,
    /// Index of the divisor cell in every row.
    pub divisor: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub scenario: String,
    pub title: String,
    /// How it was measured, one paragraph.
    pub method: String,
    /// Column headings, one per cell of every row.
    pub targets: Vec<String>,
    pub ratios: Vec<RatioColumn>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// SVG files written next to the report.
    pub charts: Vec<String>,
}

impl Section {
    /// A section whose first target is divided by each of the others.
    pub fn new(scenario: &str, title: &str, method: &str, targets: &[&str]) -> Section {
        let ratios = targets
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, t)| RatioColumn {
                heading: format!("{} ÷ {}", targets[0], t),
                divisor: i,
            })
            .collect();
        Section {
            scenario: scenario.to_string(),
            title: title.to_string(),
            method: method.to_string(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            ratios,
            rows: Vec::new(),
            notes: Vec::new(),
            charts: Vec::new(),
        }
    }

    /// Every row's cells must follow `targets`; a row that does not is a harness bug.
    pub fn push(&mut self, row: Row) {
        assert_eq!(
            row.cells
                .iter()
                .map(|c| c.target.as_str())
                .collect::<Vec<_>>(),
            self.targets.iter().map(String::as_str).collect::<Vec<_>>(),
            "row {:?} of {}",
            row.figure,
            self.scenario
        );
        self.rows.push(row);
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "### `{}`: {}\n\n{}\n\n",
            self.scenario, self.title, self.method
        );
        s.push_str("| figure |");
        for t in &self.targets {
            s.push_str(&format!(" {t} |"));
        }
        for r in &self.ratios {
            s.push_str(&format!(" {} |", r.heading));
        }
        s.push_str("\n|---|");
        for _ in 0..self.targets.len() + self.ratios.len() {
            s.push_str("---:|");
        }
        s.push('\n');
        for row in &self.rows {
            let better = match row.better {
                Better::Higher => "higher is better",
                Better::Lower => "lower is better",
            };
            s.push_str(&format!("| {} ({}; {}) |", row.figure, row.unit, better));
            for c in &row.cells {
                s.push_str(&format!(" {} |", cell_text(c)));
            }
            for r in &self.ratios {
                match row.ratio(r.divisor) {
                    Some(x) => s.push_str(&format!(" {x:.2}x |")),
                    None => s.push_str(" – |"),
                }
            }
            s.push('\n');
        }
        for n in &self.notes {
            s.push_str(&format!("\n{n}\n"));
        }
        for c in &self.charts {
            s.push_str(&format!("\n![{c}]({c})\n"));
        }
        s
    }
}

fn cell_text(c: &Cell) -> String {
    match &c.summary {
        Summary::Valid {
            median,
            min,
            max,
            runs,
        } if *runs > 1 => {
            format!("{} ({}–{})", num(*median), num(*min), num(*max))
        }
        Summary::Valid { median, .. } => num(*median),
        Summary::Invalid { reason } => format!("invalid: {}", reason.replace('|', "/")),
    }
}

/// A figure to three significant digits or so, with thousands separators.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        let whole = v.round() as i64;
        let digits = whole.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        if whole < 0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
    pub os: String,
}

impl Machine {
    pub fn here() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        let os = read("/etc/os-release");
        Machine {
            cores: crate::cpu::cores(),
            memory_gib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1024.0 / 1024.0),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
                .unwrap_or_default(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os: os
                .lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_default(),
        }
    }
}

/// A program measured or used: its name, path and version line.
#[derive(Debug, Clone, Serialize)]
pub struct Program {
    pub name: String,
    pub path: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line of this run.
    pub invocation: String,
    pub started_unix: u64,
    pub quick: bool,
    pub machine: Machine,
    pub programs: Vec<Program>,
    /// Every process the run started, with its arguments, and the configuration files it wrote.
    pub commands: Vec<String>,
    pub sections: Vec<Section>,
}

impl Report {
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = format!(
            "## palisade-bench results\n\n`{}`{}\n\nMachine: {} cores, {:.1} GiB, {}; {}, Linux {}.\n\n",
            self.invocation,
            if self.quick { " (quick mode)" } else { "" },
            m.cores,
            m.memory_gib,
            m.cpu_model,
            m.os,
            m.kernel
        );
        s.push_str("| program | version | path |\n|---|---|---|\n");
        for p in &self.programs {
            s.push_str(&format!("| {} | {} | `{}` |\n", p.name, p.version, p.path));
        }
        s.push_str("\nEach cell: median of the runs (range min–max). A cell with any failed request says \"invalid\" and gives no number.\n\n");
        for sec in &self.sections {
            s.push_str(&sec.markdown());
            s.push('\n');
        }
        s
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a report is plain data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ok: u64, non_2xx: u64, errors: u64) -> Outcome {
        Outcome {
            ok,
            non_2xx,
            errors,
            first_problem: (non_2xx + errors > 0).then(|| "answer 502".to_string()),
            seconds: 1.0,
            latency_us: vec![100; ok as usize],
        }
    }

    fn report() -> Report {
        let mut sec = Section::new(
            "proxy-http",
            "plain HTTP",
            "closed loop",
            &["Palisade", "nginx", "HAProxy"],
        );
        sec.push(
            Row::new("requests/s", "req/s", Better::Higher)
                .cell(
                    "Palisade",
                    [900.0, 1000.0, 1100.0, 950.0, 1050.0]
                        .iter()
                        .map(|v| Run::of(*v, &outcome(10, 0, 0)))
                        .collect(),
                )
                .cell(
                    "nginx",
                    [2000.0, 2000.0, 1900.0, 2100.0, 2000.0]
                        .iter()
                        .map(|v| Run::of(*v, &outcome(10, 0, 0)))
                        .collect(),
                )
                .cell(
                    "HAProxy",
                    vec![
                        Run::of(1900.0, &outcome(10, 0, 0)),
                        Run::of(1800.0, &outcome(10, 2, 0)),
                        Run::of(1800.0, &outcome(10, 0, 0)),
                    ],
                ),
        );
        sec.charts.push("proxy-http-latency-50.svg".into());
        Report {
            invocation: "palisade-bench proxy-http --quick".into(),
            started_unix: 0,
            quick: true,
            machine: Machine::here(),
            programs: vec![Program {
                name: "nginx".into(),
                path: "/usr/sbin/nginx".into(),
                version: "1.22.1".into(),
            }],
            commands: vec!["taskset -c 0 nginx -p /tmp/x -c nginx.conf".into()],
            sections: vec![sec],
        }
    }

    #[test]
    fn a_run_with_errors_or_non_2xx_answers_is_invalid_and_never_a_number() {
        assert!(Run::of(5.0, &outcome(10, 0, 0)).invalid.is_none());
        let bad = Run::of(5.0, &outcome(10, 1, 0));
        assert!(
            bad.invalid.as_deref().unwrap().contains("1 non-2xx"),
            "{bad:?}"
        );
        let err = Run::of(5.0, &outcome(10, 0, 3));
        assert!(
            err.invalid.as_deref().unwrap().contains("3 errors"),
            "{err:?}"
        );
        assert!(
            Run::of(0.0, &outcome(0, 0, 0)).invalid.is_some(),
            "nothing completed"
        );

        let r = report();
        let row = &r.sections[0].rows[0];
        // Palisade's five runs: median 1000, range 900-1100; nginx median 2000.
        match row.cells[0].summary {
            Summary::Valid {
                median,
                min,
                max,
                runs,
            } => {
                assert_eq!((median, min, max, runs), (1000.0, 900.0, 1100.0, 5))
            }
            ref s => panic!("{s:?}"),
        }
        assert_eq!(row.ratio(1), Some(0.5));
        // One HAProxy run had two 502s: the whole cell is invalid, with no ratio.
        assert!(matches!(
            &row.cells[2].summary,
            Summary::Invalid { reason } if reason.starts_with("run 2 of 3:") && reason.contains("answer 502")
        ));
        assert_eq!(row.cells[2].median(), None);
        assert_eq!(row.ratio(2), None);
        assert!(
            Cell::new("x", vec![]).median().is_none(),
            "no runs is no number"
        );
    }

    #[test]
    fn the_report_has_its_table_machine_programs_commands_and_charts() {
        let r = report();
        let md = r.markdown();
        assert!(
            md.contains(
                "| figure | Palisade | nginx | HAProxy | Palisade ÷ nginx | Palisade ÷ HAProxy |"
            ),
            "{md}"
        );
        assert!(md.contains(
            "| requests/s (req/s; higher is better) | 1,000 (900–1,100) | 2,000 (1,900–2,100) | invalid: run 2 of 3: "
        ), "{md}");
        assert!(
            md.trim_end().lines().any(|l| l.ends_with("| 0.50x | – |")),
            "{md}"
        );
        assert!(md.contains("![proxy-http-latency-50.svg](proxy-http-latency-50.svg)"));
        assert!(md.contains("| nginx | 1.22.1 | `/usr/sbin/nginx` |"));

        let j = r.json();
        assert!(j["machine"]["cores"].as_u64().unwrap() >= 1);
        assert!(j["machine"]["memory_gib"].as_f64().unwrap() > 0.0);
        assert!(j["machine"]["cpu_model"].is_string());
        assert_eq!(j["programs"][0]["version"], "1.22.1");
        assert_eq!(
            j["commands"][0],
            "taskset -c 0 nginx -p /tmp/x -c nginx.conf"
        );
        let row = &j["sections"][0]["rows"][0];
        assert_eq!(row["better"], "higher");
        assert_eq!(row["cells"][0]["summary"]["state"], "valid");
        assert_eq!(row["cells"][0]["summary"]["median"], 1000.0);
        assert_eq!(row["cells"][0]["runs"].as_array().unwrap().len(), 5);
        let bad = &row["cells"][2];
        assert_eq!(bad["summary"]["state"], "invalid");
        assert!(
            bad["summary"].get("median").is_none(),
            "an invalid cell has no number"
        );
        assert!(bad["runs"][1]["invalid"]
            .as_str()
            .unwrap()
            .contains("non-2xx"));
        assert!(bad["runs"][0].get("invalid").is_none());
        assert_eq!(
            j["sections"][0]["ratios"][1]["heading"],
            "Palisade ÷ HAProxy"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(12345.4), "12,345");
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(num(512.3), "512");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(1.234), "1.23");
        assert_eq!(num(0.1234), "0.123");
        assert_eq!(num(0.0), "0");
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
    }
}
