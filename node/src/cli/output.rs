//! How the command line prints the admin API's answers: tables for people, `--json` for
//! scripts (the answer as it came).

use serde_json::Value;

/// Print `items` as a table of `columns` (header, JSON field); absent values show as `-`.
pub(crate) fn table(items: &[Value], columns: &[(&str, &str)]) {
    let cell = |v: &Value, field: &str| -> String {
        match &v[field] {
            Value::Null => "-".into(),
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        }
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| columns.iter().map(|(_, f)| cell(v, f)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|(h, _)| *h).collect());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub(crate) fn show(v: &Value, json: bool, columns: &[(&str, &str)]) {
    if json {
        println!("{v:#}");
        return;
    }
    match v["items"].as_array() {
        Some(items) => table(items, columns),
        None => table(std::slice::from_ref(v), columns),
    }
    if let Some(next) = v["next"].as_str() {
        println!("(more: --after {next})");
    }
}
