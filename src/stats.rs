//! Counters of one run: what came in, per type, per sink, and the dead letters per reason.
//! Cheap atomics updated per batch; printed as the run's summary (and, later, as metrics).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::event::{Event, EventType};
use crate::sinks::dead_letter::Reason;

#[derive(Debug)]
pub struct Stats {
    started: Instant,
    /// Bytes of input read by every source.
    pub bytes_in: AtomicU64,
    /// Lines read by every source (empty lines included).
    pub lines_in: AtomicU64,
    by_type: [AtomicU64; EventType::ALL.len()],
    by_reason: [AtomicU64; Reason::ALL.len()],
    components: Mutex<BTreeMap<String, Arc<ComponentStats>>>,
}

/// Counters of one source, transform or sink.
#[derive(Debug, Default)]
pub struct ComponentStats {
    /// Events the component sent on (sources, transforms) or stored (sinks).
    pub events: AtomicU64,
    pub batches: AtomicU64,
    /// Failed writes that were tried again.
    pub retries: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            bytes_in: AtomicU64::new(0),
            lines_in: AtomicU64::new(0),
            by_type: Default::default(),
            by_reason: Default::default(),
            components: Mutex::default(),
        }
    }
}

impl Stats {
    /// The counters of `name`, created on first use.
    pub fn component(&self, name: &str) -> Arc<ComponentStats> {
        let mut map = self.components.lock().expect("stats lock");
        map.entry(name.to_string()).or_default().clone()
    }

    /// Counts events accepted by a source, per type.
    pub fn accepted(&self, events: &[Event]) {
        for e in events {
            self.by_type[e.event_type().index()].fetch_add(1, Relaxed);
        }
    }

    pub fn dead_letter(&self, reason: Reason) {
        self.by_reason[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn dead_letters(&self) -> u64 {
        self.by_reason.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn dead_letters_by_reason(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .into_iter()
            .map(|r| (r, self.by_reason[r.index()].load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn events_by_type(&self) -> Vec<(EventType, u64)> {
        EventType::ALL
            .into_iter()
            .map(|t| (t, self.by_type[t.index()].load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Events accepted by the sources.
    pub fn events(&self) -> u64 {
        self.by_type.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Events stored by each sink, by name.
    pub fn per_component(&self) -> Vec<(String, u64)> {
        let map = self.components.lock().expect("stats lock");
        map.iter()
            .map(|(k, v)| (k.clone(), v.events.load(Relaxed)))
            .collect()
    }

    /// The end-of-run summary, several lines of text.
    pub fn summary(&self, sinks: &[String]) -> String {
        let secs = self.elapsed().as_secs_f64().max(1e-9);
        let bytes = self.bytes_in.load(Relaxed);
        let events = self.events();
        let dead = self.dead_letters();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "evalsink: {} events and {} dead letters from {} lines ({}) in {:.2} s: {:.1} MB/s, {:.0} events/s",
            events,
            dead,
            self.lines_in.load(Relaxed),
            human_bytes(bytes),
            secs,
            bytes as f64 / 1e6 / secs,
            events as f64 / secs
        );
        let types: Vec<String> = self
            .events_by_type()
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        if !types.is_empty() {
            let _ = writeln!(s, "  by type: {}", types.join(", "));
        }
        let per: BTreeMap<String, u64> = self.per_component().into_iter().collect();
        let by_sink: Vec<String> = sinks
            .iter()
            .map(|name| format!("{name} {}", per.get(name).copied().unwrap_or(0)))
            .collect();
        if !by_sink.is_empty() {
            let _ = writeln!(s, "  by sink: {}", by_sink.join(", "));
        }
        if dead > 0 {
            let reasons: Vec<String> = self
                .dead_letters_by_reason()
                .iter()
                .map(|(r, n)| format!("{} {n}", r.as_str()))
                .collect();
            let _ = writeln!(s, "  dead letters: {}", reasons.join(", "));
        }
        s
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit < UNITS.len() - 1 {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}
