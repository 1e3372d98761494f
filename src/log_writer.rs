//! The log's writer: lines are appended to a shared buffer where they are logged and written
//! out by one thread, a burst at a time.
//!
//! Why not a channel to a writer thread (tracing-appender's `non_blocking`)? Under load that
//! thread woke for nearly every line: a cached manifest GET paid a channel send, often a
//! futex wake of the writer, and the writer's spinning, wake-up and `write(2)` for every
//! second request — about a seventh of the request's CPU with logging on. Here a line costs
//! an uncontended lock and a copy; the thread is woken only by the first line after a write
//! (an `unpark`, a system call only when it is parked), waits [`GATHER`] for the rest of the
//! burst and writes it in one `write(2)`: a few hundred writes a second at any request rate.
//!
//! Nothing is dropped: when the thread falls behind by [`PENDING_LIMIT`] bytes (stderr is a
//! full pipe, a slow disk), whoever logs next writes the backlog and its line itself, in order,
//! and everyone logging waits for that, as they would for a blocking stderr. Lines appear at
//! most [`GATHER`] after they are logged; [`LogWriterGuard`] writes what is left when dropped.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

/// How long the writer thread lets lines gather after the first one woke it.
pub const GATHER: Duration = Duration::from_millis(2);

/// How many bytes may wait for the writer thread before whoever logs writes them itself.
pub const PENDING_LIMIT: usize = 1024 * 1024;

/// The `MakeWriter` handed to the tracing subscriber: every line goes to the shared buffer.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
    thread: Thread,
}

/// Stops the writer thread and writes every line still waiting, when dropped.
pub struct LogWriterGuard {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

/// What the loggers and the writer thread share. Lock order: `pending`, then `output`.
struct Shared {
    pending: Mutex<Vec<u8>>,
    output: Mutex<Box<dyn Write + Send>>,
    closing: AtomicBool,
}

impl LogWriter {
    /// Starts the writer thread (named `regmirror-log`) writing to `output`.
    pub fn spawn(output: Box<dyn Write + Send>) -> io::Result<(LogWriter, LogWriterGuard)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            output: Mutex::new(output),
            closing: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("regmirror-log".into())
            .spawn(move || for_thread.write_until_closed())?;
        let writer = LogWriter {
            shared: Arc::clone(&shared),
            thread: handle.thread().clone(),
        };
        let guard = LogWriterGuard {
            shared,
            handle: Some(handle),
        };
        Ok((writer, guard))
    }

    /// Appends one formatted line (or part of one) for the writer thread.
    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        let mut pending = lock(&self.shared.pending);
        if pending.len() + bytes.len() > PENDING_LIMIT {
            // The thread is behind: write the backlog and this line here, in order, holding
            // `pending` so that every other logger waits rather than piling up more.
            let mut output = lock(&self.shared.output);
            output.write_all(&pending)?;
            pending.clear();
            output.write_all(bytes)?;
            return output.flush();
        }
        let wake = pending.is_empty();
        pending.extend_from_slice(bytes);
        drop(pending);
        if wake {
            self.thread.unpark();
        }
        Ok(())
    }
}

impl Shared {
    /// The writer thread: sleeps until a line arrives, lets the burst gather, writes it.
    fn write_until_closed(&self) {
        let mut batch = Vec::new();
        loop {
            thread::park();
            let closing = self.closing.load(Ordering::Acquire);
            if !closing {
                thread::sleep(GATHER);
            }
            self.write_pending(&mut batch);
            if closing {
                return;
            }
        }
    }

    /// Takes what is pending and writes it, in one `write(2)` when it fits.
    fn write_pending(&self, batch: &mut Vec<u8>) {
        let mut pending = lock(&self.pending);
        if pending.is_empty() {
            return;
        }
        std::mem::swap(&mut *pending, batch);
        // Taken before `pending` is let go, so that an overflowing logger cannot write
        // newer lines ahead of this batch.
        let mut output = lock(&self.output);
        drop(pending);
        // A log that cannot be written has nowhere to report that; the lines are dropped
        // rather than kept growing.
        let _ = output.write_all(batch).and_then(|()| output.flush());
        batch.clear();
        if batch.capacity() > PENDING_LIMIT {
            batch.shrink_to(PENDING_LIMIT);
        }
    }
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
        // Lines logged after the thread's last look.
        self.shared.write_pending(&mut Vec::new());
    }
}

/// Locks `mutex`, carrying on if a logger panicked while holding it: the buffer holds only
/// whole `Vec` states, never a half-made one.
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Write for &LogWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.append(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// An output that reports every `write` call to the test.
    struct Recorder(mpsc::Sender<Vec<u8>>);

    impl Write for Recorder {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _ = self.0.send(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn recorded() -> (LogWriter, LogWriterGuard, mpsc::Receiver<Vec<u8>>) {
        let (sender, receiver) = mpsc::channel();
        let (writer, guard) = LogWriter::spawn(Box::new(Recorder(sender))).unwrap();
        (writer, guard, receiver)
    }

    #[test]
    fn a_line_is_written_soon_after_it_is_logged() {
        let (writer, _guard, writes) = recorded();
        (&writer).write_all(b"one\n").unwrap();
        let written = writes.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(written, b"one\n");
    }

    #[test]
    fn a_burst_is_written_in_one_write_and_in_order() {
        let (writer, guard, writes) = recorded();
        // Held so that the thread cannot write before the burst is in.
        let pending = lock(&writer.shared.pending);
        let thread = writer.clone();
        let burst = thread::spawn(move || {
            for n in 0..100 {
                (&thread)
                    .write_all(format!("line {n}\n").as_bytes())
                    .unwrap();
            }
        });
        drop(pending);
        burst.join().unwrap();
        drop(guard);
        let all: Vec<Vec<u8>> = writes.try_iter().collect();
        let expected: String = (0..100).map(|n| format!("line {n}\n")).collect();
        assert_eq!(all.concat(), expected.as_bytes());
        assert!(all.len() < 10, "{} writes for 100 lines", all.len());
    }

    #[test]
    fn dropping_the_guard_writes_what_is_left() {
        let (writer, guard, writes) = recorded();
        for n in 0..1000 {
            (&writer).write_all(format!("{n}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let expected: String = (0..1000).map(|n| format!("{n}\n")).collect();
        assert_eq!(
            writes.try_iter().collect::<Vec<_>>().concat(),
            expected.as_bytes()
        );
    }

    /// An output whose first write waits until the test opens the gate.
    struct Gated {
        started: mpsc::Sender<()>,
        gate: Option<mpsc::Receiver<()>>,
        written: mpsc::Sender<Vec<u8>>,
    }

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if let Some(gate) = self.gate.take() {
                let _ = self.started.send(());
                let _ = gate.recv();
            }
            let _ = self.written.send(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_backlog_past_the_limit_waits_for_the_output_and_loses_nothing() {
        let (started, writing) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let (written, writes) = mpsc::channel();
        let output = Gated {
            started,
            gate: Some(gate),
            written,
        };
        let (writer, guard) = LogWriter::spawn(Box::new(output)).unwrap();
        (&writer).write_all(b"first\n").unwrap();
        // The writer thread is stuck in its first write, as on a full pipe.
        writing.recv_timeout(Duration::from_secs(10)).unwrap();
        let line = [vec![b'x'; 64 * 1024 - 1], vec![b'\n']].concat();
        let lines = 2 * PENDING_LIMIT / line.len();
        let logged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (done, finished) = mpsc::channel();
        let logger = {
            let (writer, line, logged) = (writer.clone(), line.clone(), Arc::clone(&logged));
            thread::spawn(move || {
                for _ in 0..lines {
                    (&writer).write_all(&line).unwrap();
                    logged.fetch_add(1, Ordering::SeqCst);
                }
                let _ = done.send(());
            })
        };
        // What fits is buffered; the line past the limit waits for the stuck output.
        let fits = PENDING_LIMIT / line.len();
        while logged.load(Ordering::SeqCst) < fits {
            thread::yield_now();
        }
        assert!(finished.recv_timeout(Duration::from_millis(200)).is_err());
        assert_eq!(logged.load(Ordering::SeqCst), fits);
        open.send(()).unwrap();
        logger.join().unwrap();
        drop(guard);
        let all = writes.try_iter().collect::<Vec<_>>().concat();
        let expected = [b"first\n".to_vec(), line.repeat(lines)].concat();
        assert_eq!(all.len(), expected.len());
        assert!(all == expected, "lines lost or reordered");
    }
}
