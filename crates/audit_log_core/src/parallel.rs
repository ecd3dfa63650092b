//! An order-keeping parallel map for verification: the caller's thread
//! reads items (in the extension, from PostgreSQL, which only that thread may
//! call) and hands them out in batches; worker threads do the pure work
//! (reading jsonb, encoding, hashing); results come back in input order.
//! Memory is bounded by the batches in flight, never by the input's size.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

/// Items per batch handed to a worker.
pub const BATCH: usize = 512;

/// Each worker's stack. What the workers run walks user data with heap
/// stacks of its own (jsonb, JSON text, the canonical encoding), so its
/// depth does not depend on the data; the size is set here rather than left
/// to `RUST_MIN_STACK` in the environment (a PostgreSQL server's, in the
/// extension), so that what was tested is what runs, with room to spare.
pub const WORKER_STACK: usize = 4 << 20;

type Job<T, U> = (Vec<T>, SyncSender<Vec<U>>);

/// A batch in flight: with a worker, or already mapped.
enum Batch<U> {
    Sent(Receiver<Vec<U>>),
    Mapped(Vec<U>),
}

/// The results of `f` over `input`, in input order, computed by `threads`
/// workers spawned in `scope`, each with a stack of [`WORKER_STACK`] bytes.
/// `input` is only ever read on the calling thread; `init` runs first on
/// each worker (the extension blocks signals there). An `Err` from `input`
/// is passed through in its place, and ends the stream. With `threads == 0`
/// (or if no worker could be started) everything runs on the calling thread.
pub fn map_ordered<'scope, 'env, T, U, E, I, F>(
    scope: &'scope Scope<'scope, 'env>,
    input: I,
    threads: usize,
    init: fn(),
    f: F,
) -> Ordered<T, U, E, I, F>
where
    T: Send + 'scope,
    U: Send + 'scope,
    I: Iterator<Item = Result<T, E>>,
    F: Fn(T) -> U + Send + Sync + Clone + 'scope,
{
    map_ordered_bounded(scope, input, threads, init, f, |_| 1, usize::MAX)
}

/// As [`map_ordered`], with batches that also end once their items weigh
/// `budget` (by `weigh`, in bytes, say): what is in flight at once is then
/// bounded by about `2 × threads × budget` plus one item a batch, whatever
/// the items' sizes, not only by their number. Items that weigh nothing
/// (the extension hashes small payloads as it reads them) are mapped on the
/// calling thread as they are read when nothing is in flight ahead of them,
/// and so is a batch of them: they are not sent to a worker and back.
pub fn map_ordered_bounded<'scope, 'env, T, U, E, I, F>(
    scope: &'scope Scope<'scope, 'env>,
    input: I,
    threads: usize,
    init: fn(),
    f: F,
    weigh: fn(&T) -> usize,
    budget: usize,
) -> Ordered<T, U, E, I, F>
where
    T: Send + 'scope,
    U: Send + 'scope,
    I: Iterator<Item = Result<T, E>>,
    F: Fn(T) -> U + Send + Sync + Clone + 'scope,
{
    let (jobs, rx) = mpsc::sync_channel::<Job<T, U>>(threads * 2);
    let rx = Arc::new(Mutex::new(rx));
    let mut spawned = 0;
    for _ in 0..threads {
        let rx: Arc<Mutex<Receiver<Job<T, U>>>> = Arc::clone(&rx);
        let f = f.clone();
        let worker = move || {
            init();
            loop {
                // A poisoned lock means another worker panicked: stop too.
                let job = match rx.lock() {
                    Ok(r) => r.recv(),
                    Err(_) => return,
                };
                let Ok((items, reply)) = job else { return };
                let out: Vec<U> = items.into_iter().map(&f).collect();
                if reply.send(out).is_err() {
                    return;
                }
            }
        };
        // A worker can fail to start (a process or memory limit): go on
        // with those that did, or on the calling thread.
        let started = std::thread::Builder::new()
            .name("audit_log worker".into())
            .stack_size(WORKER_STACK)
            .spawn_scoped(scope, worker);
        if started.is_err() {
            break;
        }
        spawned += 1;
    }
    Ordered {
        input,
        jobs: (spawned > 0).then_some(jobs),
        f,
        weigh,
        budget,
        in_flight: VecDeque::new(),
        window: spawned * 2,
        ready: VecDeque::new(),
        held: None,
        error: None,
        input_done: false,
    }
}

/// The iterator [`map_ordered`] returns.
pub struct Ordered<T, U, E, I, F> {
    input: I,
    jobs: Option<SyncSender<Job<T, U>>>,
    f: F,
    weigh: fn(&T) -> usize,
    budget: usize,
    in_flight: VecDeque<Batch<U>>,
    window: usize,
    ready: VecDeque<U>,
    /// An item read while nothing was in flight that needs work: the
    /// first of the next batch.
    held: Option<T>,
    /// An input error, returned once everything read before it is out.
    error: Option<E>,
    input_done: bool,
}

impl<T, U, E, I, F> Ordered<T, U, E, I, F>
where
    I: Iterator<Item = Result<T, E>>,
    F: Fn(T) -> U,
{
    /// Read up to one batch from the input, and its weight.
    fn read_batch(&mut self) -> (Vec<T>, usize) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut weight = 0usize;
        if let Some(t) = self.held.take() {
            weight = (self.weigh)(&t);
            batch.push(t);
        }
        while !self.input_done && batch.len() < BATCH && weight < self.budget {
            match self.input.next() {
                Some(Ok(t)) => {
                    weight = weight.saturating_add((self.weigh)(&t));
                    batch.push(t);
                }
                Some(Err(e)) => {
                    self.error = Some(e);
                    self.input_done = true;
                }
                None => self.input_done = true,
            }
        }
        (batch, weight)
    }

    /// Keep the workers busy: dispatch batches until the window is full.
    fn fill(&mut self) {
        let Some(jobs) = self.jobs.clone() else {
            return;
        };
        while self.in_flight.len() < self.window && (!self.input_done || self.held.is_some()) {
            let (batch, weight) = self.read_batch();
            if batch.is_empty() {
                break;
            }
            if weight == 0 {
                let out = batch.into_iter().map(&self.f).collect();
                self.in_flight.push_back(Batch::Mapped(out));
                continue;
            }
            let (reply, result) = mpsc::sync_channel(1);
            if jobs.send((batch, reply)).is_err() {
                // Every worker is gone (one panicked); end the stream.
                self.input_done = true;
                break;
            }
            self.in_flight.push_back(Batch::Sent(result));
        }
    }
}

impl<T, U, E, I, F> Iterator for Ordered<T, U, E, I, F>
where
    I: Iterator<Item = Result<T, E>>,
    F: Fn(T) -> U,
{
    type Item = Result<U, E>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(u) = self.ready.pop_front() {
                return Some(Ok(u));
            }
            if self.jobs.is_none() {
                // No workers: map in place, one at a time (no batch to fill).
                if self.input_done {
                    return None;
                }
                return match self.input.next() {
                    Some(Ok(t)) => Some(Ok((self.f)(t))),
                    Some(Err(e)) => {
                        self.input_done = true;
                        Some(Err(e))
                    }
                    None => {
                        self.input_done = true;
                        None
                    }
                };
            }
            if self.in_flight.is_empty() && self.held.is_none() && !self.input_done {
                // Nothing is ahead of the next item: one that needs no work
                // is mapped here as it is read, without a batch.
                match self.input.next() {
                    Some(Ok(t)) if (self.weigh)(&t) == 0 => return Some(Ok((self.f)(t))),
                    Some(Ok(t)) => self.held = Some(t),
                    Some(Err(e)) => {
                        self.error = Some(e);
                        self.input_done = true;
                    }
                    None => self.input_done = true,
                }
            }
            self.fill();
            match self.in_flight.pop_front() {
                Some(Batch::Mapped(out)) => self.ready.extend(out),
                Some(Batch::Sent(result)) => match result.recv() {
                    Ok(out) => self.ready.extend(out),
                    // The worker died with this batch: nothing more can be trusted.
                    Err(_) => {
                        self.in_flight.clear();
                        self.input_done = true;
                        return self.error.take().map(Err);
                    }
                },
                None => return self.error.take().map(Err),
            }
        }
    }
}

impl<T, U, E, I, F> Drop for Ordered<T, U, E, I, F> {
    fn drop(&mut self) {
        // Closing the job channel lets the workers finish, so the scope can end.
        self.jobs = None;
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_end_at_their_budget() {
        // Items weigh their value; a budget of 100 puts at most one item of
        // 100 (or a few lighter ones) in a batch. Order and results are kept.
        let input: Vec<usize> = (0..2000)
            .map(|i| if i % 7 == 0 { 100 } else { i % 13 })
            .collect();
        let want: Vec<usize> = input.iter().map(|i| i + 1).collect();
        for threads in [0, 1, 3] {
            let got: Vec<usize> = std::thread::scope(|s| {
                let weigh: fn(&usize) -> usize = |&i| i;
                map_ordered_bounded(
                    s,
                    input.iter().copied().map(Ok::<_, ()>),
                    threads,
                    || {},
                    |i| i + 1,
                    weigh,
                    100,
                )
                .map(|r| r.unwrap())
                .collect()
            });
            assert_eq!(got, want, "{threads} threads");
        }
        // The batches themselves: read one and weigh it.
        std::thread::scope(|s| {
            let weigh: fn(&usize) -> usize = |&i| i;
            let mut it = map_ordered_bounded(
                s,
                [60usize, 30, 20, 5, 100, 1].into_iter().map(Ok::<_, ()>),
                1,
                || {},
                |i| i,
                weigh,
                100,
            );
            assert_eq!(it.read_batch(), (vec![60, 30, 20], 110));
            assert_eq!(it.read_batch(), (vec![5, 100], 105));
            assert_eq!(it.read_batch(), (vec![1], 1));
            assert!(it.read_batch().0.is_empty());
        });
    }

    #[test]
    fn weightless_batches_stay_on_the_calling_thread() {
        // Items of weight 0 are mapped where they are read; the others go
        // to a worker. Either way the results come back in order.
        let me = std::thread::current().id();
        let input: Vec<usize> = (0..3 * BATCH).collect();
        let got: Vec<(usize, bool)> = std::thread::scope(|s| {
            // The middle batch weighs something; the first and last do not.
            let weigh: fn(&usize) -> usize = |&i| usize::from(i / BATCH == 1);
            map_ordered_bounded(
                s,
                input.iter().copied().map(Ok::<_, ()>),
                1,
                || {},
                move |i| (i, std::thread::current().id() == me),
                weigh,
                usize::MAX,
            )
            .map(|r| r.unwrap())
            .collect()
        });
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), input);
        for (i, here) in got {
            assert_eq!(here, i / BATCH != 1, "item {i}");
        }
    }

    /// Items that need no work mixed with some that do, and an input error:
    /// every result in order, then the error, then the end.
    #[test]
    fn light_and_heavy_items_keep_their_order() {
        for (every, fail_at) in [
            (1, None),
            (97, None),
            (97, Some(3000)),
            (5000, Some(10)),
            (3, Some(0)),
        ] {
            let n = 4000;
            let input = (0..n).map(move |i| {
                if Some(i) == fail_at {
                    Err(format!("bad {i}"))
                } else {
                    Ok(i)
                }
            });
            for threads in [0, 1, 2] {
                let got: Vec<Result<usize, String>> = std::thread::scope(|s| {
                    let weigh: fn(&usize) -> usize = match every {
                        1 => |_| 0,
                        97 => |&i| usize::from(i % 97 == 0),
                        3 => |&i| usize::from(i % 3 == 0),
                        _ => |&i| usize::from(i % 5000 == 0),
                    };
                    map_ordered_bounded(s, input.clone(), threads, || {}, |i| i * 3, weigh, 100)
                        .collect()
                });
                let stop = fail_at.unwrap_or(n);
                let mut want: Vec<Result<usize, String>> = (0..stop).map(|i| Ok(i * 3)).collect();
                if let Some(f) = fail_at {
                    want.push(Err(format!("bad {f}")));
                }
                assert_eq!(
                    got, want,
                    "every {every}, fail at {fail_at:?}, {threads} threads"
                );
            }
        }
    }

    fn run(threads: usize, n: usize, fail_at: Option<usize>) -> Vec<Result<usize, String>> {
        let input = (0..n).map(move |i| {
            if Some(i) == fail_at {
                Err(format!("bad {i}"))
            } else {
                Ok(i)
            }
        });
        std::thread::scope(|s| map_ordered(s, input, threads, || {}, |i| i * 3).collect())
    }

    #[test]
    fn keeps_order_with_any_number_of_threads() {
        for threads in [0, 1, 2, 5] {
            for n in [0, 1, BATCH - 1, BATCH, BATCH + 1, 7 * BATCH + 13] {
                let want: Vec<Result<usize, String>> = (0..n).map(|i| Ok(i * 3)).collect();
                assert_eq!(run(threads, n, None), want, "threads {threads}, n {n}");
            }
        }
    }

    #[test]
    fn an_input_error_ends_the_stream_after_what_came_before() {
        for threads in [0, 2] {
            let got = run(threads, 3 * BATCH, Some(BATCH + 5));
            assert_eq!(got.len(), BATCH + 6);
            assert!(got[..BATCH + 5].iter().all(Result::is_ok));
            assert_eq!(got[BATCH + 5], Err(format!("bad {}", BATCH + 5)));
        }
    }

    #[test]
    fn dropping_early_lets_the_workers_go() {
        let firsts: Vec<usize> = std::thread::scope(|s| {
            let it = map_ordered(s, (0..100 * BATCH).map(Ok::<_, ()>), 2, || {}, |i| i);
            it.take(3).map(|r| r.unwrap_or(0)).collect()
        });
        assert_eq!(firsts, vec![0, 1, 2]);
    }
}
