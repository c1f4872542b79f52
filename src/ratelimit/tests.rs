//! Unit tests of the limiter's client: stock, chunking, give-back and the local queue.

use super::*;

fn limit() -> Limit {
    Limit {
        limit: 1000,
        window_ms: 1000,
        tenant_limit: None,
        margin_ms: 50,
        cold_margin_ms: 100,
        spread_ms: 100,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_run_of_demand_is_cold_for_two_windows_and_a_window_idle_starts_another() {
    let l = limit();
    let mut s = Stock::default();
    let t0 = Instant::now();
    assert_eq!(s.margin_ms(&l, t0), 100);
    assert_eq!(s.margin_ms(&l, t0 + ms(900)), 100);
    assert_eq!(s.margin_ms(&l, t0 + ms(1800)), 100);
    assert_eq!(s.margin_ms(&l, t0 + ms(2001)), 50);
    assert_eq!(s.margin_ms(&l, t0 + ms(2900)), 50);
    // No call for more than a window: the next run of demand starts cold again.
    assert_eq!(s.margin_ms(&l, t0 + ms(4000)), 100);
    // The cold margin is never below the steady one.
    let odd = Limit {
        cold_margin_ms: 5,
        ..l
    };
    assert_eq!(Stock::default().margin_ms(&odd, t0), 50);
}

#[test]
fn stock_too_old_to_use_is_given_back_by_number() {
    let mut s = Stock {
        permits: 3,
        last: 20,
        asked_at: Some(Instant::now()),
        ..Stock::default()
    };
    assert_eq!(s.take_one(ms(60_000)), Ok(()));
    assert_eq!(s.permits, 2);
    s.asked_at = Instant::now().checked_sub(ms(50));
    assert_eq!(s.take_one(ms(15)), Err(Some((19, 20))), "18 was used");
    assert_eq!(s.permits, 0);
    assert_eq!(s.take_one(ms(15)), Err(None));
}

#[test]
fn a_call_takes_what_the_limit_spends_while_a_permit_is_fresh() {
    assert_eq!(max_age(&limit()), ms(15));
    assert_eq!(chunk(&limit()), 15);
    let slow = Limit {
        limit: 10,
        ..limit()
    };
    assert_eq!(chunk(&slow), 1, "never zero");
}

#[test]
fn buckets_of_tenants_no_send_holds_are_swept_out() {
    let mut b = Buckets {
        map: HashMap::new(),
        sweep_at: SWEEP_FLOOR,
    };
    let held = b.get(("p".into(), Some("busy".into())));
    for i in 0..100_000 {
        drop(b.get(("p".into(), Some(format!("t{i}")))));
    }
    assert!(b.map.len() <= SWEEP_FLOOR, "{} buckets kept", b.map.len());
    // The bucket a send holds is the same one afterwards.
    assert!(Arc::ptr_eq(
        &held,
        &b.get(("p".into(), Some("busy".into())))
    ));
}
