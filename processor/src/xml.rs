//! Reading documents: a borrowed quick-xml pull reader that checks the whole document is well-formed and keeps
//! only the elements and attributes the contract names. Pure and synchronous; knows nothing of SQL or mapping.

use crate::budget::{Budget, Pacer};
use crate::contract::Contract;
use crate::failure::{Failure, Stage};
use quick_xml::events::attributes::Attributes;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};
use std::borrow::Cow;

/// An element on one of the contract's paths.
#[derive(Debug)]
pub struct Element<'a> {
    /// Trie node (`Contract::nodes`) of the element's path.
    pub node: usize,
    /// Index of the nearest recorded ancestor in `ParsedDoc::elems` (every ancestor of a path element is one).
    pub parent: Option<usize>,
    /// Needed attributes present on the element: (index into the node's `attrs`, unescaped value).
    pub attrs: Vec<(usize, Cow<'a, str>)>,
}

impl Element<'_> {
    pub fn attr(&self, idx: usize) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(i, _)| *i == idx)
            .map(|(_, v)| v.as_ref())
    }
}

#[derive(Debug, Default)]
pub struct ParsedDoc<'a> {
    pub elems: Vec<Element<'a>>,
}

fn parse_err(msg: impl Into<String>) -> Failure {
    Failure::new(Stage::Parse, msg)
}

pub use crate::decode::strip_bom;

/// Parses `xml`, validating structure, attribute syntax and entity references everywhere, and collecting the
/// contract's elements. The root element must be the contract's `xml_root_element`.
pub fn parse<'a>(xml: &'a str, contract: &Contract) -> Result<ParsedDoc<'a>, Failure> {
    parse_within(xml, contract, &Budget::unlimited())
}

/// [`parse`], checking `budget` every few thousand events.
pub fn parse_within<'a>(
    xml: &'a str,
    contract: &Contract,
    budget: &Budget,
) -> Result<ParsedDoc<'a>, Failure> {
    let xml = strip_bom(xml);
    let mut pacer = Pacer::new(budget);
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut doc = ParsedDoc::default();
    // Per open element: Some(trie node, elems index) when on a contract path, None otherwise.
    let mut stack: Vec<Option<(usize, usize)>> = Vec::with_capacity(16);
    let mut seen_root = false;
    loop {
        pacer.tick().map_err(Failure::interrupted)?;
        let before = reader.buffer_position() as usize;
        let ev = reader
            .read_event()
            .map_err(|e| parse_err(format!("{e} at byte {}", reader.error_position())))?;
        match ev {
            Event::Start(e) => {
                let raw = tag_body(xml, before, reader.buffer_position() as usize, 1, &e)?;
                open(&e, raw, &mut stack, &mut doc, contract, &mut seen_root)?;
            }
            Event::Empty(e) => {
                let raw = tag_body(xml, before, reader.buffer_position() as usize, 2, &e)?;
                open(&e, raw, &mut stack, &mut doc, contract, &mut seen_root)?;
                stack.pop();
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Text(t) => {
                if stack.is_empty() && t.bytes().any(|b| !b.is_ascii_whitespace()) {
                    return Err(parse_err("text outside the root element"));
                }
            }
            Event::GeneralRef(r) => {
                if stack.is_empty() {
                    return Err(parse_err("entity reference outside the root element"));
                }
                // Character references and the five predefined entities are all XML allows without a DTD.
                let name: &str = &r;
                let known = matches!(name, "lt" | "gt" | "amp" | "apos" | "quot");
                if !known && r.resolve_char_ref().ok().flatten().is_none() {
                    return Err(parse_err(format!("unknown entity &{name};")));
                }
            }
            Event::CData(_)
            | Event::Comment(_)
            | Event::PI(_)
            | Event::Decl(_)
            | Event::DocType(_) => {
                if matches!(ev, Event::CData(_)) && stack.is_empty() {
                    return Err(parse_err("CDATA outside the root element"));
                }
            }
            Event::Eof => {
                if let Some(depth) = (!stack.is_empty()).then_some(stack.len()) {
                    return Err(parse_err(format!(
                        "document ends inside an open element (depth {depth})"
                    )));
                }
                if !seen_root {
                    return Err(parse_err("no root element"));
                }
                return Ok(doc);
            }
        }
    }
}

/// The tag's text between `<` and `>` (or `/>`), borrowed from the input so attribute values can be borrowed too.
fn tag_body<'a>(
    xml: &'a str,
    start: usize,
    end: usize,
    close_len: usize,
    e: &BytesStart<'_>,
) -> Result<&'a str, Failure> {
    let body = xml
        .get(start + 1..end.saturating_sub(close_len))
        .unwrap_or("");
    // The reader's own view of the tag must be exactly this slice; anything else is a reader change we must not paper over.
    if body != &**e {
        return Err(parse_err("internal reader position mismatch"));
    }
    Ok(body)
}

fn open<'a>(
    e: &BytesStart<'_>,
    raw: &'a str,
    stack: &mut Vec<Option<(usize, usize)>>,
    doc: &mut ParsedDoc<'a>,
    contract: &Contract,
    seen_root: &mut bool,
) -> Result<(), Failure> {
    let name = e.name();
    let name = name.as_ref();
    let here = if stack.is_empty() {
        if *seen_root {
            return Err(parse_err("more than one root element"));
        }
        *seen_root = true;
        if name != contract.root_element {
            return Err(parse_err(format!(
                "root element is <{name}>, expected <{}>",
                contract.root_element
            )));
        }
        Some(0)
    } else {
        match stack.last().copied().flatten() {
            Some((pnode, _)) => contract.nodes[pnode]
                .children
                .iter()
                .copied()
                .find(|&c| contract.nodes[c].name == name),
            None => None,
        }
    };
    // Validate every attribute (syntax, duplicates, entities) whether needed or not: a document is either
    // well-formed or it is not, regardless of which parts the contract reads.
    let needed = here.map(|n| &contract.nodes[n].attrs);
    let mut attrs = Vec::new();
    for a in Attributes::new(raw, name.len()).with_checks(true) {
        let a = a.map_err(|err| parse_err(format!("bad attribute: {err}")))?;
        let idx = needed.and_then(|list| list.iter().position(|n| n == a.key.as_ref()));
        if idx.is_some() || a.value.contains(['&', '\t', '\n', '\r']) {
            let v = a
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|err| parse_err(format!("bad attribute value: {err}")))?;
            if let Some(i) = idx {
                attrs.push((i, v));
            }
        }
    }
    match here {
        Some(node) => {
            let parent = stack.last().copied().flatten().map(|(_, i)| i);
            doc.elems.push(Element {
                node,
                parent,
                attrs,
            });
            stack.push(Some((node, doc.elems.len() - 1)));
        }
        None => stack.push(None),
    }
    Ok(())
}

/// The integer `ID` attribute of the first `<Request` start tag, read from raw bytes (a BOM, an XML declaration or
/// a broken document elsewhere do not matter).
pub fn request_id(bytes: &[u8]) -> Option<i64> {
    let at = bytes.windows(8).position(|w| w == b"<Request")?;
    let rest = &bytes[at + 8..];
    if !rest.first().is_some_and(u8::is_ascii_whitespace) {
        return None;
    }
    let tag = &rest[..rest.iter().position(|b| *b == b'>')?];
    let mut i = 0;
    while let Some(p) = tag[i..].windows(2).position(|w| w == b"ID") {
        let pos = i + p;
        i = pos + 2;
        if !tag[pos - 1].is_ascii_whitespace() {
            continue;
        }
        let after = tag[i..]
            .iter()
            .skip_while(|b| b.is_ascii_whitespace())
            .copied()
            .collect::<Vec<u8>>();
        let Some(after) = after.strip_prefix(b"=") else {
            continue;
        };
        let after: Vec<u8> = after
            .iter()
            .skip_while(|b| b.is_ascii_whitespace())
            .copied()
            .collect();
        let q = *after.first()?;
        if q != b'"' && q != b'\'' {
            return None;
        }
        let end = after[1..].iter().position(|b| *b == q)?;
        return std::str::from_utf8(&after[1..1 + end])
            .ok()?
            .trim()
            .parse()
            .ok();
    }
    None
}
