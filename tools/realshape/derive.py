#!/usr/bin/env python3
"""Derive the real-shape generator's tables (docgen/src/realshape/{cc,rl}.rs) from the replaced system's contracts
and sample documents (../shared/seed/original).

What is taken, per contract: the elements the contract reads (its mappings' xml_path and filter rules, with their
ancestors), every attribute the samples carry on those elements, and, from the samples, statistics only: how often an
element repeats, how often an attribute is present and non-empty, and the *kind* of its values (date format family,
integer or decimal range, flag, short code, free text, personal data). Values themselves are not copied, except the
contract's own vocabulary (enum_mappings keys, bit_conversions keys, filter values) and short codes (at most 6
characters, at most 12 distinct values per attribute), which are the documents' fixed vocabulary. Personal data
(names, SSNs, phones, e-mail, streets, birth dates) is always synthesised.

Run: python3 tools/realshape/derive.py --seed ../shared/seed/original --out docgen/src/realshape
The output is deterministic; rerun it when the contracts or the samples change, never edit it by hand.
"""

import argparse
import collections
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

DATE_FORMATS = [
    # (tag, regex) — tags are the generator's `DateFmt` variants.
    ("YmdHmsfLoose", r"^\d{4}-\d{1,2}-\d{1,2} \d{1,2}:\d{1,2}:\d{1,2}\.\d{1,3}$"),
    ("YmdHmsLoose", r"^\d{4}-\d{1,2}-\d{1,2} \d{1,2}:\d{1,2}:\d{1,2}$"),
    ("Ymd", r"^\d{4}-\d{2}-\d{2}$"),
    ("YmdLoose", r"^\d{4}-\d{1,2}-\d{1,2}$"),
    ("MdyPadded", r"^\d{2}/\d{2}/\d{4}$"),
    ("Mdy", r"^\d{1,2}/\d{1,2}/\d{4}$"),
    ("MdyHmsAmPm", r"^\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2} [AP]M$"),
    ("MdyDash", r"^\d{2}-\d{2}-\d{4}$"),
]

PERSONAL = [
    # (regex on the attribute name, kind)
    (r"first_name|firstname|^fname", "FirstName"),
    (r"last_name|lastname|^lname|maiden", "LastName"),
    (r"ssn(?!_last|_match)|social", "Ssn"),
    (r"phone|fax", "Phone"),
    (r"email", "Email"),
    (r"street_name|address_line|address1|address2|addr", "Street"),
    (r"street_number", "StreetNumber"),
    (r"city", "City"),
    (r"^state$|_state$|state_code", "State"),
    (r"zip", "Zip"),
    (r"account_num|acct_num|aba|routing|card_num|account_number", "Digits"),
    (r"birth|dob", "BirthDate"),
]

FLAG_VALUES = {"Y", "N", "U", "D", "R", "P", "T", "F", "0", "1", "true", "false", "TRUE", "FALSE", "y", "n"}


def rust_str(s):
    return json.dumps(s, ensure_ascii=False)


def load_samples(paths):
    docs = []
    for p in paths:
        try:
            docs.append(ET.fromstring(p.read_text(encoding="utf-8-sig")))
        except ET.ParseError:
            continue  # broken samples say nothing about the shape
    return docs


def element_paths(contract):
    paths = set()
    for m in contract["mappings"]:
        paths.add(m["xml_path"])
    for r in contract.get("element_filtering", {}).get("filter_rules", []):
        paths.add(r["xml_child_path"])
    full = set()
    for p in paths:
        parts = p.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            full.add("/" + "/".join(parts[:i]))
    return sorted(full, key=lambda p: (p.count("/"), p))


def enum_vocab(contract):
    """attribute (by element path) -> list of enum keys, from the mappings that enum-map it."""
    out = {}
    for m in contract["mappings"]:
        types = m.get("mapping_type") or []
        if "enum" not in types or not m.get("xml_attribute"):
            continue
        name = m.get("enum_name") or m["target_column"]
        vocab = contract.get("enum_mappings", {}).get(name)
        if vocab:
            keys = [k for k in vocab if k != ""]
            out.setdefault((m["xml_path"], m["xml_attribute"]), set()).update(keys)
    return {k: sorted(v) for k, v in out.items()}


def classify(name, values, vocab, filter_vals):
    nonempty = [v for v in values if v.strip() != ""]
    if filter_vals:
        return ("Code", filter_vals)
    if vocab:
        return ("Code", vocab)
    lname = name.lower()
    for rx, kind in PERSONAL:
        if re.search(rx, lname):
            if kind == "BirthDate":
                fmts = date_formats(nonempty) or [("Mdy", 1)]
                return ("BirthDate", fmts)
            return (kind, None)
    if not nonempty:
        return ("Text", (1, 8))
    fmts = date_formats(nonempty)
    if fmts and sum(n for _, n in fmts) >= 0.9 * len(nonempty):
        years = [int(y) for v in nonempty for y in re.findall(r"(?<!\d)(\d{4})(?!\d)", v)[:1]]
        lo, hi = (min(years), max(years)) if years else (2010, 2025)
        return ("Date", (fmts, max(1990, min(lo, 2025)), max(1990, min(hi, 2026))))
    distinct = sorted(set(nonempty))
    if set(distinct) <= FLAG_VALUES:
        return ("Code", distinct)
    if all(re.fullmatch(r"-?\d{1,9}", v) for v in nonempty):
        ints = [int(v) for v in nonempty]
        return ("Int", (min(ints), max(ints)))
    if all(re.fullmatch(r"-?\d{1,12}\.\d{1,6}", v) or re.fullmatch(r"-?\d{1,9}", v) for v in nonempty):
        scale = max((len(v.split(".")[1]) for v in nonempty if "." in v), default=2)
        nums = [float(v) for v in nonempty]
        return ("Dec", (min(nums), max(nums), scale))
    if len(distinct) <= 12 and all(len(v) <= 6 for v in distinct):
        return ("Code", distinct)
    lens = [len(v) for v in nonempty]
    return ("Text", (min(lens), max(lens)))


def date_formats(values):
    counts = collections.Counter()
    for v in values:
        for tag, rx in DATE_FORMATS:
            if re.match(rx, v.strip()):
                counts[tag] += 1
                break
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def derive(contract, docs):
    # Only documents of this contract's product line (the sample folder mixes a few of the other).
    app = contract["xml_application_path"].strip("/").split("/")[1:]
    def has_app(root):
        level = [root]
        for tag in app:
            level = [c for e in level for c in e if c.tag == tag]
        return bool(level)
    docs = [d for d in docs if has_app(d)]
    paths = element_paths(contract)
    vocab = enum_vocab(contract)
    filters = {}
    for r in contract.get("element_filtering", {}).get("filter_rules", []):
        for a, v in r["required_attributes"].items():
            if isinstance(v, list):
                filters[(r["xml_child_path"], a)] = v
    elems = []
    for p in paths:
        parts = p.strip("/").split("/")
        counts = []
        attr_seen = collections.Counter()
        attr_nonempty = collections.Counter()
        attr_values = collections.defaultdict(list)
        order = []
        total_instances = 0
        for root in docs:
            if root.tag != parts[0]:
                continue
            level = [root]
            for tag in parts[1:]:
                level = [c for e in level for c in e if c.tag == tag]
            # Count per parent instance (how many children an element has), not per document.
            if len(parts) > 1:
                parent = [root]
                for tag in parts[1:-1]:
                    parent = [c for e in parent for c in e if c.tag == tag]
                for pe in parent:
                    counts.append(sum(1 for c in pe if c.tag == parts[-1]))
            else:
                counts.append(1)
            for e in level:
                total_instances += 1
                for a, v in e.attrib.items():
                    if a not in attr_seen:
                        order.append(a)
                    attr_seen[a] += 1
                    if v.strip():
                        attr_nonempty[a] += 1
                    if len(attr_values[a]) < 4000:
                        attr_values[a].append(v)
        attrs = []
        read = {m["xml_attribute"] for m in contract["mappings"] if m["xml_path"] == p and m.get("xml_attribute")}
        read |= {a for (fp, a) in filters if fp == p}
        exprs = " ".join(m.get("expression", "") for m in contract["mappings"])
        for a in order:
            kind = classify(a, attr_values[a], vocab.get((p, a)), filters.get((p, a)))
            present = attr_seen[a] / max(total_instances, 1)
            nonempty = attr_nonempty[a] / max(attr_seen[a], 1)
            mapped = a in read or re.search(r"(?<![\w.])" + re.escape(a) + r"(?!\w)", exprs) is not None
            attrs.append((a, round(present, 3), round(nonempty, 3), mapped, kind))
        count_hist = collections.Counter(counts)
        elems.append((p, sorted(count_hist.items()), attrs))
    return elems


def kind_rs(kind):
    k, arg = kind
    if k == "Code":
        return f"Kind::Code(&[{', '.join(rust_str(v) for v in arg)}])"
    if k == "Date":
        fmts, lo, hi = arg
        fs = ", ".join(f"(DateFmt::{t}, {n})" for t, n in fmts)
        return f"Kind::Date(&[{fs}], {lo}, {hi})"
    if k == "BirthDate":
        fs = ", ".join(f"(DateFmt::{t}, {n})" for t, n in arg)
        return f"Kind::BirthDate(&[{fs}])"
    if k == "Int":
        return f"Kind::Int({arg[0]}, {arg[1]})"
    if k == "Dec":
        lo, hi, s = arg
        return f"Kind::Dec({lo!r}, {hi!r}, {s})"
    if k == "Text":
        return f"Kind::Text({arg[0]}, {min(arg[1], 200)})"
    return f"Kind::{k}"


def write_rust(out, key, contract_name, elems):
    lines = [
        f"//! Real shape of the replaced system's {key.upper()} documents ({contract_name}): generated by",
        "//! tools/realshape/derive.py from its contract and sample documents; do not edit by hand.",
        "",
        "use super::{AttrShape, DateFmt, ElemShape, Kind};",
        "",
        "#[rustfmt::skip]",
        "pub static ELEMENTS: &[ElemShape] = &[",
    ]
    for p, hist, attrs in elems:
        lines.append("    ElemShape {")
        lines.append(f"        path: {rust_str(p)},")
        lines.append(f"        counts: &[{', '.join(f'({c}, {n})' for c, n in hist)}],")
        lines.append("        attrs: &[")
        for a, present, nonempty, mapped, kind in attrs:
            lines.append(
                f"            AttrShape {{ name: {rust_str(a)}, present: {present!r}, nonempty: {nonempty!r}, "
                f"mapped: {'true' if mapped else 'false'}, kind: {kind_rs(kind)} }},"
            )
        lines.append("        ],")
        lines.append("    },")
    lines.append("];")
    (out / f"{key}.rs").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    seed = Path(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cc_docs = load_samples(sorted((seed / "samples").glob("*.xml")))
    rl_docs = load_samples(sorted((seed / "samples/reclending").glob("*.xml")))
    for key, fname, docs in (("cc", "mapping_contract.json", cc_docs), ("rl", "mapping_contract_rl.json", rl_docs)):
        contract = json.loads((seed / "contracts" / fname).read_text(encoding="utf-8"))
        write_rust(out, key, fname, derive(contract, docs))


if __name__ == "__main__":
    main()
