//! `GET /metrics`: the server's counters, gauges and histograms in the Prometheus text
//! exposition format (version 0.0.4). Updates are atomic adds on the request path (one
//! short lock for the per-route request counts); rendering reads a snapshot. No I/O and
//! no knowledge of models here: a server kind adds its own gauges through a callback.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the time-to-first-token buckets: a short prompt alone takes
/// tens of milliseconds, a long one behind others tens of seconds.
const TTFT_BOUNDS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Upper bounds (seconds) of the per-token buckets: a decode step of a small model takes
/// a few milliseconds alone, more in a large batch or beside a prefill chunk.
const TOKEN_BOUNDS: &[f64] = &[0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.0, 2.5];

/// A monotonic counter.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A histogram with fixed bucket bounds; counts per bucket (not cumulative) plus one for
/// values above the last bound, and the sum of all values observed.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must increase");
        Histogram { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum: AtomicU64::new(0) }
    }

    pub fn observe(&self, d: Duration) {
        let x = d.as_secs_f64();
        let bucket = self.bounds.iter().position(|&b| x <= b).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |bits| Some((f64::from_bits(bits) + x).to_bits()));
    }
}

/// A gauge's value, read when `/metrics` is asked for.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub value: f64,
}

type GaugeSource = Box<dyn Fn() -> Vec<Gauge> + Send + Sync>;

pub struct Metrics {
    /// Responses by route (a fixed set of labels, see [`route_label`]) and status.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub prompt_tokens: Counter,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_prompt_tokens: Counter,
    pub generated_tokens: Counter,
    /// Connections refused at once because `--max-connections` were open (they never
    /// become requests, so `requests` does not see them).
    pub refused_connections: Counter,
    /// From a request's arrival to its first generated token.
    pub time_to_first_token: Histogram,
    /// Between two consecutive generated tokens of one sequence.
    pub time_per_token: Histogram,
    /// The model served, as the `model` label of `mllm_info`.
    model: String,
    gauges: Option<GaugeSource>,
}

/// The label for a request path: one of the routes, or `other`, so that clients cannot
/// grow the set of series by asking for random paths.
pub fn route_label(path: &str) -> &'static str {
    const ROUTES: &[&str] =
        &["/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"];
    match ROUTES.iter().find(|r| **r == path) {
        Some(r) => r,
        None if path.starts_with("/v1/models/") => "/v1/models/{id}",
        None => "other",
    }
}

/// A label value with `\`, `"` and line feeds escaped, as the format requires.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value in the format's float syntax.
fn number(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{x}")
    }
}

impl Metrics {
    /// Metrics for a server of `model`; `gauges` gives the server's own gauges at each scrape.
    pub fn new(model: &str, gauges: Option<GaugeSource>) -> Metrics {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: Counter::default(),
            cached_prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            refused_connections: Counter::default(),
            time_to_first_token: Histogram::new(TTFT_BOUNDS),
            time_per_token: Histogram::new(TOKEN_BOUNDS),
            model: model.to_string(),
            gauges,
        }
    }

    /// Count one response with `status` to `route` (a [`route_label`]).
    pub fn request(&self, route: &'static str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((route, status)).or_insert(0) += 1;
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(&mut out, "mllm_info", "gauge", "The model served (always 1).");
        let _ = writeln!(out, "mllm_info{{model=\"{}\"}} 1", escape(&self.model));
        head(&mut out, "mllm_requests_total", "counter", "HTTP responses by route and status code.");
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for ((route, status), n) in requests {
            let _ = writeln!(out, "mllm_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", escape(route));
        }
        for (name, help, c) in [
            ("mllm_prompt_tokens_total", "Prompt tokens of finished generations.", &self.prompt_tokens),
            (
                "mllm_prompt_tokens_cached_total",
                "Prompt tokens not prefilled because their keys and values came from the prefix cache.",
                &self.cached_prompt_tokens,
            ),
            ("mllm_generation_tokens_total", "Tokens generated.", &self.generated_tokens),
            (
                "mllm_connections_refused_total",
                "Connections answered 503 and closed at once because --max-connections were open.",
                &self.refused_connections,
            ),
        ] {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", c.get());
        }
        for g in self.gauges.as_ref().map(|f| f()).unwrap_or_default() {
            head(&mut out, g.name, "gauge", g.help);
            let _ = writeln!(out, "{} {}", g.name, number(g.value));
        }
        for (name, help, h) in [
            (
                "mllm_time_to_first_token_seconds",
                "From a request's arrival to its first generated token.",
                &self.time_to_first_token,
            ),
            ("mllm_time_per_output_token_seconds", "Between consecutive generated tokens.", &self.time_per_token),
        ] {
            head(&mut out, name, "histogram", help);
            // Counts are read once, so that the buckets, +Inf and _count agree.
            let counts: Vec<u64> = h.counts.iter().map(|c| c.load(Relaxed)).collect();
            let mut cumulative = 0;
            for (i, &c) in counts.iter().enumerate() {
                cumulative += c;
                let le = h.bounds.get(i).map_or_else(|| "+Inf".to_string(), |&b| number(b));
                let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_sum {}", number(f64::from_bits(h.sum.load(Relaxed))));
            let _ = writeln!(out, "{name}_count {cumulative}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line starting with `series ` (name and labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn the_exposition_has_every_family_with_help_type_and_consistent_histograms() {
        let m = Metrics::new(
            "Smol\"LM\\2\n",
            Some(Box::new(|| vec![Gauge { name: "mllm_queue_depth", help: "Requests waiting.", value: 3.0 }])),
        );
        m.request(route_label("/v1/chat/completions"), 200);
        m.request(route_label("/v1/chat/completions"), 200);
        m.request(route_label("/v1/chat/completions"), 401);
        m.request(route_label("/v1/models/gpt-4"), 404);
        m.request(route_label("/../../etc/passwd"), 404);
        m.prompt_tokens.add(40);
        m.cached_prompt_tokens.add(16);
        m.generated_tokens.add(7);
        m.refused_connections.add(2);
        for ms in [5, 30, 30, 700, 90_000] {
            m.time_to_first_token.observe(Duration::from_millis(ms));
        }
        m.time_per_token.observe(Duration::from_millis(3));
        let t = m.render();
        assert!(t.contains("mllm_info{model=\"Smol\\\"LM\\\\2\\n\"} 1\n"), "{t}");
        assert_eq!(sample(&t, "mllm_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"), Some(2.0));
        assert_eq!(sample(&t, "mllm_requests_total{route=\"/v1/chat/completions\",status=\"401\"}"), Some(1.0));
        assert_eq!(sample(&t, "mllm_requests_total{route=\"/v1/models/{id}\",status=\"404\"}"), Some(1.0));
        assert_eq!(sample(&t, "mllm_requests_total{route=\"other\",status=\"404\"}"), Some(1.0));
        assert_eq!(sample(&t, "mllm_prompt_tokens_total"), Some(40.0));
        assert_eq!(sample(&t, "mllm_prompt_tokens_cached_total"), Some(16.0));
        assert_eq!(sample(&t, "mllm_generation_tokens_total"), Some(7.0));
        assert_eq!(sample(&t, "mllm_connections_refused_total"), Some(2.0));
        assert_eq!(sample(&t, "mllm_queue_depth"), Some(3.0));
        let ttft = "mllm_time_to_first_token_seconds";
        assert_eq!(sample(&t, &format!("{ttft}_bucket{{le=\"0.01\"}}")), Some(1.0));
        assert_eq!(sample(&t, &format!("{ttft}_bucket{{le=\"0.05\"}}")), Some(3.0));
        assert_eq!(sample(&t, &format!("{ttft}_bucket{{le=\"60\"}}")), Some(4.0));
        assert_eq!(sample(&t, &format!("{ttft}_bucket{{le=\"+Inf\"}}")), Some(5.0));
        assert_eq!(sample(&t, &format!("{ttft}_count")), Some(5.0));
        let sum = sample(&t, &format!("{ttft}_sum")).unwrap();
        assert!((sum - 90.765).abs() < 1e-9, "{sum}");
        assert_eq!(sample(&t, "mllm_time_per_output_token_seconds_count"), Some(1.0));
        // Every family is announced once, before its samples; every sample line parses.
        let mut seen = std::collections::HashSet::new();
        let mut announced = std::collections::HashSet::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(seen.insert(name.to_string()), "{name} announced twice");
                announced.insert(name.to_string());
            } else if !line.starts_with("# HELP ") {
                let series = line.rsplit_once(' ').expect("name and value").0;
                let name = series.split('{').next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| announced.contains(*f)))
                    .unwrap_or(name);
                assert!(announced.contains(family), "{line}: no TYPE before it");
                let value = line.rsplit_once(' ').unwrap().1;
                assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
            }
        }
    }

    #[test]
    fn bucket_bounds_are_inclusive_and_numbers_use_the_format_spelling() {
        let h = Histogram::new(&[0.5, 1.0]);
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_millis(1500));
        let counts: Vec<u64> = h.counts.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(counts, [1, 0, 1]);
        assert_eq!(
            (number(f64::INFINITY), number(f64::NAN), number(0.0025), number(60.0)),
            ("+Inf".into(), "NaN".into(), "0.0025".into(), "60".into())
        );
        assert_eq!(route_label("/metrics"), "/metrics");
        assert_eq!(route_label("/v1/models"), "/v1/models");
        assert_eq!(route_label("/v1/chat/completions/x"), "other");
    }
}
