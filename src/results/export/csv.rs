//! `results.csv`: one line per run × stage × probe with every measured and derived value;
//! `layers.csv`: one line per run × insert stage with the capture at each layer and the
//! dedup potential per method; `snapshots.csv`: one line per run × stage × metric of what the
//! systems report about their storage.

use super::{Exporter, Report};

/// CSV of [`Report::rows`].
pub struct Csv;

impl Exporter for Csv {
    fn file_name(&self) -> &'static str {
        "results.csv"
    }

    fn render(&self, report: &Report) -> anyhow::Result<Vec<u8>> {
        serialize(&report.rows)
    }
}

/// CSV of [`Report::snapshots`].
pub struct Snapshots;

impl Exporter for Snapshots {
    fn file_name(&self) -> &'static str {
        "snapshots.csv"
    }

    fn render(&self, report: &Report) -> anyhow::Result<Vec<u8>> {
        serialize(&report.snapshots)
    }
}

/// One line per item, the header from its fields.
fn serialize(items: &[impl serde::Serialize]) -> anyhow::Result<Vec<u8>> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    for r in items {
        w.serialize(r)?;
    }
    Ok(w.into_inner()?)
}

/// CSV of [`Report::layers`]; the potential of each method is a column of its own.
pub struct Layers;

impl Exporter for Layers {
    fn file_name(&self) -> &'static str {
        "layers.csv"
    }

    fn render(&self, report: &Report) -> anyhow::Result<Vec<u8>> {
        let methods: std::collections::BTreeSet<&String> = report
            .layers
            .iter()
            .flat_map(|r| r.potential.keys().chain(r.dataset_potential.keys()))
            .collect();
        let mut w = ::csv::Writer::from_writer(Vec::new());
        let mut header: Vec<String> = [
            "system",
            "payload",
            "grade",
            "run",
            "stage",
            "logical_bytes",
            "unique_bytes",
            "capture_system",
            "capture_storage",
            "capture_storage_dedupe",
        ]
        .map(String::from)
        .into();
        header.extend(methods.iter().map(|m| format!("potential_{m}")));
        header.extend(methods.iter().map(|m| format!("dataset_potential_{m}")));
        w.write_record(&header)?;
        let num = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        for r in &report.layers {
            let mut line = vec![
                r.system.clone(),
                r.payload.clone(),
                r.grade.to_string(),
                r.run.to_string(),
                r.stage.to_string(),
                r.logical_bytes.to_string(),
                r.unique_bytes.to_string(),
                num(r.capture_system),
                num(r.capture_storage),
                num(r.capture_storage_dedupe),
            ];
            line.extend(methods.iter().map(|m| num(r.potential.get(*m).copied())));
            line.extend(
                methods
                    .iter()
                    .map(|m| num(r.dataset_potential.get(*m).copied())),
            );
            w.write_record(&line)?;
        }
        Ok(w.into_inner()?)
    }
}
