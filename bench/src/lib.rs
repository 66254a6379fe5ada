//! Shared pieces of the benchmark binaries: latency statistics and JSON lines.
#![allow(clippy::print_stdout)] // benchmarks report on stdout

use std::time::Duration;

use serde_json::{Value, json};

/// Boxed error for benchmark plumbing.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Latencies of one scenario.
#[derive(Debug, Default)]
pub struct Samples {
    micros: Vec<u64>,
    /// Requests that failed.
    pub errors: u64,
}

impl Samples {
    /// Records one request's duration.
    pub fn record(&mut self, d: Duration) {
        self.micros.push(d.as_micros() as u64);
    }

    /// The `q` quantile (0..=1) in milliseconds (nearest rank).
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        self.micros.sort_unstable();
        let rank = ((q * self.micros.len() as f64).ceil() as usize).clamp(1, self.micros.len());
        self.micros[rank - 1] as f64 / 1000.0
    }

    /// Requests recorded.
    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The standard JSON line, with extra fields merged in.
    pub fn report(&mut self, scenario: &str, extra: Value) -> Value {
        let mut line = json!({
            "scenario": scenario,
            "p50_ms": round3(self.quantile_ms(0.50)),
            "p95_ms": round3(self.quantile_ms(0.95)),
            "p99_ms": round3(self.quantile_ms(0.99)),
            "requests": self.len() as u64 + self.errors,
            "errors": self.errors,
        });
        if let (Value::Object(line), Value::Object(extra)) = (&mut line, extra) {
            line.extend(extra);
        }
        println!("{line}");
        line
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The admin URL: `DATABASE_URL` (set by `scripts/bench` from `scripts/pg`).
pub fn admin_url() -> Result<String, Error> {
    std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set (run through scripts/bench)".into())
}

impl Samples {
    /// Adds another set of samples to this one.
    pub fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
    }
}
