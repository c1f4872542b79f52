//! The mock's JSONL log of accepted job ids: written by one task through a buffer, read back
//! by `mailfleet report` and the tests.

use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

pub(super) async fn write_log(
    file: tokio::fs::File,
    mut rx: mpsc::UnboundedReceiver<String>,
) -> std::io::Result<()> {
    let mut w = tokio::io::BufWriter::new(file);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            line = rx.recv() => match line {
                Some(l) => { w.write_all(l.as_bytes()).await?; w.write_all(b"\n").await?; }
                None => break,
            },
            _ = tick.tick() => w.flush().await?,
        }
    }
    w.flush().await
}

/// Read a mock log: how many times each job id was accepted.
pub fn read_log(path: &std::path::Path) -> std::io::Result<HashMap<String, u32>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if let Some(id) = v["id"].as_str() {
            *out.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    Ok(out)
}
