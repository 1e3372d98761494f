//! Byte ranges as HTTP carries them: a client's `Range: bytes=...` and a `Content-Range` (an
//! upstream's answer to a ranged GET, or a client's upload chunk). One parser for each, used by
//! every layer.

/// A `Range` header that is not a valid byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed Range header")]
pub struct MalformedRange;

/// A single byte range as a client may ask for it (`Range: bytes=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (inclusive).
    FromTo(u64, u64),
    /// `bytes=a-`.
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header. `Ok(None)` for headers we may ignore (other units, several
    /// ranges: answered with the whole blob, as RFC 9110 allows); `Err` for malformed ones.
    pub fn parse_header(value: &str) -> Result<Option<ByteRange>, MalformedRange> {
        let Some(spec) = value.trim().strip_prefix("bytes=") else {
            return Ok(None);
        };
        if spec.contains(',') {
            return Ok(None);
        }
        let (a, b) = spec.trim().split_once('-').ok_or(MalformedRange)?;
        let num = |s: &str| s.trim().parse::<u64>().map_err(|_| MalformedRange);
        match (a.trim().is_empty(), b.trim().is_empty()) {
            (true, true) => Err(MalformedRange),
            (true, false) => Ok(Some(ByteRange::Suffix(num(b)?))),
            (false, true) => Ok(Some(ByteRange::From(num(a)?))),
            (false, false) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a {
                    return Err(MalformedRange);
                }
                Ok(Some(ByteRange::FromTo(a, b)))
            }
        }
    }

    /// The half-open span `[start, end)` within a blob of `size` bytes, or `None` when the
    /// range is unsatisfiable.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        let (start, end) = match self {
            ByteRange::FromTo(a, b) => (a, b.saturating_add(1).min(size)),
            ByteRange::From(a) => (a, size),
            ByteRange::Suffix(0) => return None,
            ByteRange::Suffix(n) => (size.saturating_sub(n), size),
        };
        (start < size && start < end).then_some((start, end))
    }
}

/// A `Content-Range` value: `bytes <start>-<end>/<total>` as servers send it, or `<start>-<end>`
/// as the distribution spec has clients send it with upload chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// The first byte.
    pub start: u64,
    /// The last byte (inclusive).
    pub end: u64,
}

impl ContentRange {
    /// Parses a `Content-Range` value; `Err` unless it has a start and an end not before it.
    pub fn parse(value: &str) -> Result<ContentRange, MalformedRange> {
        let text = value.trim();
        let text = text.strip_prefix("bytes ").unwrap_or(text).trim();
        let span = text.split('/').next().unwrap_or("");
        let (start, end) = span.split_once('-').ok_or(MalformedRange)?;
        let num = |s: &str| s.trim().parse::<u64>().map_err(|_| MalformedRange);
        let (start, end) = (num(start)?, num(end)?);
        if end < start {
            return Err(MalformedRange);
        }
        Ok(ContentRange { start, end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges() {
        assert_eq!(
            ByteRange::parse_header("bytes=0-99"),
            Ok(Some(ByteRange::FromTo(0, 99)))
        );
        assert_eq!(
            ByteRange::parse_header("bytes=100-"),
            Ok(Some(ByteRange::From(100)))
        );
        assert_eq!(
            ByteRange::parse_header("bytes=-5"),
            Ok(Some(ByteRange::Suffix(5)))
        );
        assert_eq!(ByteRange::parse_header("items=0-1"), Ok(None));
        assert_eq!(ByteRange::parse_header("bytes=0-1,5-6"), Ok(None));
        assert_eq!(ByteRange::parse_header("bytes=5-1"), Err(MalformedRange));
        assert_eq!(ByteRange::parse_header("bytes=-"), Err(MalformedRange));
        assert_eq!(ByteRange::parse_header("bytes=a-b"), Err(MalformedRange));
    }

    #[test]
    fn resolves_ranges() {
        assert_eq!(ByteRange::FromTo(0, 99).resolve(50), Some((0, 50)));
        assert_eq!(ByteRange::FromTo(10, 19).resolve(50), Some((10, 20)));
        assert_eq!(ByteRange::From(49).resolve(50), Some((49, 50)));
        assert_eq!(ByteRange::From(50).resolve(50), None);
        assert_eq!(ByteRange::Suffix(10).resolve(50), Some((40, 50)));
        assert_eq!(ByteRange::Suffix(100).resolve(50), Some((0, 50)));
        assert_eq!(ByteRange::Suffix(0).resolve(50), None);
        assert_eq!(ByteRange::From(0).resolve(0), None);
    }

    #[test]
    fn parses_content_ranges() {
        let range = |start, end| Ok(ContentRange { start, end });
        assert_eq!(ContentRange::parse("bytes 100-199/1000"), range(100, 199));
        assert_eq!(ContentRange::parse("bytes 0-0/*"), range(0, 0));
        assert_eq!(ContentRange::parse("0-1023"), range(0, 1023));
        assert_eq!(ContentRange::parse(" 5 - 9 "), range(5, 9));
        assert_eq!(ContentRange::parse("bytes */1000"), Err(MalformedRange));
        assert_eq!(ContentRange::parse("9-5"), Err(MalformedRange));
        assert_eq!(ContentRange::parse("5-"), Err(MalformedRange));
        assert_eq!(ContentRange::parse("x-y"), Err(MalformedRange));
    }
}
