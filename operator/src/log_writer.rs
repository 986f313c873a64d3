//! A non-blocking writer for the process log (the `tracing` output of the `awooop` binary).
//!
//! One `write` call is one queued message, so lines stay whole as long as each is written
//! with one call: `tracing_subscriber::fmt` formats an event into a buffer and writes it with
//! one `write_all`, which this writer always takes in full.
//!
//! Contract: a log line is handed to one writer thread through a bounded queue and the
//! calling thread goes on; the writer thread writes lines in the order they were queued and
//! flushes whenever the queue is empty, so every line that arrived meanwhile goes out in one
//! system call instead of one per line (under load, one per request from the access log,
//! issue 18). Lines are never dropped: when the queue is full the logging thread waits for
//! room (back-pressure), as it waited for the terminal or pipe before. [`Guard::flush`] waits
//! until every line queued before it is written (the binary calls it before it exits and
//! before it prints its last error). The log is not a guarantee of the platform (audit rows
//! and journals are in PostgreSQL); what the queue may hold when the process is killed is at
//! most the lines of the last moments, which an abrupt kill could lose from a pipe buffer
//! before as well.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Duration;

/// Lines queued before a logging thread waits for the writer.
const QUEUE: usize = 16_384;

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// The writer handed to `tracing_subscriber::fmt().with_writer(..)`.
#[derive(Clone)]
pub struct NonBlocking {
    tx: SyncSender<Msg>,
}

/// Flushes the queue on [`Guard::flush`] and when dropped.
pub struct Guard {
    tx: SyncSender<Msg>,
}

/// Start the writer thread over `out`.
pub fn non_blocking<W: Write + Send + 'static>(out: W) -> io::Result<(NonBlocking, Guard)> {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("awooop-log".into())
        .spawn(move || drain(rx, out))?;
    Ok((NonBlocking { tx: tx.clone() }, Guard { tx }))
}

fn drain<W: Write>(rx: Receiver<Msg>, out: W) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Msg::Line(l) => {
                    let _ = out.write_all(&l);
                }
                Msg::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        // The queue is empty: everything gathered goes out now.
        let _ = out.flush();
    }
    let _ = out.flush();
}

impl Write for NonBlocking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.tx.send(Msg::Line(buf.to_vec())) {
            Ok(()) => Ok(buf.len()),
            // The writer thread is gone (it only stops when every sender is dropped, so this
            // is a panic in it): write directly rather than lose the line.
            Err(_) => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for NonBlocking {
    type Writer = NonBlocking;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Guard {
    /// Wait (at most `timeout`) until every line queued before this call is written.
    pub fn flush_within(&self, timeout: Duration) -> bool {
        let (ack, done) = mpsc::sync_channel(1);
        self.tx.send(Msg::Flush(ack)).is_ok() && done.recv_timeout(timeout).is_ok()
    }

    /// [`Self::flush_within`] two seconds.
    pub fn flush(&self) -> bool {
        self.flush_within(Duration::from_secs(2))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Condvar, Mutex};

    /// An output that holds every write until it is opened, and records what it got.
    #[derive(Clone, Default)]
    struct Gated {
        open: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
    }

    impl Gated {
        fn open(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    impl Write for Gated {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (m, c) = &*self.open;
            let _open = c.wait_while(m.lock().unwrap(), |o| !*o).unwrap();
            self.got.lock().unwrap().extend_from_slice(b);
            *self.writes.lock().unwrap() += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn logging_does_not_wait_for_the_output_and_loses_nothing() {
        let out = Gated::default();
        let (w, guard) = non_blocking(out.clone()).unwrap();
        // The output is blocked: logging threads still go on (a direct writer would hang here).
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        // One `write_all` per line, as the fmt subscriber writes each event.
                        w.write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(out.got.lock().unwrap().is_empty());
        out.open();
        assert!(guard.flush());
        let text = String::from_utf8(out.got.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 4000);
        // In order per thread, nothing lost or torn.
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let want: Vec<String> = (0..1000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, want);
        }
        // Batched: far fewer writes to the output than lines.
        assert!(*out.writes.lock().unwrap() < 4000);
    }

    #[test]
    fn a_full_queue_waits_instead_of_dropping() {
        let out = Gated::default();
        let (w, guard) = non_blocking(out.clone()).unwrap();
        // 100-byte lines: the writer thread's 64 KiB buffer holds 655 of them, the queue
        // QUEUE, so QUEUE + 1000 lines cannot all be taken while the output is blocked.
        let n = QUEUE + 1000;
        let writer = std::thread::spawn(move || {
            let mut w = w;
            for i in 0..n {
                w.write_all(format!("{i:099}\n").as_bytes()).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !writer.is_finished(),
            "more lines than the queue holds: the logger waits"
        );
        out.open();
        writer.join().unwrap();
        assert!(guard.flush());
        let text = String::from_utf8(out.got.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), n);
    }
}
