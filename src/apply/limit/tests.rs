//! The limiter's tests: order, bounds, adaptation.

use super::*;

/// Fast completions with every slot in use, `rounds` times.
async fn grow(l: &Limiter, rounds: usize) {
    for _ in 0..rounds {
        let n = l.limit();
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(l.acquire().await);
        }
        for p in held {
            p.done(Signal::Completed);
        }
    }
}

#[tokio::test]
async fn starts_at_one_and_learns_the_best_there() {
    let l = Limiter::new(32, Duration::from_secs(10));
    assert_eq!(l.limit(), 1, "a limiter must start with one operation");
    let first = l.acquire().await;
    let second = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
    assert!(second.is_err(), "a second operation got a slot at limit 1");
    first.done(Signal::Completed);
    assert!(l.state.lock().unwrap().best.is_some());
    grow(&l, 300).await;
    assert!(
        l.limit() >= 16,
        "fast completions did not grow the limit: {}",
        l.limit()
    );
    // Reported and dropped permits alike let go of the limiter.
    assert_eq!(Arc::strong_count(&l.state), 1);
}

#[tokio::test]
async fn slots_go_in_arrival_order_and_a_cancelled_wait_passes_its_turn_on() {
    let l = Limiter::new(4, Duration::from_secs(10)); // limit 1
    let held = l.acquire().await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..3 {
        let (l, order) = (l.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let p = l.acquire().await;
            order.lock().unwrap().push(i);
            tokio::task::yield_now().await;
            drop(p);
        }));
        tokio::task::yield_now().await; // it queues now, before the next
    }
    // A wait given up while queued takes no slot and loses no turn.
    let gave_up = tokio::time::timeout(Duration::from_millis(20), l.acquire()).await;
    assert!(gave_up.is_err());
    drop(held);
    // Arriving just as the slot frees, before the woken waiter runs: it
    // must queue behind the three, not take the slot first.
    let late = l.acquire().await;
    order.lock().unwrap().push(99);
    drop(late);
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 99]);
    assert_eq!(l.in_flight(), 0);
    assert!(l.state.lock().unwrap().queue.is_empty());

    // The head, woken for a freed slot and cancelled before it ran,
    // hands the slot to the next waiter.
    let held = l.acquire().await;
    let head = tokio::spawn({
        let l = l.clone();
        async move { drop(l.acquire().await) }
    });
    tokio::task::yield_now().await;
    let next = tokio::spawn({
        let l = l.clone();
        async move { drop(l.acquire().await) }
    });
    tokio::task::yield_now().await;
    drop(held); // wakes the head only
    head.abort();
    tokio::time::timeout(Duration::from_secs(1), next)
        .await
        .expect("a cancelled head kept the freed slot from the next waiter")
        .unwrap();
    assert_eq!(l.in_flight(), 0);
}

#[tokio::test]
async fn bounds_in_flight_and_adapts() {
    let l = Limiter::new(4, Duration::from_secs(10));
    grow(&l, 100).await;
    assert_eq!(l.limit(), 4);
    // From here on, as a limiter at 4 that has learned no latency yet.
    l.state.lock().unwrap().best = None;
    let a = l.acquire().await;
    let b = l.acquire().await;
    let c = l.acquire().await;
    let d = l.acquire().await;
    assert_eq!(l.in_flight(), 4);
    // A fifth waits until one finishes.
    let waiting = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
    assert!(
        waiting.is_err(),
        "a fifth operation got a slot over the limit"
    );
    a.done(Signal::Completed);
    let e = tokio::time::timeout(Duration::from_secs(1), l.acquire())
        .await
        .expect("a freed slot is handed on");
    // Overload shrinks the limit; it never goes below 1.
    {
        let mut s = l.state.lock().unwrap();
        s.last_decrease = Instant::now() - Duration::from_secs(10);
    }
    b.done(Signal::Overloaded);
    assert_eq!(l.limit(), 3);
    drop(c);
    drop(d);
    drop(e);
    assert_eq!(l.in_flight(), 0);
    for _ in 0..100 {
        {
            let mut s = l.state.lock().unwrap();
            s.last_decrease = Instant::now() - Duration::from_secs(10);
        }
        l.acquire().await.done(Signal::Overloaded);
    }
    assert_eq!(l.limit(), 1);
    // Fast completions of one operation at a time do not grow it: the
    // limit of 1 was never what held anything back... until it is.
    for _ in 0..50 {
        l.acquire().await.done(Signal::Completed);
    }
    assert_eq!(
        l.limit(),
        2,
        "grows once: at limit 1, one operation uses it"
    );
    for _ in 0..50 {
        l.acquire().await.done(Signal::Completed);
    }
    assert_eq!(l.limit(), 2, "a limit of 2 that is never used stays");
    // Fast completions while the limit is used grow it, up to the bound.
    grow(&l, 200).await;
    assert_eq!(l.limit(), 4);
}

/// `completions` completions with every slot in use, each taking 10 ms,
/// times the operations in flight on a `serial` server. The completion
/// numbers at which a probe (a limit above 1) began, and the final limit.
fn simulate(l: &Limiter, completions: usize, serial: bool) -> (Vec<usize>, usize) {
    let mut probes = Vec::new();
    let mut was = 1;
    for i in 0..completions {
        let k = l.limit();
        if k > 1 && was == 1 {
            probes.push(i);
        }
        was = k;
        {
            let mut s = l.state.lock().unwrap();
            s.in_flight = k;
            s.last_decrease = Instant::now() - Duration::from_secs(10);
        }
        let latency = Duration::from_millis(10) * if serial { k as u32 } else { 1 };
        l.finish(Some((latency, Signal::Completed, 1)));
    }
    (probes, l.limit())
}

#[test]
fn probes_grow_rare_where_they_never_help_and_stay_frequent_where_they_do() {
    let l = Limiter::new(32, Duration::from_secs(100));
    let (probes, limit) = simulate(&l, 3000, true);
    assert_eq!(limit, 1);
    let gaps: Vec<usize> = probes.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        // (a completion or two of jitter: the limit moves in fractions)
        gaps.windows(2).all(|w| w[1] + 2 >= w[0]),
        "gaps between failed probes must not shrink: {gaps:?}"
    );
    assert!(
        gaps.last().is_some_and(|g| *g >= HOLD_MAX as usize),
        "probes never grew rare: {gaps:?}"
    );
    assert!(
        probes.len() < 20,
        "{} probes in 3000 completions",
        probes.len()
    );
    // The same limiter on a server that scales: probes hold, it grows.
    let (_, limit) = simulate(&l, 3000, false);
    assert_eq!(
        limit, 32,
        "a server that scales must get its concurrency back"
    );
    assert_eq!(l.state.lock().unwrap().next_hold, HOLD_AFTER_DECREASE);
}

#[test]
fn judges_a_bulk_per_write() {
    let l = Limiter::new(16, Duration::from_secs(100));
    l.finish(Some((Duration::from_millis(10), Signal::Completed, 1)));
    let before = l.state.lock().unwrap().limit;
    {
        let mut s = l.state.lock().unwrap();
        s.last_decrease = Instant::now() - Duration::from_secs(10);
    }
    // 100 writes in 1 s: 10 ms each, as fast as the best single write
    // (with the limit in use).
    {
        let mut s = l.state.lock().unwrap();
        s.in_flight = s.limit.floor() as usize;
        s.hold = 0;
    }
    l.finish(Some((Duration::from_secs(1), Signal::Completed, 100)));
    let grown = l.state.lock().unwrap().limit;
    assert!(
        grown > before,
        "a bulk as fast per write as the best counted as congestion"
    );
    // The same second for 2 writes is 50 times slower per write: congestion.
    l.finish(Some((Duration::from_secs(1), Signal::Completed, 2)));
    assert!(
        l.state.lock().unwrap().limit < grown,
        "a bulk 50x slower per write did not shrink the limit"
    );
}
