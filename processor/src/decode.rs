//! Strict bytes: the one place that decides whether a document's bytes are text XML 1.0 accepts, before anything
//! parses or stores them. Nothing is ever replaced: a document that is not valid in its encoding, or that holds a
//! character XML 1.0 forbids (U+0000–U+001F except tab, LF and CR; U+FFFE; U+FFFF), is refused with the byte
//! offset of the first offending byte, and `run` logs it `failed` with `parse: …`.
//!
//! Accepted encodings (files given to `load`): UTF-8 with or without a byte-order mark, UTF-16 LE/BE with a
//! byte-order mark, and, without a byte-order mark, a declared `US-ASCII` or `ISO-8859-1` (transcoded to UTF-8 as
//! it is loaded). Anything else (UTF-32, UTF-16 without a byte-order mark, `windows-1252`, EBCDIC…) is refused by
//! name.
//!
//! The source column holds text, and a database cannot hold every byte string (PostgreSQL refuses NUL in text and
//! any invalid UTF-8). So `load` stores a file it refuses *byte-exact* in a form no well-formed document can take:
//! [`UNDECODABLE_PREFIX`] (starting with U+FFFF, a character XML forbids) followed by the file's bytes in base64.
//! `run` decodes that form back into the original bytes and fails the document with the same offset `load`
//! reported. Storing it (rather than refusing it at load or logging it there) keeps every application in the
//! source table, every log row written by `run` (status counts, resumption and the harness checks all work
//! unchanged), and the original bytes recoverable for whoever fixes the file.

use base64::Engine as _;
use std::borrow::Cow;
use std::fmt;

/// The stored form of a document `load` refused: this prefix, then the file's bytes in standard base64.
pub const UNDECODABLE_PREFIX: &str = "\u{FFFF}shredproof:undecodable-bytes;base64,";

/// Why a document's bytes were refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Offset of the first offending byte in the original file (or in the stored UTF-8 text).
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

impl std::error::Error for DecodeError {}

fn err(offset: usize, message: impl Into<String>) -> DecodeError {
    DecodeError {
        offset,
        message: message.into(),
    }
}

fn forbidden(c: char, offset: usize) -> DecodeError {
    err(
        offset,
        format!("character U+{:04X} is not allowed in XML 1.0", c as u32),
    )
}

/// Whether XML 1.0's `Char` production excludes `c` (surrogates cannot occur in a `char`).
fn is_forbidden(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}')
}

/// The first character XML 1.0 forbids in UTF-8 `bytes`, as an offset into them. Only C0 controls (one byte) and
/// U+FFFE/U+FFFF (`EF BF BE`/`EF BF BF`) can be forbidden, so 32 bytes at a time are tested for "a C0 control other
/// than tab, LF and CR, or a byte equal to 0xEF" (a branch-free fold the compiler vectorises, no `unsafe`), and only
/// a block that has one is looked at byte by byte. Run on every document, so it must cost little next to parsing
/// (profiled: a plain byte loop was 15 % of `run`'s CPU on the real samples; a word test that also stopped at every
/// line break was 7 % of parse + map).
fn check_utf8_chars(bytes: &[u8], base: usize) -> Result<(), DecodeError> {
    const BLOCK: usize = 32;
    let suspicious = |b: u8| {
        let control = b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r';
        u8::from(control | (b == 0xEF))
    };
    let blocks = bytes.len() / BLOCK;
    for k in 0..blocks {
        let i = k * BLOCK;
        let block = &bytes[i..i + BLOCK];
        if block.iter().fold(0u8, |acc, &b| acc | suspicious(b)) != 0 {
            check_bytes(bytes, i, i + BLOCK, base)?;
        }
    }
    check_bytes(bytes, blocks * BLOCK, bytes.len(), base)
}

/// Byte-by-byte check of `bytes[from..to]` (a sequence starting there may extend past `to`).
fn check_bytes(bytes: &[u8], from: usize, to: usize, base: usize) -> Result<(), DecodeError> {
    for i in from..to {
        let b = bytes[i];
        if b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r') {
            return Err(forbidden(char::from(b), base + i));
        }
        if b == 0xEF && bytes.get(i + 1) == Some(&0xBF) {
            match bytes.get(i + 2) {
                Some(0xBE) => return Err(forbidden('\u{FFFE}', base + i)),
                Some(0xBF) => return Err(forbidden('\u{FFFF}', base + i)),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Checks text already held as a string (a row of the source table): no character XML 1.0 forbids.
pub fn check_text(text: &str) -> Result<(), DecodeError> {
    check_utf8_chars(text.as_bytes(), 0)
}

/// The encoding named by an XML declaration at the start of ASCII-compatible `bytes`, with its offset.
fn declared_encoding(bytes: &[u8]) -> Option<(String, usize)> {
    if !bytes.starts_with(b"<?xml") {
        return None;
    }
    let end = bytes.iter().take(1024).position(|&b| b == b'>')?;
    let decl = &bytes[..end];
    let at = decl.windows(8).position(|w| w == b"encoding")?;
    let rest = &decl[at + 8..];
    let eq = rest.iter().position(|&b| b == b'=')?;
    let rest = &rest[eq + 1..];
    let q = rest.iter().position(|&b| b == b'"' || b == b'\'')?;
    let quote = rest[q];
    let value = &rest[q + 1..];
    let close = value.iter().position(|&b| b == quote)?;
    let name = String::from_utf8_lossy(&value[..close]).into_owned();
    let offset = at + 8 + eq + 1 + q + 1;
    Some((name, offset))
}

const SUPPORTED: &str = "supported: UTF-8, UTF-16 with a byte-order mark, US-ASCII, ISO-8859-1";

/// Decodes a file's bytes into the text to store. UTF-8 input comes back as the same bytes (byte-order mark kept,
/// without a copy); UTF-16 and ISO-8859-1 are transcoded. Every refusal names the byte offset in `bytes`.
pub fn decode_owned(bytes: Vec<u8>) -> Result<String, (DecodeError, Vec<u8>)> {
    match decode_kind(&bytes) {
        Err(e) => Err((e, bytes)),
        Ok(Kind::Utf8 { skip }) => {
            if let Err(e) = validate_utf8(&bytes, skip) {
                return Err((e, bytes));
            }
            if let Err(e) = check_utf8_chars(&bytes[skip..], skip) {
                return Err((e, bytes));
            }
            // Validated above; `from_utf8` re-checks quickly and never copies.
            String::from_utf8(bytes).map_err(|e| {
                let off = e.utf8_error().valid_up_to();
                (err(off, "invalid UTF-8"), e.into_bytes())
            })
        }
        Ok(Kind::Utf16 { big_endian }) => match utf16(&bytes, big_endian) {
            Ok(s) => Ok(s),
            Err(e) => Err((e, bytes)),
        },
        Ok(Kind::Latin1 { ascii_only }) => match latin1(&bytes, ascii_only) {
            Ok(s) => Ok(s),
            Err(e) => Err((e, bytes)),
        },
    }
}

/// [`decode_owned`] for borrowed bytes.
pub fn decode_bytes(bytes: &[u8]) -> Result<Cow<'_, str>, DecodeError> {
    match decode_kind(bytes)? {
        Kind::Utf8 { skip } => {
            validate_utf8(bytes, skip)?;
            check_utf8_chars(&bytes[skip..], skip)?;
            std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|e| err(e.valid_up_to(), "invalid UTF-8"))
        }
        Kind::Utf16 { big_endian } => utf16(bytes, big_endian).map(Cow::Owned),
        Kind::Latin1 { ascii_only } => latin1(bytes, ascii_only).map(Cow::Owned),
    }
}

enum Kind {
    /// UTF-8; `skip` bytes of byte-order mark.
    Utf8 {
        skip: usize,
    },
    Utf16 {
        big_endian: bool,
    },
    Latin1 {
        ascii_only: bool,
    },
}

fn decode_kind(bytes: &[u8]) -> Result<Kind, DecodeError> {
    if bytes.starts_with(&[0, 0, 0xFE, 0xFF]) || bytes.starts_with(&[0xFF, 0xFE, 0, 0]) {
        return Err(err(0, format!("UTF-32 is not supported ({SUPPORTED})")));
    }
    if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        if let Some((name, at)) = declared_encoding(rest) {
            if !is_utf8_name(&name) {
                return Err(err(
                    at + 3,
                    format!("declared encoding \"{name}\" contradicts the UTF-8 byte-order mark"),
                ));
            }
        }
        return Ok(Kind::Utf8 { skip: 3 });
    }
    if bytes.starts_with(&[0xFF, 0xFE]) {
        return Ok(Kind::Utf16 { big_endian: false });
    }
    if bytes.starts_with(&[0xFE, 0xFF]) {
        return Ok(Kind::Utf16 { big_endian: true });
    }
    if bytes.starts_with(&[b'<', 0, b'?', 0]) || bytes.starts_with(&[0, b'<', 0, b'?']) {
        return Err(err(
            0,
            format!("UTF-16 without a byte-order mark is not supported ({SUPPORTED})"),
        ));
    }
    match declared_encoding(bytes) {
        None => Ok(Kind::Utf8 { skip: 0 }),
        Some((name, at)) => {
            let lower = name.to_ascii_lowercase();
            if is_utf8_name(&name) {
                Ok(Kind::Utf8 { skip: 0 })
            } else if matches!(lower.as_str(), "us-ascii" | "ascii") {
                Ok(Kind::Latin1 { ascii_only: true })
            } else if matches!(
                lower.as_str(),
                "iso-8859-1" | "iso8859-1" | "latin1" | "latin-1" | "l1"
            ) {
                Ok(Kind::Latin1 { ascii_only: false })
            } else if lower.starts_with("utf-16") || lower == "utf16" {
                Err(err(
                    at,
                    format!(
                        "declared encoding \"{name}\" needs a byte-order mark, and there is none"
                    ),
                ))
            } else {
                Err(err(
                    at,
                    format!("declared encoding \"{name}\" is not supported ({SUPPORTED})"),
                ))
            }
        }
    }
}

fn is_utf8_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "utf-8" || lower == "utf8"
}

fn validate_utf8(bytes: &[u8], skip: usize) -> Result<(), DecodeError> {
    match std::str::from_utf8(&bytes[skip..]) {
        Ok(_) => Ok(()),
        Err(e) => {
            let at = skip + e.valid_up_to();
            let shown: Vec<String> = bytes[at..]
                .iter()
                .take(e.error_len().unwrap_or(bytes.len() - at).clamp(1, 4))
                .map(|b| format!("0x{b:02X}"))
                .collect();
            Err(err(
                at,
                match e.error_len() {
                    Some(_) => format!("invalid UTF-8 (byte {})", shown.join(" ")),
                    None => format!(
                        "truncated UTF-8 sequence at the end of the document (bytes {})",
                        shown.join(" ")
                    ),
                },
            ))
        }
    }
}

fn utf16(bytes: &[u8], big_endian: bool) -> Result<String, DecodeError> {
    let body = &bytes[2..];
    if body.len() % 2 == 1 {
        return Err(err(
            bytes.len() - 1,
            "odd number of bytes in a UTF-16 document",
        ));
    }
    let units = body.chunks_exact(2).map(|p| {
        if big_endian {
            u16::from_be_bytes([p[0], p[1]])
        } else {
            u16::from_le_bytes([p[0], p[1]])
        }
    });
    let mut out = String::with_capacity(body.len() / 2);
    let mut offset = 2;
    for r in char::decode_utf16(units) {
        match r {
            Ok(c) => {
                if is_forbidden(c) {
                    return Err(forbidden(c, offset));
                }
                out.push(c);
                offset += c.len_utf16() * 2;
            }
            Err(e) => {
                return Err(err(
                    offset,
                    format!(
                        "invalid UTF-16 (unpaired surrogate 0x{:04X})",
                        e.unpaired_surrogate()
                    ),
                ))
            }
        }
    }
    if let Some((name, _)) = declared_encoding(out.as_bytes()) {
        let lower = name.to_ascii_lowercase();
        if !lower.starts_with("utf-16") && lower != "utf16" {
            return Err(err(
                2,
                format!("declared encoding \"{name}\" contradicts the UTF-16 byte-order mark"),
            ));
        }
    }
    Ok(out)
}

fn latin1(bytes: &[u8], ascii_only: bool) -> Result<String, DecodeError> {
    let mut out = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if ascii_only && b >= 0x80 {
            return Err(err(
                i,
                format!("byte 0x{b:02X} is not US-ASCII, the declared encoding"),
            ));
        }
        let c = char::from(b);
        if is_forbidden(c) {
            return Err(forbidden(c, i));
        }
        out.push(c);
    }
    Ok(out)
}

/// What `load` stores for a file, and why it refused it if it did: the decoded text, or the byte-exact
/// [`UNDECODABLE_PREFIX`] form with the refusal.
pub fn stored_form(bytes: Vec<u8>) -> (String, Option<DecodeError>) {
    match decode_owned(bytes) {
        Ok(text) => (text, None),
        Err((e, bytes)) => {
            let mut s = String::with_capacity(UNDECODABLE_PREFIX.len() + bytes.len() * 4 / 3 + 4);
            s.push_str(UNDECODABLE_PREFIX);
            base64::engine::general_purpose::STANDARD.encode_string(&bytes, &mut s);
            (s, Some(e))
        }
    }
}

/// The document text to parse for a row of the source table, or why its bytes are refused. A row in the
/// [`UNDECODABLE_PREFIX`] form is decoded back to the original file's bytes and refused with their offset (or, if
/// someone stored acceptable bytes that way, parsed like any other document).
pub fn stored_document(stored: &str) -> Result<Cow<'_, str>, DecodeError> {
    if let Some(b64) = stored.strip_prefix(UNDECODABLE_PREFIX) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim_end())
            .map_err(|e| {
                err(
                    0,
                    format!("the stored form of an undecodable file is corrupt ({e})"),
                )
            })?;
        return decode_owned(bytes).map(Cow::Owned).map_err(|(e, _)| e);
    }
    check_text(stored)?;
    Ok(Cow::Borrowed(stored))
}

/// Strips a UTF-8 byte order mark (both parsers start here, so the fact lives with the decoder, a leaf).
pub fn strip_bom(xml: &str) -> &str {
    xml.strip_prefix('\u{feff}').unwrap_or(xml)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn refused(bytes: &[u8]) -> DecodeError {
        decode_bytes(bytes).expect_err("refused")
    }

    #[test]
    fn invalid_utf8_is_refused_at_its_offset() {
        let doc = b"<a><first_name>Bad\xff\xfeName\xc3</first_name></a>";
        let e = refused(doc);
        assert_eq!(e.offset, 18);
        assert!(e.to_string().contains("invalid UTF-8"), "{e}");
        assert!(e.to_string().ends_with("at byte 18"), "{e}");
        // Truncated at the very end.
        let e = refused(b"<a>x</a>\xc3");
        assert_eq!(e.offset, 8);
        assert!(e.message.contains("truncated"), "{e}");
        // After a BOM, offsets still count from the file's first byte.
        let e = refused(b"\xEF\xBB\xBF<a>\x80</a>");
        assert_eq!(e.offset, 6);
    }

    #[test]
    fn forbidden_characters_are_refused_with_offsets() {
        assert_eq!(refused(b"<a>\x01</a>").offset, 3);
        let e = refused(b"<a>x\0</a>");
        assert_eq!(e.offset, 4);
        assert!(e.message.contains("U+0000"), "{e}");
        let e = refused("<a>\u{FFFE}</a>".as_bytes());
        assert!(e.message.contains("U+FFFE"), "{e}");
        assert_eq!(refused("<a>é\u{FFFF}</a>".as_bytes()).offset, 5);
        // Tab, LF, CR and everything else valid pass.
        assert!(decode_bytes("<a>\t\r\n é 𝄞 \u{7F} \u{FFFD}</a>".as_bytes()).is_ok());
    }

    #[test]
    fn utf8_is_returned_byte_exact_bom_included() {
        let doc = "\u{FEFF}<a>é</a>".as_bytes().to_vec();
        assert_eq!(decode_owned(doc.clone()).expect("ok").as_bytes(), &doc[..]);
        assert!(matches!(decode_bytes(&doc), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn utf16_with_bom_is_transcoded_and_checked() {
        let text = "<?xml version=\"1.0\" encoding=\"UTF-16\"?><a>é𝄞</a>";
        let mut le = vec![0xFF, 0xFE];
        let mut be = vec![0xFE, 0xFF];
        for u in text.encode_utf16() {
            le.extend_from_slice(&u.to_le_bytes());
            be.extend_from_slice(&u.to_be_bytes());
        }
        assert_eq!(decode_bytes(&le).expect("le"), text);
        assert_eq!(decode_bytes(&be).expect("be"), text);
        // An unpaired surrogate, at its byte offset.
        let mut bad = vec![0xFF, 0xFE, b'<', 0];
        bad.extend_from_slice(&0xD800u16.to_le_bytes());
        bad.extend_from_slice(&[b'a', 0]);
        let e = refused(&bad);
        assert_eq!(e.offset, 4);
        assert!(e.message.contains("surrogate"), "{e}");
        let mut nul = vec![0xFF, 0xFE, b'<', 0, b'a', 0, 0, 0];
        nul.extend_from_slice(&[b'>', 0]);
        assert_eq!(refused(&nul).offset, 6);
        assert!(refused(&[0xFF, 0xFE, b'<']).message.contains("odd"));
    }

    #[test]
    fn declared_encodings_are_accepted_or_refused_by_name() {
        let latin = b"<?xml version='1.0' encoding='ISO-8859-1'?><a>caf\xe9</a>";
        assert_eq!(
            decode_bytes(latin).expect("latin1"),
            "<?xml version='1.0' encoding='ISO-8859-1'?><a>café</a>"
        );
        let e = refused(b"<?xml version=\"1.0\" encoding=\"US-ASCII\"?><a>caf\xc3\xa9</a>");
        assert!(e.message.contains("US-ASCII"), "{e}");
        assert_eq!(e.offset, 47);
        let e = refused(b"<?xml version=\"1.0\" encoding=\"windows-1252\"?><a/>");
        assert!(
            e.message.contains("\"windows-1252\" is not supported"),
            "{e}"
        );
        assert_eq!(e.offset, 30);
        let e = refused(b"<?xml version=\"1.0\" encoding=\"UTF-16\"?><a/>");
        assert!(e.message.contains("byte-order mark"), "{e}");
        let e = refused(b"\xEF\xBB\xBF<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>");
        assert!(e.message.contains("contradicts"), "{e}");
        assert!(refused(b"<\0?\0x\0").message.contains("UTF-16 without"));
        assert!(refused(&[0, 0, 0xFE, 0xFF]).message.contains("UTF-32"));
        assert!(decode_bytes(b"<?xml version=\"1.0\" encoding=\"utf-8\"?><a/>").is_ok());
    }

    #[test]
    fn refused_files_round_trip_through_the_stored_form() {
        let bytes = b"<a><first_name>Bad\xff\xfeName\xc3</first_name>\0</a>".to_vec();
        let (stored, why) = stored_form(bytes.clone());
        let why = why.expect("refused");
        assert!(stored.starts_with(UNDECODABLE_PREFIX));
        assert!(!stored.contains('\0'));
        assert_eq!(stored_document(&stored).expect_err("still refused"), why);
        // Accepted text is stored as it is and parsed as it is.
        let (stored, why) = stored_form(b"<a>ok</a>".to_vec());
        assert_eq!((stored.as_str(), why), ("<a>ok</a>", None));
        assert_eq!(stored_document(&stored).expect("ok"), "<a>ok</a>");
        // Text inserted by other means is checked too.
        assert_eq!(
            stored_document("<a>\u{1}</a>").expect_err("refused").offset,
            3
        );
        assert!(stored_document(&format!("{UNDECODABLE_PREFIX}!!"))
            .expect_err("corrupt")
            .message
            .contains("corrupt"));
    }

    proptest! {
        /// The word-at-a-time check finds exactly what a plain scan of the characters finds.
        #[test]
        fn fast_check_matches_a_char_scan(
            text in proptest::collection::vec(
                prop_oneof![
                    Just('\t'), Just('\n'), Just('\r'), Just('\u{1}'), Just('\u{0}'), Just('\u{1F}'),
                    Just('\u{FFFE}'), Just('\u{FFFF}'), Just('\u{FFFD}'), Just('\u{EFFF}'), Just('a'),
                    Just('<'), Just('é'), any::<char>()
                ],
                0..40,
            )
        ) {
            let s: String = text.into_iter().collect();
            let want = s.char_indices().find(|&(_, c)| is_forbidden(c)).map(|(i, _)| i);
            prop_assert_eq!(check_text(&s).err().map(|e| e.offset), want);
        }

        /// Any byte string is either accepted as exactly itself (valid UTF-8 without forbidden characters, no
        /// declaration) or refused at an offset inside it; the stored form always gives the same answer back.
        #[test]
        fn never_replaces_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (stored, why) = stored_form(bytes.clone());
            match &why {
                None => {
                    let direct = decode_bytes(&bytes).expect("accepted");
                    prop_assert_eq!(direct.as_ref(), stored.as_str());
                }
                Some(e) => {
                    prop_assert!(e.offset <= bytes.len());
                    prop_assert_eq!(stored_document(&stored).expect_err("refused"), e.clone());
                }
            }
            prop_assert!(!stored.contains('\0'));
        }
    }
}
