//! How deep the bulk pipeline runs: a controller found as TCP Vegas finds its window.
//!
//! Each sample (at least [`SAMPLE_MIN`] and a step of finished entries, or [`SAMPLE_MAX`])
//! gives the mean number of bulk entries held in flight `u` and the mean time a finished one
//! spent in flight `w` (each entry's time from its read's room to its finish, matched in
//! order). The floor's time `w0` (measured at the floor, or the lowest seen since) is the time
//! in flight without a queue, so `u * (1 - w0 / w)` of the `u` entries held are queued rather
//! than worked on. Past half a step queued the depth gives a step back; under a quarter, with
//! every read in the sample full (a backlog: light traffic never grows it), it takes one more.
//! A slow provider keeps `w` flat as the depth grows, so the depth climbs to the ceiling; a
//! saturated machine does not, so it stays at the floor.
//!
//! A step up given back within [`FAILED_WITHIN`] samples doubles the wait before the next one
//! (from [`HOLD_MIN`] to [`HOLD_MAX`] samples), so a saturated pipeline only tries a deeper one
//! now and then. `w0` is measured again at the floor (a probe: the depth drops to the floor,
//! drains, takes one sample and goes back) once it is older than [`FLOOR_TTL`] while the depth
//! is above it, so a slow provider turning fast is noticed.
//!
//! All of this only while tx is live: with no tx being sent as it arrives, bulk's queues delay
//! nobody and the depth is its ceiling.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The shortest span a sample of the bulk pipeline covers.
const SAMPLE_MIN: Duration = Duration::from_millis(300);
/// A sample is taken after this long even with fewer than a step finished.
const SAMPLE_MAX: Duration = Duration::from_secs(2);
/// How long the floor's time in flight is trusted, while the depth is above the floor,
/// before it is measured again there (a probe).
const FLOOR_TTL: Duration = Duration::from_secs(10);
/// A step up is kept while under this share of a step queues, and given back past
/// [`SHRINK_AT`] (of a step).
const GROW_BELOW: f64 = 0.25;
const SHRINK_AT: f64 = 0.5;
/// Samples the depth holds after it shrank before it may grow again: doubled after each step
/// up that had to be given back, from the first to the last.
const HOLD_MIN: u32 = 3;
const HOLD_MAX: u32 = 32;
/// A step given back within this many samples of being taken did not pay.
const FAILED_WITHIN: u32 = 4;

#[derive(Debug, Clone)]
pub(crate) struct Depth {
    floor: usize,
    ceiling: usize,
    step: usize,
    limit: usize,
    in_use: usize,
    /// Room taken and not yet back, oldest first: when, and for how many entries.
    out: VecDeque<(Instant, usize)>,
    /// The current sample: since when, entry-seconds held, entries finished and the seconds
    /// they spent in flight, whether a read came back short.
    began: Instant,
    changed_at: Instant,
    held: f64,
    done: usize,
    in_flight_secs: f64,
    short: bool,
    /// The time in flight without a queue, and when it was measured.
    w0: Option<(f64, Instant)>,
    hold: u32,
    backoff: u32,
    /// Samples since the depth last grew.
    since_grow: u32,
    /// At the ceiling because tx is not live.
    relaxed: bool,
    probe: Probe,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Probe {
    Off,
    /// At the floor, waiting for the entries above it to finish; then the limit to go back to.
    Draining(usize),
    /// At the floor and drained: the next sample is the floor's.
    Measuring(usize),
}

impl Depth {
    pub(crate) fn new(floor: usize, ceiling: usize, step: usize, now: Instant) -> Self {
        let floor = floor.max(1);
        Depth {
            floor,
            ceiling: ceiling.max(floor),
            step: step.max(1),
            limit: floor,
            in_use: 0,
            out: VecDeque::new(),
            began: now,
            changed_at: now,
            held: 0.0,
            done: 0,
            in_flight_secs: 0.0,
            short: false,
            w0: None,
            // The first samples run on cold connections and caches: hold a few before the
            // first step up.
            hold: HOLD_MIN,
            backoff: HOLD_MIN,
            since_grow: u32::MAX,
            relaxed: false,
            probe: Probe::Off,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    fn accrue(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.changed_at).as_secs_f64();
        self.held += self.in_use as f64 * dt;
        self.changed_at = now;
    }

    pub(crate) fn taken(&mut self, n: usize, now: Instant) {
        self.accrue(now);
        self.in_use += n;
        self.out.push_back((now, n));
    }

    /// Room for `n` entries back unused; `short`: a read came back with less than it asked.
    pub(crate) fn unused(&mut self, n: usize, now: Instant, short: bool) {
        self.accrue(now);
        self.in_use = self.in_use.saturating_sub(n);
        self.short |= short;
        // The room a read did not use is the room it took last.
        let mut left = n;
        while left > 0 {
            let Some(last) = self.out.back_mut() else {
                break;
            };
            let k = last.1.min(left);
            last.1 -= k;
            left -= k;
            if last.1 == 0 {
                self.out.pop_back();
            }
        }
    }

    /// `n` entries finished at `now`; `tx_live`: tx is being sent as it arrives.
    pub(crate) fn finished(&mut self, n: usize, now: Instant, tx_live: bool) {
        self.accrue(now);
        self.in_use = self.in_use.saturating_sub(n);
        self.done += n;
        // Matched with the oldest room out: the sum of their times in flight is exact when
        // entries finish in the order they were read, and close when they nearly do.
        let mut left = n;
        while left > 0 {
            let Some(first) = self.out.front_mut() else {
                break;
            };
            let k = first.1.min(left);
            self.in_flight_secs += k as f64 * now.saturating_duration_since(first.0).as_secs_f64();
            first.1 -= k;
            left -= k;
            if first.1 == 0 {
                self.out.pop_front();
            }
        }
        if !tx_live {
            // Nothing for bulk's queues to delay: as deep as the ceiling allows.
            if !self.relaxed {
                self.relaxed = true;
                self.probe = Probe::Off;
                self.limit = self.ceiling;
            }
            return;
        }
        if self.relaxed {
            // Tx is live again: drain to the floor, measure it there, and grow from there.
            self.relaxed = false;
            self.limit = self.floor;
            self.hold = HOLD_MIN;
            self.backoff = HOLD_MIN;
            self.since_grow = u32::MAX;
            self.probe = Probe::Draining(self.floor);
            return;
        }
        self.sample(now);
    }

    fn restart(&mut self, now: Instant) {
        self.began = now;
        self.held = 0.0;
        self.done = 0;
        self.in_flight_secs = 0.0;
        self.short = false;
    }

    fn sample(&mut self, now: Instant) {
        if let Probe::Draining(back) = self.probe {
            if self.in_use <= self.floor {
                self.probe = Probe::Measuring(back);
                self.restart(now);
            }
            return;
        }
        let span = now.saturating_duration_since(self.began);
        if span < SAMPLE_MIN || (self.done < self.step && span < SAMPLE_MAX) || self.done == 0 {
            return;
        }
        let u = self.held / span.as_secs_f64();
        let w = self.in_flight_secs / self.done as f64;
        let backlog = !self.short;
        self.restart(now);
        if let Probe::Measuring(back) = self.probe {
            self.w0 = Some((w, now));
            self.limit = back.clamp(self.floor, self.ceiling);
            self.probe = Probe::Off;
            return;
        }
        let fresh = match self.w0 {
            Some((w0, at)) => w < w0 || now.saturating_duration_since(at) > FLOOR_TTL * 3,
            None => true,
        };
        if fresh || self.limit == self.floor {
            self.w0 = Some((w, now));
        }
        let Some((w0, at)) = self.w0 else { return };
        // Of the `u` entries held, those not being worked on: queued.
        let queued = if w > 0.0 { u * (1.0 - w0 / w) } else { 0.0 };
        let step = self.step as f64;
        self.since_grow = self.since_grow.saturating_add(1);
        if queued > step * SHRINK_AT && self.limit > self.floor {
            self.limit = self.limit.saturating_sub(self.step).max(self.floor);
            // A step up given back soon after it was taken only queued: wait twice as long
            // before the next one. One that held for a while earns the shortest wait again.
            self.backoff = if self.since_grow <= FAILED_WITHIN {
                (self.backoff * 2).min(HOLD_MAX)
            } else {
                HOLD_MIN
            };
            self.hold = self.backoff;
        } else if self.hold > 0 {
            self.hold -= 1;
        } else if queued < step * GROW_BELOW && backlog && self.limit < self.ceiling {
            self.limit = (self.limit + self.step).min(self.ceiling);
            self.since_grow = 0;
        }
        if self.limit > self.floor && now.saturating_duration_since(at) > FLOOR_TTL {
            self.probe = Probe::Draining(self.limit);
            self.limit = self.floor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a depth against a pipeline model: entries finish `service(held, i)` after they
    /// are taken (`held`: entries in flight then, `i`: the batch's number), the room is always
    /// filled a step at a time (a backlog), time moves in 10 ms ticks from `t0`. Returns the
    /// limit at each tick and the time it ended.
    fn run(
        d: &mut Depth,
        t0: Instant,
        secs: u64,
        tx_live: bool,
        service: impl Fn(usize, u64) -> Duration,
    ) -> (Vec<usize>, Instant) {
        let tick = Duration::from_millis(10);
        let mut out: Vec<(Instant, usize)> = Vec::new();
        let mut limits = Vec::new();
        let mut now = t0;
        let mut i = 0u64;
        while now < t0 + Duration::from_secs(secs) {
            out.sort_by_key(|&(due, _)| std::cmp::Reverse(due));
            while let Some(&(due, n)) = out.last() {
                if due > now {
                    break;
                }
                out.pop();
                d.finished(n, now, tx_live);
            }
            while d.in_use + d.step <= d.limit() {
                d.taken(d.step, now);
                // A batch finishes in four parts, as its sends do, not all at once.
                let quarter = d.step / 4;
                for part in 0..4u64 {
                    let due = now + service(d.in_use, i * 4 + part);
                    out.push((
                        due,
                        if part == 3 {
                            d.step - 3 * quarter
                        } else {
                            quarter
                        },
                    ));
                }
                i += 1;
            }
            limits.push(d.limit());
            now += tick;
        }
        out.sort_by_key(|&(due, _)| due);
        for (due, n) in out {
            now = now.max(due);
            d.finished(n, now, tx_live);
        }
        (limits, now)
    }

    fn mean(v: &[usize]) -> f64 {
        v.iter().sum::<usize>() as f64 / v.len() as f64
    }

    /// Spread of ±25% by batch part, fixed by its number.
    fn jitter(i: u64) -> f64 {
        0.75 + 0.5 * ((i.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0)
    }

    fn saturated(held: usize, i: u64) -> Duration {
        // A fixed 5,000 entries/s: time in flight grows with what is in flight.
        Duration::from_secs_f64(held as f64 / 5000.0 * jitter(i))
    }

    fn slow_provider(_: usize, i: u64) -> Duration {
        // About 200 ms in flight whatever the depth: throughput grows with it.
        Duration::from_secs_f64(0.2 * jitter(i))
    }

    #[test]
    fn without_live_tx_bulk_runs_at_its_ceiling() {
        let t = Instant::now();
        let mut d = Depth::new(256, 2048, 256, t);
        assert_eq!(d.limit(), 256, "starts at the floor");
        let (limits, _) = run(&mut d, t, 20, false, saturated);
        assert!(limits[limits.len() / 10..].iter().all(|&l| l == 2048));
    }

    #[test]
    fn with_live_tx_a_saturated_pipeline_keeps_bulk_near_the_floor() {
        let t = Instant::now();
        let mut d = Depth::new(256, 2048, 256, t);
        let (limits, end) = run(&mut d, t, 30, true, saturated);
        let late = &limits[limits.len() / 4..];
        assert!(mean(late) < 350.0, "mean depth {}", mean(late));
        assert!(
            late.iter().all(|&l| l <= 768),
            "max {:?}",
            late.iter().max()
        );
        // Tx goes quiet: back to the ceiling.
        let (limits, _) = run(&mut d, end, 5, false, saturated);
        assert_eq!(limits.last(), Some(&2048));
    }

    #[test]
    fn with_live_tx_a_slow_provider_still_takes_bulk_to_the_ceiling() {
        let t = Instant::now();
        let mut d = Depth::new(256, 2048, 256, t);
        let (limits, _) = run(&mut d, t, 30, true, slow_provider);
        let late = &limits[limits.len() / 2..];
        assert!(
            late.contains(&256),
            "went down to the floor to measure it again"
        );
        assert!(mean(late) > 1700.0, "mean depth {}", mean(late));
        assert!(limits.contains(&2048));
    }

    #[test]
    fn a_probe_brings_bulk_down_when_a_slow_provider_turns_fast() {
        let t = Instant::now();
        let mut d = Depth::new(256, 2048, 256, t);
        let (_, end) = run(&mut d, t, 20, true, slow_provider);
        assert!(d.limit() > 1500, "{}", d.limit());
        // Now the machine is the bottleneck (the provider answers at once): a probe finds
        // the floor's time again and the depth falls back.
        let (limits, _) = run(&mut d, end, 40, true, saturated);
        let late = &limits[limits.len() / 2..];
        assert!(mean(late) < 600.0, "mean depth {}", mean(late));
    }

    #[test]
    fn light_traffic_never_grows_the_depth() {
        let t = Instant::now();
        let mut d = Depth::new(256, 2048, 256, t);
        // As the reader does: a batch's room, a read that brings 10, 20 ms to send them.
        for i in 0..300u64 {
            let at = t + Duration::from_millis(100 * i);
            d.taken(256, at);
            d.unused(246, at + Duration::from_millis(1), true);
            d.finished(10, at + Duration::from_millis(21), true);
        }
        assert_eq!(d.limit(), 256);
    }

    #[test]
    fn time_in_flight_is_each_entrys_own() {
        let t = Instant::now();
        // A step larger than what finishes: no sample is taken, so nothing resets.
        let mut d = Depth::new(4, 8, 100, t);
        d.taken(4, t);
        d.taken(4, t + Duration::from_millis(100));
        // The second read used 2 of its 4.
        d.unused(2, t + Duration::from_millis(100), true);
        d.finished(4, t + Duration::from_millis(200), true);
        d.finished(2, t + Duration::from_millis(300), true);
        // 4 × 200 ms + 2 × 200 ms.
        assert!(
            (d.in_flight_secs - 1.2).abs() < 1e-9,
            "{}",
            d.in_flight_secs
        );
        assert!(d.out.is_empty());
        assert!(d.short);
    }
}
