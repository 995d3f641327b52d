//! The fast reader for the documents the samples are made of: start, end and empty tags with quoted attributes,
//! text with the five predefined entities, and an XML declaration at the start. It accepts a subset of what
//! quick-xml accepts and, on that subset, yields exactly what quick-xml's events and attribute iterator yield
//! (same names, same raw or normalised values, same tree). Anything else — a comment, CDATA, a DOCTYPE, a
//! character reference in text, a duplicated attribute, a mismatched end tag, any malformed markup — makes it
//! return `None`, and `parse_doc` reads the document again with quick-xml, which then gives the result or the
//! error. Profiled reason (BENCHMARKS.md): quick-xml's reader and attribute iterator were ≈ 40 % of parse + map on
//! the samples, most of it per-byte state handling and UTF-8 re-validation of text that is already a `str`.

use super::{Build, Doc, Failure, Pacer};
use crate::budget::Budget;
use memchr::memchr;
use quick_xml::events::attributes::Attribute;
use quick_xml::name::QName;
use quick_xml::XmlVersion;
use std::borrow::Cow;

/// XML's whitespace, as quick-xml's `is_whitespace`.
fn ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The first index at or after `i` that is not whitespace.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && ws(b[i]) {
        i += 1;
    }
    i
}

/// Whether text inside an element is one quick-xml reads without error here: any `&` starts one of the five
/// predefined entities (a character reference or anything else: not handled, `None` for the caller).
fn text_ok(t: &[u8]) -> bool {
    let mut rest = t;
    while let Some(a) = memchr(b'&', rest) {
        let after = &rest[a + 1..];
        let Some(semi) = memchr(b';', after) else {
            return false;
        };
        if !matches!(&after[..semi], b"lt" | b"gt" | b"amp" | b"apos" | b"quot") {
            return false;
        }
        rest = &after[semi + 1..];
    }
    true
}

/// Attributes of a start tag from `i` (just after the name) to its `>` or `/>`, pushed into `b.doc.attrs`.
/// Returns (index after the tag, empty?), or `None` for anything the fast path does not handle.
fn attributes<'a>(
    xml: &'a str,
    mut i: usize,
    b: &mut Build<'a>,
    a0: usize,
    seen: &mut std::collections::HashSet<&'a str, super::FastState>,
) -> Option<(usize, bool)> {
    let by = xml.as_bytes();
    seen.clear();
    loop {
        i = skip_ws(by, i);
        match *by.get(i)? {
            b'>' => return Some((i + 1, false)),
            b'/' => return (by.get(i + 1) == Some(&b'>')).then_some((i + 2, true)),
            _ => {}
        }
        // The key: up to `=` or whitespace (quick-xml's rule); markup characters in it are not handled here.
        let k0 = i;
        while i < by.len() && !matches!(by[i], b'=' | b' ' | b'\t' | b'\n' | b'\r') {
            if matches!(by[i], b'>' | b'/' | b'"' | b'\'' | b'<') {
                return None;
            }
            i += 1;
        }
        let key = &xml[k0..i];
        i = skip_ws(by, i);
        if key.is_empty() || by.get(i) != Some(&b'=') {
            return None;
        }
        i = skip_ws(by, i + 1);
        let quote = *by.get(i)?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        let v0 = i + 1;
        let v1 = v0 + memchr(quote, &by[v0..])?;
        let raw = &xml[v0..v1];
        i = v1 + 1;
        // Duplicates: quick-xml refuses them (a linear scan for a few keys, a set for many).
        let keys = &b.doc.attrs[a0..];
        let dup = if keys.len() < 16 {
            keys.iter().any(|(k, _)| *k == key)
        } else {
            if seen.is_empty() {
                seen.extend(keys.iter().map(|(k, _)| *k));
            }
            !seen.insert(key)
        };
        if dup {
            return None;
        }
        let value = if raw
            .bytes()
            .any(|c| matches!(c, b'\t' | b'\n' | b'\r' | b'&'))
        {
            // quick-xml's own normalisation (entities, whitespace): the same value by construction.
            let a = Attribute {
                key: QName(key),
                value: Cow::Borrowed(raw),
            };
            a.normalized_value(XmlVersion::Implicit1_0).ok()?
        } else {
            Cow::Borrowed(raw)
        };
        b.doc.attrs.push((key, value));
    }
}

/// The whole document by the fast path, or `None` (quick-xml must read it). `Err` only for an interruption.
pub(super) fn parse_fast<'a>(
    xml: &'a str,
    root: &str,
    indexed: &[&'a str],
    budget: &Budget,
) -> Result<Option<Doc<'a>>, Failure> {
    let by = xml.as_bytes();
    let mut b = Build::new(xml.len(), indexed);
    let mut pacer = Pacer::new(budget);
    let mut seen = std::collections::HashSet::default();
    let mut i = 0;
    // An XML declaration or processing instruction at the very start only.
    if by.starts_with(b"<?") {
        match xml.find("?>") {
            Some(e) if e >= 2 => i = e + 2,
            _ => return Ok(None),
        }
    }
    loop {
        pacer.tick().map_err(Failure::interrupted)?;
        // Text up to the next tag.
        let lt = memchr(b'<', &by[i..]).map(|p| i + p);
        let text = &by[i..lt.unwrap_or(by.len())];
        if b.stack.is_empty() {
            if !text.iter().all(|&c| ws(c)) {
                return Ok(None);
            }
        } else if memchr(b'&', text).is_some() && !text_ok(text) {
            return Ok(None);
        }
        let Some(lt) = lt else {
            let done = b.stack.is_empty() && b.seen_root;
            return Ok(done.then_some(b.doc));
        };
        i = lt + 1;
        match by.get(i) {
            Some(b'/') => {
                let Some(gt) = memchr(b'>', &by[i..]).map(|p| i + p) else {
                    return Ok(None);
                };
                let name = &xml[i + 1..gt];
                match b.stack.last() {
                    Some(&(id, _)) if b.doc.elems[id].name == name => b.close(),
                    _ => return Ok(None),
                }
                i = gt + 1;
            }
            Some(b'!' | b'?') | None => return Ok(None),
            Some(_) => {
                // The name: up to whitespace, `/` or `>`.
                let n0 = i;
                while i < by.len() && !matches!(by[i], b' ' | b'\t' | b'\n' | b'\r' | b'/' | b'>') {
                    if matches!(by[i], b'"' | b'\'' | b'<' | b'=' | b'&') {
                        return Ok(None);
                    }
                    i += 1;
                }
                let name = &xml[n0..i];
                if name.is_empty() || b.check_root(name, root).is_err() {
                    return Ok(None);
                }
                let a0 = b.doc.attrs.len();
                let Some((next, empty)) = attributes(xml, i, &mut b, a0, &mut seen) else {
                    return Ok(None);
                };
                b.element(name, a0 as u32, empty);
                i = next;
            }
        }
    }
}

/// Both readers' view of a document: every element's name, parent, attributes and subtree end, and the paths.
/// (Debug builds compare the two readers on every document the fast one accepts: `parse_doc`.)
#[cfg(debug_assertions)]
pub(super) fn shape(d: &Doc<'_>) -> String {
    let mut s = String::new();
    for (i, n) in d.elems.iter().enumerate() {
        let attrs = &d.attrs[n.attrs.0 as usize..n.attrs.1 as usize];
        s.push_str(&format!(
            "{i} {} {} {} {attrs:?}\n",
            n.name, n.parent, n.end
        ));
    }
    s.push_str(&format!("{:?} {:?}", d.paths, d.by_name));
    s
}

#[cfg(test)]
mod tests {
    use super::super::parse_quick;
    use super::*;

    fn fast(xml: &str) -> Option<String> {
        parse_fast(xml, "R", &["c"], &Budget::unlimited())
            .expect("no budget to run out")
            .map(|d| shape(&d))
    }

    fn quick(xml: &str) -> Result<String, String> {
        parse_quick(xml, "R", &["c"], &Budget::unlimited())
            .map(|d| shape(&d))
            .map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn the_fast_reader_agrees_with_quick_xml_or_declines() {
        let accepted = [
            "<R/>",
            "<?xml version=\"1.0\"?>\n<R a='1' b = \"2\"><c x=\"&amp;&lt;y&#65;\tz\"/><c/>t &amp; u</R>\n",
            "<R><a><b q=\"&gt;\" r='\"'/></a><a></a></R>",
            "<R a=\"1\"b=\"2\"></R>",
        ];
        for x in accepted {
            assert_eq!(fast(x), Some(quick(x).expect("quick-xml reads it")), "{x}");
        }
        let declined = [
            "<R><!-- c --></R>",
            "<R><a></b></R>",
            "<R a=\"1\" a=\"2\"/>",
            "<R>&#65;</R>",
            "<R>&foo;</R>",
            "<R a=1/>",
            "<R a/>",
            "<R></R><R/>",
            "<X/>",
            "<R>",
            "text<R/>",
            "<R a=\"&bogus;\"/>",
            "<R><![CDATA[x]]></R>",
        ];
        for x in declined {
            assert_eq!(fast(x), None, "{x}");
        }
    }

    #[test]
    fn many_attributes_find_duplicates_through_the_set() {
        let mut x = String::from("<R");
        for k in 0..40 {
            x.push_str(&format!(" k{k}=\"{k}\""));
        }
        let ok = format!("{x}/>");
        assert_eq!(fast(&ok), Some(quick(&ok).expect("quick-xml reads it")));
        let dup = format!("{x} k7=\"again\"/>");
        assert_eq!(fast(&dup), None);
        assert!(quick(&dup).is_err());
    }
}
