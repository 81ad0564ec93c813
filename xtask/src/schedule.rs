//! Runs jobs that depend on earlier jobs on a fixed number of slots: `reproduce --jobs N` runs the
//! grid's cells this way, each slot a thread that drives one `kdlora train` child at a time.
//!
//! Kept free of anything grid-specific so that the ordering and concurrency rules can be tested with
//! fake jobs.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// One job handed to the runner.
pub struct Job<T> {
    /// Position of the job in the list given to [`run_jobs`].
    pub index: usize,
    /// The slot (0..slots) running it: what a slot stands for (a device) is the caller's.
    pub slot: usize,
    /// The results of the job's dependencies, in the order its dependency list names them.
    pub deps: Vec<T>,
}

struct State<T, E> {
    started: Vec<bool>,
    results: Vec<Option<T>>,
    error: Option<E>,
    /// A job panicked: no result will come for it, so nobody may wait for one.
    panicked: bool,
}

/// Runs jobs `0..deps.len()` on `slots` threads and returns their results in job order.
///
/// Job `i` starts only after every job in `deps[i]` has finished, and may depend only on earlier
/// jobs (a cycle would otherwise wait forever). Of the jobs that may start, those that other jobs
/// wait on go first, then the lowest index: teachers before the rest, so students are not left
/// waiting at the end while slots trained baselines. With one slot this is index order for lists
/// where waited-on jobs come first (the grid's cells).
///
/// The first error stops further jobs from starting; jobs already running finish, then that error
/// is returned. A panicking job stops the others the same way and the panic is passed on.
pub fn run_jobs<T, E, F>(deps: &[Vec<usize>], slots: usize, run: F) -> Result<Vec<T>, E>
where
    T: Clone + Send,
    E: Send,
    F: Fn(Job<T>) -> Result<T, E> + Sync,
{
    let n = deps.len();
    let mut waited_on = vec![false; n];
    for (i, d) in deps.iter().enumerate() {
        assert!(
            d.iter().all(|&j| j < i),
            "job {i} depends on a later job ({d:?}); only earlier ones are allowed"
        );
        for &j in d {
            waited_on[j] = true;
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (!waited_on[i], i));
    let state = Mutex::new(State {
        started: vec![false; n],
        results: vec![None; n],
        error: None,
        panicked: false,
    });
    let changed = Condvar::new();
    std::thread::scope(|scope| {
        for slot in 0..slots.max(1).min(n) {
            let (state, changed, order, run) = (&state, &changed, &order, &run);
            scope.spawn(move || worker(slot, deps, order, state, changed, run));
        }
    });
    let state = state.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = state.error {
        return Err(e);
    }
    Ok(state
        .results
        .into_iter()
        .map(|r| r.expect("without an error every job ran"))
        .collect())
}

fn lock<T, E>(state: &Mutex<State<T, E>>) -> MutexGuard<'_, State<T, E>> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn worker<T, E, F>(
    slot: usize,
    deps: &[Vec<usize>],
    order: &[usize],
    state: &Mutex<State<T, E>>,
    changed: &Condvar,
    run: &F,
) where
    T: Clone,
    F: Fn(Job<T>) -> Result<T, E>,
{
    let mut guard = lock(state);
    loop {
        if guard.error.is_some() || guard.panicked {
            return;
        }
        let ready = order
            .iter()
            .copied()
            .find(|&i| !guard.started[i] && deps[i].iter().all(|&j| guard.results[j].is_some()));
        let Some(index) = ready else {
            if guard.started.iter().all(|&s| s) {
                return;
            }
            // Dependencies are earlier jobs, so an unstarted job that is not ready waits on one
            // that is running, and its end will wake us.
            guard = changed.wait(guard).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        guard.started[index] = true;
        let dep_results = deps[index]
            .iter()
            .map(|&j| guard.results[j].clone().expect("checked ready"))
            .collect();
        drop(guard);
        let on_panic = WakeOnPanic { state, changed };
        let result = run(Job {
            index,
            slot,
            deps: dep_results,
        });
        drop(on_panic);
        guard = lock(state);
        match result {
            Ok(t) => guard.results[index] = Some(t),
            Err(e) => {
                guard.error.get_or_insert(e);
            }
        }
        changed.notify_all();
    }
}

/// Without it, a panicking job would leave the other slots waiting for its result forever.
struct WakeOnPanic<'a, T, E> {
    state: &'a Mutex<State<T, E>>,
    changed: &'a Condvar,
}

impl<T, E> Drop for WakeOnPanic<'_, T, E> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(self.state).panicked = true;
            self.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Event {
        Start(usize),
        End(usize),
    }

    /// The grid's shape: two teachers, two baselines, two students of both teachers.
    fn grid_deps() -> Vec<Vec<usize>> {
        vec![vec![], vec![], vec![], vec![], vec![0, 1], vec![0, 1]]
    }

    #[test]
    fn never_more_than_the_slots_run_at_once_and_all_slots_get_used() {
        for slots in [1, 2, 3] {
            let running = AtomicUsize::new(0);
            let most = Mutex::new(0usize);
            let reached = Condvar::new();
            let results = run_jobs::<_, (), _>(&vec![vec![]; 12], slots, |job| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                let mut m = most.lock().unwrap();
                *m = (*m).max(now);
                reached.notify_all();
                // Hold the slot until `slots` jobs ran at once (the runner must let them), with a
                // generous cap so that a runner that does not fails the assertion below instead
                // of hanging the test.
                let (m, _) = reached
                    .wait_timeout_while(m, Duration::from_secs(20), |m| *m < slots)
                    .unwrap();
                drop(m);
                std::thread::sleep(Duration::from_millis(2));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(job.index * 10)
            })
            .unwrap();
            assert_eq!(*most.lock().unwrap(), slots, "slots {slots}");
            assert_eq!(results, (0..12).map(|i| i * 10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_job_starts_only_after_its_dependencies_finished_and_gets_their_results() {
        for slots in [1, 2, 4, 8] {
            let events = Mutex::new(Vec::new());
            let deps = grid_deps();
            let results = run_jobs::<_, (), _>(&deps, slots, |job| {
                events.lock().unwrap().push(Event::Start(job.index));
                let expected: Vec<String> =
                    deps[job.index].iter().map(|j| format!("r{j}")).collect();
                assert_eq!(job.deps, expected, "job {}", job.index);
                // Teachers take longer, so students that started early would show.
                if job.index < 2 {
                    std::thread::sleep(Duration::from_millis(20));
                }
                events.lock().unwrap().push(Event::End(job.index));
                Ok(format!("r{}", job.index))
            })
            .unwrap();
            assert_eq!(results, ["r0", "r1", "r2", "r3", "r4", "r5"]);
            let events = events.into_inner().unwrap();
            let at = |e: Event| events.iter().position(|&x| x == e).unwrap();
            for (i, d) in deps.iter().enumerate() {
                for &j in d {
                    assert!(
                        at(Event::End(j)) < at(Event::Start(i)),
                        "slots {slots}: {i} started before {j} ended: {events:?}"
                    );
                }
            }
            if slots == 1 {
                let starts: Vec<_> = events
                    .iter()
                    .filter_map(|e| match e {
                        Event::Start(i) => Some(*i),
                        Event::End(_) => None,
                    })
                    .collect();
                assert_eq!(starts, [0, 1, 2, 3, 4, 5], "one slot keeps the list order");
            }
        }
    }

    #[test]
    fn waited_on_jobs_start_first() {
        // Job 3 is a teacher listed after two baselines: with one slot it still goes first.
        let deps = vec![vec![], vec![], vec![], vec![], vec![3]];
        let order = Mutex::new(Vec::new());
        run_jobs::<_, (), _>(&deps, 1, |job| {
            order.lock().unwrap().push(job.index);
            Ok(())
        })
        .unwrap();
        assert_eq!(order.into_inner().unwrap(), [3, 0, 1, 2, 4]);
    }

    #[test]
    fn an_error_stops_new_jobs_and_lets_running_ones_finish() {
        let started = Mutex::new(Vec::new());
        let err = run_jobs(&vec![vec![]; 6], 1, |job| {
            started.lock().unwrap().push(job.index);
            if job.index == 2 {
                Err(format!("job {} broke", job.index))
            } else {
                Ok(job.index)
            }
        })
        .unwrap_err();
        assert_eq!(err, "job 2 broke");
        assert_eq!(started.into_inner().unwrap(), [0, 1, 2]);

        // With two slots the job beside the failing one still completes. The failing job waits
        // until the other has started (the cap only keeps a broken runner from hanging the test).
        let finished = AtomicUsize::new(0);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let started_rx = Mutex::new(started_rx);
        let err = run_jobs(&vec![vec![]; 2], 2, |job| {
            if job.index == 0 {
                let _ = started_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(20));
                return Err("no");
            }
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err, "no");
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_panicking_teacher_does_not_leave_its_students_waiting() {
        let outcome = std::panic::catch_unwind(|| {
            run_jobs::<(), (), _>(&grid_deps(), 3, |job| {
                if job.index == 0 {
                    panic!("teacher panicked");
                }
                Ok(())
            })
        });
        assert!(outcome.is_err(), "the panic is passed on");
    }

    #[test]
    fn no_jobs_and_more_slots_than_jobs_are_fine() {
        assert!(
            run_jobs::<(), (), _>(&[], 4, |_| Ok(()))
                .unwrap()
                .is_empty()
        );
        let slots_seen = Mutex::new(Vec::new());
        run_jobs::<(), (), _>(&[vec![], vec![]], 8, |job| {
            slots_seen.lock().unwrap().push(job.slot);
            Ok(())
        })
        .unwrap();
        assert!(slots_seen.into_inner().unwrap().iter().all(|&s| s < 2));
    }
}
