//! Server metrics, rendered in the Prometheus text exposition format at `GET /metrics`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Latency bucket bounds in seconds, shared by every histogram.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// How far back the tokens-per-second gauge looks.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(5);

/// A cumulative histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in nanoseconds, so it can be an integer atomic.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Everything `/metrics` reports. Shared by the HTTP layer and the engine thread.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Time from a sequence's arrival to its first generated token.
    pub time_to_first_token: Histogram,
    /// Time between consecutive tokens of a sequence.
    pub inter_token_latency: Histogram,
    /// Time a sequence waited before it was admitted to the running batch.
    pub queue_time: Histogram,
    /// Time a whole request took, from arrival to its last byte handed to the connection.
    pub request_duration: Histogram,
    running: AtomicU64,
    waiting: AtomicU64,
    kv_used: AtomicU64,
    kv_capacity: AtomicU64,
    generated_tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    recent_tokens: Mutex<VecDeque<(Instant, u64)>>,
}

impl Metrics {
    /// Counts a finished request of `endpoint` answered with `status`.
    pub fn count_request(&self, endpoint: &'static str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((endpoint, status))
            .or_default() += 1;
    }

    /// Sets the gauges the engine owns, after each step.
    pub fn set_engine_state(
        &self,
        running: usize,
        waiting: usize,
        kv_used: usize,
        kv_capacity: usize,
    ) {
        self.running.store(running as u64, Ordering::Relaxed);
        self.waiting.store(waiting as u64, Ordering::Relaxed);
        self.kv_used.store(kv_used as u64, Ordering::Relaxed);
        self.kv_capacity
            .store(kv_capacity as u64, Ordering::Relaxed);
    }

    /// Counts tokens processed by one engine step.
    pub fn count_tokens(&self, prompt: usize, generated: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
        let now = Instant::now();
        let mut recent = self.recent_tokens.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_back((now, generated as u64));
        while recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > THROUGHPUT_WINDOW)
        {
            recent.pop_front();
        }
    }

    /// Generated tokens per second over the last few seconds.
    fn tokens_per_second(&self) -> f64 {
        let recent = self.recent_tokens.lock().unwrap_or_else(|e| e.into_inner());
        match recent.front() {
            Some((first, _)) if first.elapsed() > Duration::ZERO => {
                let total: u64 = recent.iter().map(|(_, n)| n).sum();
                total as f64 / first.elapsed().as_secs_f64().max(1.0)
            }
            _ => 0.0,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP mxserve_requests_total HTTP requests answered, by endpoint and status code.\n# TYPE mxserve_requests_total counter\n");
        for ((endpoint, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "mxserve_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        self.time_to_first_token.render(
            &mut out,
            "mxserve_time_to_first_token_seconds",
            "Time from a sequence's arrival to its first generated token.",
        );
        self.inter_token_latency.render(
            &mut out,
            "mxserve_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a sequence.",
        );
        self.queue_time.render(
            &mut out,
            "mxserve_queue_time_seconds",
            "Time a sequence waited before joining the running batch.",
        );
        self.request_duration.render(
            &mut out,
            "mxserve_request_duration_seconds",
            "Time from a generation request's arrival to its end.",
        );
        let gauges: [(&str, &str, f64); 5] = [
            (
                "mxserve_running_sequences",
                "Sequences in the running batch.",
                self.running.load(Ordering::Relaxed) as f64,
            ),
            (
                "mxserve_waiting_sequences",
                "Sequences waiting for admission.",
                self.waiting.load(Ordering::Relaxed) as f64,
            ),
            (
                "mxserve_kv_cache_used_tokens",
                "Tokens held in the KV cache.",
                self.kv_used.load(Ordering::Relaxed) as f64,
            ),
            (
                "mxserve_kv_cache_capacity_tokens",
                "Tokens the KV cache can hold.",
                self.kv_capacity.load(Ordering::Relaxed) as f64,
            ),
            (
                "mxserve_generation_tokens_per_second",
                "Generated tokens per second over the last 5 s.",
                self.tokens_per_second(),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let counters = [
            (
                "mxserve_prompt_tokens_total",
                "Prompt tokens prefilled.",
                &self.prompt_tokens,
            ),
            (
                "mxserve_generated_tokens_total",
                "Tokens generated.",
                &self.generated_tokens,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_sum_matches() {
        let h = Histogram::default();
        let samples = [0.0005, 0.003, 0.003, 0.7, 200.0];
        for s in samples {
            h.observe(Duration::from_secs_f64(s));
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        for (bound, _) in BUCKETS.iter().zip(0..) {
            let want = samples.iter().filter(|&&s| s <= *bound).count();
            assert!(
                out.contains(&format!("x_bucket{{le=\"{bound}\"}} {want}\n")),
                "{bound}: {out}"
            );
        }
        assert!(out.contains("x_bucket{le=\"+Inf\"} 5\n"));
        let sum: f64 = samples.iter().sum();
        let line = out.lines().find(|l| l.starts_with("x_sum ")).unwrap();
        let got: f64 = line[6..].parse().unwrap();
        assert!((got - sum).abs() < 1e-6);
    }
}
