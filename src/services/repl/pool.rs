//! A small pool whose threads exist only while there is work: a thread
//! starts when a job arrives and none is waiting for one (up to a bound),
//! and ends after it waited `idle` for a job. An idle replication link
//! then costs no worker thread at all, while a busy one keeps its workers
//! for as long as jobs keep coming (no thread start per job).
//!
//! One mutex guards the queue and the thread counts, so a job can never be
//! left behind by a thread deciding to end: the decision and the look at
//! the queue are one critical section, and `send` starts a thread whenever
//! no thread is waiting.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Handler<J> = Box<dyn Fn(J) + Send + Sync>;

struct State<J> {
    jobs: VecDeque<J>,
    /// Threads running (working or waiting).
    live: usize,
    /// Threads waiting for a job.
    waiting: usize,
    closed: bool,
}

struct Inner<J> {
    name: String,
    max: usize,
    idle: Duration,
    st: Mutex<State<J>>,
    /// Wakes waiting threads (a job, or the pool closing).
    work: Condvar,
    /// Wakes `close` when the last thread ended.
    gone: Condvar,
    handler: Handler<J>,
}

/// The pool. Dropping it closes it (see [`LazyPool::close`]).
pub struct LazyPool<J: Send + 'static> {
    inner: Arc<Inner<J>>,
}

impl<J: Send + 'static> LazyPool<J> {
    /// At most `max` threads named `name`, each ending after `idle`
    /// without a job; every job runs `handler`.
    pub fn new(
        name: &str,
        max: usize,
        idle: Duration,
        handler: impl Fn(J) + Send + Sync + 'static,
    ) -> Self {
        LazyPool {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                max: max.max(1),
                idle,
                st: Mutex::new(State {
                    jobs: VecDeque::new(),
                    live: 0,
                    waiting: 0,
                    closed: false,
                }),
                work: Condvar::new(),
                gone: Condvar::new(),
                handler: Box::new(handler),
            }),
        }
    }

    /// Queue a job. Fails only when the pool is closed, or when no thread
    /// runs and none could be started (the job is not queued then).
    pub fn send(&self, job: J) -> Result<(), String> {
        let mut st = self.inner.st.lock();
        if st.closed {
            return Err(format!("the {} pool is closed", self.inner.name));
        }
        st.jobs.push_back(job);
        if st.waiting >= st.jobs.len() {
            drop(st);
            self.inner.work.notify_one();
            return Ok(());
        }
        if st.live >= self.inner.max {
            // Every thread is busy: one takes the job when it is done.
            return Ok(());
        }
        st.live += 1;
        drop(st);
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name(self.inner.name.clone())
            .spawn(move || inner.run());
        if let Err(e) = spawned {
            let mut st = self.inner.st.lock();
            st.live -= 1;
            if st.live == 0 {
                // Nobody would ever run it: hand the job back as an error.
                st.jobs.pop_back();
                self.inner.gone.notify_all();
                return Err(format!("starting a {} thread: {e}", self.inner.name));
            }
        }
        Ok(())
    }

    /// Threads running now.
    #[cfg(test)]
    pub fn threads(&self) -> usize {
        self.inner.st.lock().live
    }

    /// Refuse new jobs, let the threads finish every queued one, and wait
    /// until all of them ended.
    pub fn close(&self) {
        let mut st = self.inner.st.lock();
        st.closed = true;
        self.inner.work.notify_all();
        while st.live > 0 {
            self.inner.gone.wait(&mut st);
        }
    }
}

impl<J: Send + 'static> Drop for LazyPool<J> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<J: Send + 'static> Inner<J> {
    fn run(&self) {
        let mut st = self.st.lock();
        loop {
            if let Some(job) = st.jobs.pop_front() {
                drop(st);
                (self.handler)(job);
                st = self.st.lock();
                continue;
            }
            if st.closed {
                break;
            }
            let deadline = Instant::now() + self.idle;
            st.waiting += 1;
            let timed_out = self.work.wait_until(&mut st, deadline).timed_out();
            st.waiting -= 1;
            // A job that arrived just as the wait ended is still taken:
            // the loop looks at the queue before it ends.
            if timed_out && st.jobs.is_empty() {
                break;
            }
        }
        st.live -= 1;
        if st.live == 0 {
            self.gone.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn threads_start_with_work_up_to_the_bound_and_end_when_idle() {
        let done = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let pool = {
            let done = done.clone();
            let gate = gate.clone();
            LazyPool::new(
                "test-pool",
                3,
                Duration::from_millis(100),
                move |n: usize| {
                    let (m, cv) = &*gate;
                    let mut open = m.lock();
                    while !*open {
                        cv.wait(&mut open);
                    }
                    done.fetch_add(n, Ordering::SeqCst);
                },
            )
        };
        assert_eq!(pool.threads(), 0, "no work, no thread");
        for _ in 0..10 {
            pool.send(1).unwrap();
        }
        assert_eq!(pool.threads(), 3, "ten blocked jobs start three threads");
        {
            let (m, cv) = &*gate;
            *m.lock() = true;
            cv.notify_all();
        }
        let t0 = Instant::now();
        while done.load(Ordering::SeqCst) < 10 {
            assert!(t0.elapsed() < Duration::from_secs(10), "jobs never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        while pool.threads() > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "idle threads stayed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Work again after the threads ended: a thread starts again.
        pool.send(5).unwrap();
        while done.load(Ordering::SeqCst) < 15 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the late job never ran"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        pool.close();
        assert_eq!(pool.threads(), 0);
        assert!(pool.send(1).is_err(), "a closed pool refuses jobs");
    }

    #[test]
    fn close_runs_every_queued_job_first() {
        let done = Arc::new(AtomicUsize::new(0));
        let pool = {
            let done = done.clone();
            LazyPool::new("test-pool", 1, Duration::from_secs(5), move |_: ()| {
                std::thread::sleep(Duration::from_millis(2));
                done.fetch_add(1, Ordering::SeqCst);
            })
        };
        for _ in 0..50 {
            pool.send(()).unwrap();
        }
        pool.close();
        assert_eq!(done.load(Ordering::SeqCst), 50);
    }
}
