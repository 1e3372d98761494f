//! The plain-text log line's fields and timestamp, written the way tracing-subscriber's default
//! formatter writes them without colour, at a fraction of its cost.
//!
//! Every request writes a line, so its formatting is on the path of the cheapest request there
//! is, a cached manifest GET: there, tracing-subscriber's field visitor (every value through
//! `core::fmt`, every string through `Debug`'s escaping) and its timestamp (the calendar date
//! worked out anew for every line) were 4–5% of the CPU. Here a string that needs no escaping
//! is copied as it is, and the date and time to the second are worked out once a second.

use std::cell::RefCell;
use std::fmt::{self, Debug, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Fields as the default formatter writes them without colour: the message bare, then
/// `name=value` separated by spaces, strings quoted and escaped as `Debug` does, `%` values as
/// displayed.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes one event's (or span's) fields; the first error stops it.
struct PlainVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Writes the separator and `name=` (nothing for the message), then the value.
    fn write(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        let writer = &mut self.writer;
        self.result = writer
            .write_str(separator)
            .and_then(|()| match field.name() {
                "message" => Ok(()),
                name => writer.write_str(name).and_then(|()| writer.write_char('=')),
            })
            .and_then(|()| value(writer));
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, |writer| write_quoted(writer, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field, |writer| write_decimal(writer, value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.write(field, |writer| write_f64(writer, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field, |writer| write!(writer, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.write(field, |writer| {
            writer.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.write(field, |writer| write!(writer, "{value:?}"));
    }
}

/// `value` in decimal, as `{}` writes it, without the formatter's padding machinery.
fn write_decimal(writer: &mut Writer<'_>, mut value: u64) -> fmt::Result {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    writer.write_str(std::str::from_utf8(&digits[start..]).map_err(|_| fmt::Error)?)
}

/// `value` as `{:?}` writes it. A duration in milliseconds rounded to hundredths (every log
/// line's `duration_ms`) is written from its integer hundredths: for such a number `{:?}`'s
/// shortest round-trip form is exactly those digits, trailing zeros dropped.
fn write_f64(writer: &mut Writer<'_>, value: f64) -> fmt::Result {
    let hundredths = (value * 100.0).round();
    let exact = value.is_sign_positive()
        && (0.0..1e11).contains(&hundredths)
        && hundredths / 100.0 == value;
    if !exact {
        return write!(writer, "{value:?}");
    }
    // In range and integral, checked above.
    let hundredths = hundredths as u64;
    write_decimal(writer, hundredths / 100)?;
    writer.write_char('.')?;
    let fraction = hundredths % 100;
    if fraction.is_multiple_of(10) {
        write_decimal(writer, fraction / 10)
    } else {
        writer.write_char(char::from(b'0' + (fraction / 10) as u8))?;
        writer.write_char(char::from(b'0' + (fraction % 10) as u8))
    }
}

/// `value` quoted and escaped exactly as `{:?}` would; copied as it is when it has nothing
/// to escape (printable ASCII without `"` or `\`), the usual case for a path or a name.
fn write_quoted(writer: &mut Writer<'_>, value: &str) -> fmt::Result {
    let plain = value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if plain {
        writer.write_char('"')?;
        writer.write_str(value)?;
        writer.write_char('"')
    } else {
        write!(writer, "{value:?}")
    }
}

/// UTC time with microseconds, `2026-12-07T14:44:11.214549Z`, as tracing-subscriber's
/// `SystemTime` writes it; the part up to the second is worked out once a second per thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct UtcMicros;

impl FormatTime for UtcMicros {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        thread_local! {
            static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
        }
        let Ok(since_epoch) = SystemTime::now().duration_since(UNIX_EPOCH) else {
            // A clock before 1970: let tracing-subscriber say what it makes of it.
            return tracing_subscriber::fmt::time::SystemTime.format_time(writer);
        };
        let seconds = since_epoch.as_secs();
        SECOND.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != seconds {
                cached.1.clear();
                write_utc_seconds(&mut cached.1, seconds)?;
                cached.0 = seconds;
            }
            writer.write_str(&cached.1)
        })?;
        write!(writer, ".{:06}Z", since_epoch.subsec_micros())
    }
}

/// `seconds` since the epoch as `YYYY-MM-DDTHH:MM:SS` in UTC.
fn write_utc_seconds(out: &mut impl Write, seconds: u64) -> fmt::Result {
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468; // days since 0000-03-01
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    fn utc(seconds: u64) -> String {
        let mut out = String::new();
        write_utc_seconds(&mut out, seconds).unwrap();
        out
    }

    #[test]
    fn dates_across_leap_days_centuries_and_year_ends() {
        assert_eq!(utc(0), "1970-01-01T00:00:00");
        assert_eq!(utc(951_782_399), "2000-02-28T23:59:59");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(utc(951_868_800), "2000-03-01T00:00:00");
        assert_eq!(utc(1_709_164_800), "2024-02-29T00:00:00");
        assert_eq!(utc(1_798_761_599), "2026-12-31T23:59:59");
        assert_eq!(utc(1_798_761_600), "2027-01-01T00:00:00");
        assert_eq!(utc(4_107_542_400), "2100-03-01T00:00:00");
    }

    /// Every day for three centuries, against a calendar counted one day at a time.
    #[test]
    fn every_day_matches_a_calendar_counted_day_by_day() {
        let leap = |year: u64| {
            year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
        };
        let month_days = |year: u64, month: u64| match month {
            2 if leap(year) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut date = (1970, 1, 1);
        for days in 0..(300 * 366) {
            assert_eq!(civil_from_days(days), date, "day {days}");
            date.2 += 1;
            if date.2 > month_days(date.0, date.1) {
                date = if date.1 == 12 {
                    (date.0 + 1, 1, 1)
                } else {
                    (date.0, date.1 + 1, 1)
                };
            }
        }
    }

    /// The same line, field for field, as tracing-subscriber's own formatter without colour.
    #[test]
    fn fields_are_written_as_the_default_formatter_writes_them() {
        let ours = line_with(PlainFields);
        let theirs = line_with(tracing_subscriber::fmt::format::DefaultFields::new());
        assert_eq!(ours, theirs);
        assert!(ours.contains(r#"quoted="a \"b\" \\ c\n""#), "{ours}");
        assert!(ours.contains(r#"unicode="ü\u{7}""#), "{ours}");
    }

    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl MakeWriter<'_> for Captured {
        type Writer = Captured;
        fn make_writer(&self) -> Captured {
            self.clone()
        }
    }

    fn line_with<F>(fields: F) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(captured.clone())
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                path = %"/v2/app/manifests/v1",
                user = "-",
                quoted = "a \"b\" \\ c\n",
                unicode = "ü\u{7}",
                status = 200u16,
                bytes = 18_446_744_073_709_551_615u64,
                delta = -3i64,
                duration_ms = 0.25f64,
                complete = true,
                "request"
            );
        });
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn numbers_are_written_as_the_formatter_writes_them() {
        let written = |write: &dyn Fn(&mut Writer<'_>) -> fmt::Result| {
            let mut out = String::new();
            write(&mut Writer::new(&mut out)).unwrap();
            out
        };
        for value in [0, 7, 10, 99, 100, 12_345, u64::MAX] {
            assert_eq!(written(&|w| write_decimal(w, value)), value.to_string());
        }
        let mut durations: Vec<f64> = (0..100_000).map(|n| f64::from(n) / 100.0).collect();
        durations.extend([
            123_456.78,
            -0.0,
            0.125,
            1e-7,
            1e300,
            -1.5,
            f64::NAN,
            f64::INFINITY,
        ]);
        for value in durations {
            assert_eq!(written(&|w| write_f64(w, value)), format!("{value:?}"));
        }
    }

    /// The timestamp as tracing-subscriber writes it: same shape, the same second or the next.
    #[test]
    fn the_timestamp_has_tracing_subscribers_shape() {
        let mut ours = String::new();
        UtcMicros.format_time(&mut Writer::new(&mut ours)).unwrap();
        let mut theirs = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ours} vs {theirs}");
        assert_eq!(ours.len(), "2026-12-07T14:44:11.214549Z".len());
        assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
        // Equal to the minute unless a minute ended between the two reads.
        let minute = |s: &str| s[..16].to_owned();
        let mut again = String::new();
        UtcMicros.format_time(&mut Writer::new(&mut again)).unwrap();
        assert!(minute(&ours) == minute(&theirs) || minute(&again) == minute(&theirs));
    }
}
