//! Ctrl-C (SIGINT) and SIGTERM as a flag the demo checks between steps.
//!
//! The demo must remove everything it made even when interrupted, so a signal may not end the
//! process: it only raises a flag. The demo checks the flag between steps, while it waits, and
//! between small batches of requests, then unwinds through the same clean-up as a normal end. A
//! second Ctrl-C during clean-up changes nothing (the handlers stay installed), so clean-up is
//! never cut short.
//!
//! The handlers are tokio's (already a dependency of the daemon): registering them replaces the
//! default "terminate" action for the whole process, and a small thread with its own
//! current-thread runtime turns each delivery into a store to the flag.

use std::{
    sync::{
        atomic::{AtomicI32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// The demo was interrupted by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by {}", signal_name(*.0))]
pub struct Interrupted(pub i32);

/// The usual name of a signal number the demo handles.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT (Ctrl-C)",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The flag that SIGINT and SIGTERM raise; cheap to clone and check.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    /// 0 while no signal came, else the first signal's number.
    signal: Arc<AtomicI32>,
}

impl Interrupt {
    /// Installs the handlers for SIGINT and SIGTERM. From now on neither ends the process.
    pub fn install() -> std::io::Result<Interrupt> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Registered here, before this returns, so no signal can slip through unhandled.
        let (mut int, mut term) = runtime.block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })?;
        let flag = Interrupt::default();
        let raise = flag.clone();
        std::thread::Builder::new()
            .name("demo-signals".into())
            .spawn(move || {
                runtime.block_on(async move {
                    loop {
                        let got = tokio::select! {
                            Some(()) = int.recv() => libc::SIGINT,
                            Some(()) = term.recv() => libc::SIGTERM,
                            else => break,
                        };
                        raise.raise(got);
                    }
                })
            })?;
        Ok(flag)
    }

    /// Records `signal` (the first one wins).
    pub fn raise(&self, signal: i32) {
        let _ = self
            .signal
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// `Err` once a signal came.
    pub fn check(&self) -> Result<(), Interrupted> {
        match self.signal.load(Ordering::SeqCst) {
            0 => Ok(()),
            s => Err(Interrupted(s)),
        }
    }

    /// Sleeps for `d`, waking early (with `Err`) when a signal comes.
    pub fn sleep(&self, d: Duration) -> Result<(), Interrupted> {
        let end = Instant::now() + d;
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_signal_is_kept_and_sleep_wakes_up() {
        let flag = Interrupt::default();
        assert_eq!(flag.check(), Ok(()));
        assert_eq!(flag.sleep(Duration::from_millis(1)), Ok(()));
        let raiser = flag.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            raiser.raise(libc::SIGTERM);
            raiser.raise(libc::SIGINT);
        });
        // Without the signal this would sleep for an hour.
        assert_eq!(
            flag.sleep(Duration::from_secs(3600)),
            Err(Interrupted(libc::SIGTERM))
        );
        t.join().unwrap();
        assert_eq!(flag.check(), Err(Interrupted(libc::SIGTERM)));
        assert_eq!(
            Interrupted(libc::SIGINT).to_string(),
            "interrupted by SIGINT (Ctrl-C)"
        );
    }
}
