//! A persistent pool of worker threads that run one function together (SPMD):
//! the caller is thread 0, workers are 1..n. Within a run, threads move from
//! layer to layer as each layer's work is done (`conv::WorkQueue`); the
//! spinning [`Barrier`] serves the profiler, which times layers one by one.
//! Between runs workers sleep on a condition variable. Each participating thread flushes denormals to zero
//! (FTZ/DAZ) for the duration of the job.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A reusable barrier for a fixed number of threads that spins (then yields)
/// instead of sleeping: layers are microseconds to milliseconds long.
pub struct Barrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl Barrier {
    /// A barrier for `threads` participants.
    pub fn new(threads: usize) -> Self {
        Barrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Blocks until all participants have called `wait`.
    pub fn wait(&self) {
        if self.threads == 1 {
            return;
        }
        let gen = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        wait_until(|| self.generation.load(Ordering::Acquire) != gen);
    }
}

/// Spins until `done()` holds, then (after 20 000 spins) yields between
/// checks so that a descheduled thread being waited for can run: the waits
/// inside a run (layers, the profiler's barrier) are microseconds to
/// milliseconds long.
#[inline(always)]
pub(crate) fn wait_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < 20_000 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

type Job = Arc<dyn Fn(usize) + Send + Sync>;

thread_local! {
    /// This thread's index in the job it runs (0 outside the pool's jobs).
    static THREAD_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The calling thread's index in the pool's job it runs: 0 for the caller
/// (and for threads outside the pool), `1..n` for the workers. Work queues
/// give each thread its own home range by it.
#[inline(always)]
pub fn thread_index() -> usize {
    THREAD_INDEX.with(|t| t.get())
}

/// For measurements: the best wall time of `runs` runs of `run(threads)`
/// on `threads` persistent threads (the caller one of them, thread index
/// 0), which meet at a barrier before and after each run; `reset` (a work
/// queue's) runs between runs, when the second barrier has kept every
/// thread out of the queue. Each span starts before the first barrier:
/// threads claim units as they are free, so a worker that ran ahead while
/// the timing thread was descheduled could otherwise make a run look empty.
#[cfg(test)]
pub(crate) fn best_time(
    threads: usize,
    runs: usize,
    run: &(dyn Fn(usize) + Sync),
    reset: &dyn Fn(),
) -> f64 {
    let barrier = Barrier::new(threads);
    let mut best = f64::MAX;
    std::thread::scope(|sc| {
        for index in 1..threads {
            let barrier = &barrier;
            sc.spawn(move || {
                set_thread_index(index);
                for _ in 0..runs {
                    barrier.wait();
                    run(threads);
                    barrier.wait();
                }
            });
        }
        for _ in 0..runs {
            let t = std::time::Instant::now();
            barrier.wait();
            run(threads);
            barrier.wait();
            best = best.min(t.elapsed().as_secs_f64());
            reset();
        }
    });
    best
}

/// Sets [`thread_index`] for the calling thread (tests that stand in for
/// the pool's threads).
#[cfg(test)]
pub(crate) fn set_thread_index(index: usize) {
    THREAD_INDEX.with(|t| t.set(index));
}

struct State {
    job: Option<Job>,
    epoch: u64,
    done: usize,
    shutdown: bool,
}

struct Shared {
    /// `State::epoch`, readable without the lock: workers spin on it for a
    /// while before sleeping on `start`.
    epoch: AtomicU64,
    /// `State::done`, readable without the lock: the caller spins on it for
    /// a while before sleeping on `finished`.
    done: AtomicUsize,
    state: Mutex<State>,
    start: Condvar,
    finished: Condvar,
}

/// The pool. Dropping it stops and joins the workers.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool in which `threads` threads (the caller included) run each job.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            state: Mutex::new(State {
                job: None,
                epoch: 0,
                done: 0,
                shutdown: false,
            }),
            start: Condvar::new(),
            finished: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|tid| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("netc-cpu-{tid}"))
                    .spawn(move || worker(tid, &shared))
                    .expect("spawning a netc worker thread")
            })
            .collect();
        Pool {
            threads,
            shared,
            workers,
        }
    }

    /// Threads per job.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(tid)` on every thread of the pool and returns when all are done.
    /// `f` must not panic: a worker that panics never reports done (and the
    /// other threads would wait for its layer's units), so this would not
    /// return. The kernels are checked at lowering so that they do not.
    pub fn run(&self, f: Job) {
        {
            let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            s.job = Some(f.clone());
            s.epoch += 1;
            s.done = 0;
            self.shared.done.store(0, Ordering::Release);
            self.shared.epoch.store(s.epoch, Ordering::Release);
        }
        self.shared.start.notify_all();
        let outer = THREAD_INDEX.with(|t| t.replace(0));
        with_flush_to_zero(|| f(0));
        THREAD_INDEX.with(|t| t.set(outer));
        spin_while(|| self.shared.done.load(Ordering::Acquire) + 1 < self.threads);
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.done + 1 < self.threads {
            s = self
                .shared
                .finished
                .wait(s)
                .unwrap_or_else(|e| e.into_inner());
        }
        s.job = None;
    }
}

/// How long a thread spins on the pool's state before sleeping on a
/// condition variable. Waking a sleeping thread takes tens of µs (a futex
/// wake and a reschedule): once per inference for the worker, and again for
/// the caller when the worker finishes last; back-to-back inferences (and
/// the per-layer jobs of `--profile`) find a spinning thread instead. ONNX
/// Runtime's pool spins the same way by default. Whole-model medians, two
/// threads, interleaved rounds (Zen 4 host): MobileNetV2 5.36 → 5.28 ms
/// over 12 rounds, EfficientNet-B0 8.17 → 8.06 over 8, ResNet-50 within
/// noise (minima 47.06 → 46.96) — a small gain, as expected of tens of µs
/// per inference.
const SPIN: std::time::Duration = std::time::Duration::from_millis(2);

/// Spins while `busy()` holds, for at most [`SPIN`].
#[inline]
fn spin_while(busy: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    let mut n = 0u32;
    while busy() {
        std::hint::spin_loop();
        n += 1;
        if n.is_multiple_of(64) && start.elapsed() >= SPIN {
            return;
        }
    }
}

fn worker(tid: usize, shared: &Shared) {
    THREAD_INDEX.with(|t| t.set(tid));
    let mut seen = 0u64;
    loop {
        spin_while(|| shared.epoch.load(Ordering::Acquire) == seen);
        let job = {
            let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while s.epoch == seen && !s.shutdown {
                s = shared.start.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.shutdown {
                return;
            }
            seen = s.epoch;
            s.job.clone()
        };
        if let Some(job) = job {
            with_flush_to_zero(|| job(tid));
        }
        let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        s.done += 1;
        shared.done.store(s.done, Ordering::Release);
        shared.finished.notify_all();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown = true;
        // Ends the workers' spinning now rather than at its time limit.
        self.shared.epoch.fetch_add(1, Ordering::Release);
        self.shared.start.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Runs `f` with denormal inputs and results flushed to zero (x86 MXCSR DAZ
/// and FTZ), restoring the caller's mode afterwards: denormals are up to 100×
/// slower and make no difference to a network's output.
pub fn with_flush_to_zero<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        const FTZ_DAZ: u32 = 0x8040;
        let mut old: u32 = 0;
        // SAFETY: reading and writing MXCSR only changes floating-point modes
        // of this thread; the old value is restored below.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut old, options(nostack));
            let new = old | FTZ_DAZ;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &new, options(nostack, readonly));
        }
        let r = f();
        // SAFETY: as above.
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &old, options(nostack, readonly)) };
        r
    }
    #[cfg(not(target_arch = "x86_64"))]
    f()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Pins the calling thread to logical CPU `cpu` (Linux; elsewhere a
    /// no-op).
    fn pin(cpu: usize) {
        #[cfg(target_os = "linux")]
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the call only
        // changes this thread's affinity.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            let ok = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            assert_eq!(ok, 0, "cannot run on CPU {cpu}");
        }
        #[cfg(not(target_os = "linux"))]
        let _ = cpu;
    }

    /// `cargo test --release -p netc-runtime cross_core_costs -- --ignored --nocapture`:
    /// what passing data between the first two logical CPUs costs, as the
    /// network function's threads do at every layer. A cache line's round
    /// trip (one thread sets a flag, the other answers), and the time to
    /// write 188 KB (a 7×7 map of 960 channels) just after the other CPU
    /// read it, against writing it again at once. On this project's host the
    /// two vCPUs sit for minutes at a time on different chiplets: then the
    /// round trip takes 330–370 ns instead of 85–150 and the write after the
    /// other's read 84–103 µs instead of 16–22 (3.3 µs written again at
    /// once); see docs/benchmarks.md.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cross_core_costs() {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            println!("one CPU: nothing to measure");
            return;
        }
        const ROUND_TRIPS: usize = 100_000;
        const RUNS: usize = 100;
        let flag = AtomicUsize::new(0);
        let mut data = vec![0f32; 188 * 1024 / 4];
        let addr = data.as_mut_ptr() as usize;
        let len = data.len();
        let (mut trip, mut after_read, mut local) = (f64::MAX, f64::MAX, f64::MAX);
        std::thread::scope(|s| {
            let flag = &flag;
            s.spawn(move || {
                pin(1);
                for _ in 0..ROUND_TRIPS {
                    while flag.load(Ordering::Acquire) != 1 {}
                    flag.store(0, Ordering::Release);
                }
                for _ in 0..RUNS {
                    while flag.load(Ordering::Acquire) != 2 {}
                    // SAFETY: the main thread does not touch the data until
                    // the flag says this read is done.
                    let d = unsafe { std::slice::from_raw_parts(addr as *const f32, len) };
                    let sum: f32 = d.iter().step_by(16).sum();
                    std::hint::black_box(sum);
                    flag.store(3, Ordering::Release);
                }
            });
            pin(0);
            let t = std::time::Instant::now();
            for _ in 0..ROUND_TRIPS {
                flag.store(1, Ordering::Release);
                while flag.load(Ordering::Acquire) != 0 {}
            }
            trip = t.elapsed().as_secs_f64() / ROUND_TRIPS as f64;
            for run in 0..RUNS {
                flag.store(2, Ordering::Release);
                while flag.load(Ordering::Acquire) != 3 {}
                // SAFETY: the other thread is done reading until the next run.
                let d = unsafe { std::slice::from_raw_parts_mut(addr as *mut f32, len) };
                let t = std::time::Instant::now();
                d.iter_mut().for_each(|v| *v = run as f32);
                std::hint::black_box(&d);
                after_read = after_read.min(t.elapsed().as_secs_f64());
                let t = std::time::Instant::now();
                d.iter_mut().for_each(|v| *v = -(run as f32));
                std::hint::black_box(&d);
                local = local.min(t.elapsed().as_secs_f64());
            }
        });
        println!(
            "round trip {:.0} ns; writing 188 KB after the other CPU read it {:.1} us, again {:.1} us",
            trip * 1e9,
            after_read * 1e6,
            local * 1e6
        );
    }
}
