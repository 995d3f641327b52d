#!/usr/bin/env python3
"""Produce the golden expected rows (fixtures/golden/) from the replaced Python system (XmlConversion).

For every sample document and both contracts, this runs the replaced system's own pipeline steps, in the order its
worker runs them (xml_extractor/processing/parallel_coordinator.py, _process_work_item): PreProcessingValidator,
XMLParser.parse_xml_stream + extract_elements, DataMapper.map_xml_to_database. It then replays what its database
write does to those rows on an empty SQL Server database created by the replaced system's own schema
(schema/create_destination_tables*.sql, enums from insert_enum_values.sql): '' becomes NULL (bulk_insert_strategy),
values are converted to the column's SQL type, a NULL in a NOT NULL column, an over-long string, an integer out of
range, an unknown enum id (foreign key to app_enums) or a duplicate primary key fails the whole application, and a
column the insert does not name takes its constant DEFAULT. No database driver is needed.

The output is canonical text (fixtures/golden/README.md defines it). Run it once per change of the replaced system's
commit or of the samples; never hand-edit the output. See tools/golden/README.md.
"""

import argparse
import datetime as dt
import json
import logging
import re
import sys
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

EXPECTED_COMMIT = "8103358"

CONTRACTS = {
    "cc": "mapping_contract.json",
    "rl": "mapping_contract_rl.json",
}

INT_RANGES = {
    "tinyint": (0, 255),
    "smallint": (-32768, 32767),
    "int": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}


class InsertError(Exception):
    """A row the replaced system's SQL Server insert would reject; it rolls back the application."""


# ---------------------------------------------------------------- schema (the replaced system's DDL)


class Col:
    def __init__(self, name, sqltype, args, not_null, default, identity, computed):
        self.name = name
        self.sqltype = sqltype  # lower-case base type
        self.args = args  # tuple of ints or ('max',)
        self.not_null = not_null
        self.default = default  # constant text, 'GETUTCDATE' or None
        self.identity = identity
        self.computed = computed
        self.enum_fk = False


class TableDef:
    def __init__(self, name):
        self.name = name
        self.cols = {}
        self.order = []
        self.pk = []
        self.unique = []


COL_RE = re.compile(
    r"^\s*\[?(\w+)\]?\s+(\w+)(?:\s*\(\s*([\w\s,]+)\s*\))?(.*)$", re.IGNORECASE
)


def parse_schema(paths):
    tables = {}
    for path in paths:
        text = Path(path).read_text(encoding="utf-8-sig")
        for m in re.finditer(r"CREATE TABLE\s+(?:\w+\.)?(\w+)\s*\((.*?)\n\s*\);", text, re.S | re.I):
            t = TableDef(m.group(1))
            for raw in m.group(2).split("\n"):
                line = raw.split("--", 1)[0].strip().rstrip(",").strip()
                if not line:
                    continue
                up = line.upper()
                if up.startswith("CONSTRAINT"):
                    cm = re.search(r"PRIMARY KEY(?: CLUSTERED)?\s*\(([^)]*)\)", line, re.I)
                    if cm:
                        t.pk = [c.strip(" []") for c in cm.group(1).split(",")]
                    um = re.search(r"UNIQUE\s*\(([^)]*)\)", line, re.I)
                    if um:
                        t.unique.append([c.strip(" []") for c in um.group(1).split(",")])
                    continue
                mm = COL_RE.match(line)
                if not mm:
                    continue
                name, ty, args, rest = mm.group(1), mm.group(2).lower(), mm.group(3), mm.group(4)
                if ty == "as":
                    t.cols[name] = Col(name, "computed", (), False, None, False, True)
                    t.order.append(name)
                    continue
                a = ()
                if args:
                    a = tuple("max" if x.strip().lower() == "max" else int(x) for x in args.split(","))
                rest_u = rest.upper()
                not_null = "NOT NULL" in rest_u
                default = None
                dm = re.search(r"DEFAULT\s*(\(\s*([^)]*)\)|GETUTCDATE\(\))", rest, re.I)
                if dm:
                    default = "GETUTCDATE" if dm.group(1).upper().startswith("GETUTCDATE") else dm.group(2).strip(" '")
                c = Col(name, ty, a, not_null, default, "IDENTITY" in rest_u, False)
                c.enum_fk = "REFERENCES DBO.APP_ENUMS" in rest_u
                if "PRIMARY KEY" in rest_u and not t.pk:
                    t.pk = [name]
                t.cols[name] = c
                t.order.append(name)
            tables[t.name] = t
    return tables


def parse_enum_ids(path):
    text = Path(path).read_text(encoding="utf-8-sig")
    return {int(x) for x in re.findall(r"VALUES\s*\(\s*(\d+)\s*,", text, re.I)}


# ---------------------------------------------------------------- canonical text


def sqlserver_datetime_ms(d):
    """SQL Server `datetime` keeps 1/300 s: round the fraction to the nearest tick, shown in whole ms."""
    ticks = round(Decimal(d.microsecond) * 300 / Decimal(1_000_000))
    base = d.replace(microsecond=0)
    ms = int((Decimal(ticks) * 1000 / 300).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if ms >= 1000:
        base += dt.timedelta(seconds=1)
        ms -= 1000
    return base, ms


def fmt_datetime(base, frac_digits, frac_value):
    s = base.strftime("%Y-%m-%d %H:%M:%S")
    if frac_value:
        s += "." + str(frac_value).rjust(frac_digits, "0").rstrip("0")
    return s


ISO_RE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,7}))?)?)?$")


def to_datetime(v, col):
    if isinstance(v, dt.datetime):
        return v
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day)
    if isinstance(v, str):
        m = ISO_RE.match(v.strip())
        if m:
            y, mo, d, h, mi, s, f = m.groups()
            us = int((f or "0").ljust(6, "0")[:6])
            try:
                return dt.datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), us)
            except ValueError:
                pass
    raise InsertError(f"Conversion failed when converting {v!r} to {col.sqltype} (column {col.name})")


def canonical(v, col):
    """The canonical text the replaced system's column would hold for value `v`, or None for NULL."""
    if v is None:
        return None
    if isinstance(v, str) and v == "":
        return None  # bulk_insert_strategy._prepare_data_tuples: '' -> NULL
    ty = col.sqltype
    if ty in INT_RANGES:
        if isinstance(v, bool):
            n = int(v)
        elif isinstance(v, int):
            n = v
        elif isinstance(v, (float, Decimal)):
            n = int(v)  # SQL Server truncates toward zero
        elif isinstance(v, str) and re.fullmatch(r"\s*[+-]?\d+\s*", v):
            n = int(v)
        else:
            raise InsertError(f"Conversion failed when converting {v!r} to {ty} (column {col.name})")
        lo, hi = INT_RANGES[ty]
        if not lo <= n <= hi:
            raise InsertError(f"Arithmetic overflow converting {n} to {ty} (column {col.name})")
        return str(n)
    if ty == "bit":
        if isinstance(v, (bool, int, float, Decimal)):
            return "1" if v else "0"
        if isinstance(v, str):
            s = v.strip().upper()
            if s in ("TRUE", "FALSE"):
                return "1" if s == "TRUE" else "0"
            try:
                return "1" if Decimal(s) != 0 else "0"
            except InvalidOperation:
                pass
        raise InsertError(f"Conversion failed when converting {v!r} to bit (column {col.name})")
    if ty in ("decimal", "numeric", "money"):
        p, s = (col.args + (18, 0))[:2] if col.args else (18, 0)
        if ty == "money":
            p, s = 19, 4
        try:
            d = Decimal(repr(v)) if isinstance(v, float) else Decimal(str(v).strip())
        except InvalidOperation:
            raise InsertError(f"Error converting {v!r} to numeric (column {col.name})")
        if not d.is_finite():
            raise InsertError(f"Error converting {v!r} to numeric (column {col.name})")
        q = d.quantize(Decimal(1).scaleb(-s), rounding=ROUND_HALF_UP)
        if len(str(abs(q.to_integral_value(rounding="ROUND_DOWN")))) > p - s and abs(q) >= 1:
            raise InsertError(f"Arithmetic overflow converting {v!r} to decimal({p},{s}) (column {col.name})")
        if q == 0:
            q = abs(q)
        return format(q, "f")
    if ty == "date":
        return to_datetime(v, col).strftime("%Y-%m-%d")
    if ty == "datetime":
        base, ms = sqlserver_datetime_ms(to_datetime(v, col))
        return fmt_datetime(base, 3, ms)
    if ty == "smalldatetime":
        d = to_datetime(v, col)
        base = d.replace(second=0, microsecond=0)
        if d.second >= 30:
            base += dt.timedelta(minutes=1)
        return base.strftime("%Y-%m-%d %H:%M:%S")
    if ty == "datetime2":
        n = col.args[0] if col.args else 7
        d = to_datetime(v, col)
        unit = 10 ** (6 - min(n, 6))
        us = (d.microsecond + unit // 2) // unit * unit
        base = d.replace(microsecond=0)
        if us >= 1_000_000:
            base += dt.timedelta(seconds=1)
            us = 0
        return fmt_datetime(base, 6, us)
    if ty in ("varchar", "nvarchar", "char", "nchar", "text", "ntext", "string"):
        if isinstance(v, bool):
            s = "1" if v else "0"
        elif isinstance(v, dt.datetime):
            s = v.strftime("%b %d %Y %I:%M%p")  # SQL Server's default datetime -> varchar style 0
        else:
            s = str(v)
        if col.args and col.args[0] != "max" and col.args[0] != -1 and len(s) > col.args[0]:
            raise InsertError(
                f"String or binary data would be truncated in column {col.name} ({len(s)} > {col.args[0]} chars)"
            )
        if ty in ("char", "nchar"):
            s = s.rstrip(" ")  # stored blank-padded; canonical text drops the padding (README)
        return s
    raise InsertError(f"unsupported SQL type {ty} (column {col.name})")


def contract_col(mapping):
    """A column definition from the contract alone, for tables the replaced system's DDL does not create."""
    ty = mapping["data_type"].lower()
    length = mapping.get("data_length")
    if ty == "string":
        args = () if length in (None, -1) else (int(length),)
        return Col(mapping["target_column"], "varchar", args, False, None, False, False)
    if ty == "decimal":
        return Col(mapping["target_column"], "decimal", (12, 2), False, None, False, False)
    return Col(mapping["target_column"], ty, (), False, None, False, False)


# ---------------------------------------------------------------- the replayed insert


def replay_insert(mapped, contract_json, schema, enum_ids):
    """Rows (canonical text) as the replaced system's insert would store them, or raise InsertError."""
    order = list(contract_json.get("table_insertion_order", []))
    for t in mapped:
        if t not in order:
            order.append(t)
    contract_cols = {}
    for m in contract_json["mappings"]:
        contract_cols.setdefault(m["target_table"], {}).setdefault(m["target_column"], m)
    out = {}
    for table in order:
        records = mapped.get(table)
        if not records or table == "processing_log":
            continue
        tdef = schema.get(table)
        insert_cols = []
        for r in records:
            for k in r:
                if k not in insert_cols:
                    insert_cols.append(k)

        def coldef(name):
            if tdef is not None:
                if name not in tdef.cols:
                    raise InsertError(f"Invalid column name '{name}' in table {table}")
                return tdef.cols[name]
            if name in contract_cols.get(table, {}):
                return contract_col(contract_cols[table][name])
            return Col(name, "varchar", (), False, None, False, False)

        # Columns in the golden row: the contract's for this table, then any others the insert names.
        shown = list(contract_cols.get(table, {}).keys())
        for c in insert_cols:
            if c not in shown:
                shown.append(c)
        rows = []
        keys_seen = set()
        for r in records:
            row = {}
            for c in shown:
                if c in insert_cols:
                    cd = coldef(c)
                    val = canonical(r.get(c), cd)
                    if val is None and cd.not_null:
                        raise InsertError(f"Cannot insert the value NULL into column '{c}', table '{table}'")
                    if val is not None and cd.enum_fk and int(val) not in enum_ids:
                        raise InsertError(
                            f"FOREIGN KEY violation: {table}.{c} = {val} is not in app_enums"
                        )
                    row[c] = val
                else:
                    cd = tdef.cols.get(c) if tdef is not None else None
                    if cd is None:
                        row[c] = None
                    elif cd.default == "GETUTCDATE":
                        row[c] = "<GETUTCDATE>"  # the time of the insert: not reproducible (README)
                    elif cd.default is not None:
                        row[c] = canonical(cd.default, cd)
                    elif cd.not_null and not cd.identity and not cd.computed:
                        raise InsertError(f"Cannot insert the value NULL into column '{c}', table '{table}'")
                    else:
                        row[c] = None
            if tdef is not None:
                for c, cd in tdef.cols.items():
                    if c in shown or cd.identity or cd.computed:
                        continue
                    if cd.not_null and cd.default is None:
                        raise InsertError(f"Cannot insert the value NULL into column '{c}', table '{table}'")
                for key in [tdef.pk] + tdef.unique:
                    if key and all(k in row for k in key):
                        kv = (tuple(key), tuple(row[k] for k in key))
                        if kv in keys_seen:
                            raise InsertError(f"Violation of PRIMARY KEY/UNIQUE constraint on {table} {dict(zip(*kv))}")
                        keys_seen.add(kv)
            rows.append(row)
        rows.sort(key=row_sort_key)
        out[table] = rows
    return out


def row_sort_key(row):
    # Canonical order: by every column's text in the row's column order, NULL first.
    return [(v is not None, v or "") for v in row.values()]


# ---------------------------------------------------------------- one document through the replaced system


def run_document(components, contract_json, schema, enum_ids, xml):
    validator, parser, mapper = components
    record_id = "golden"
    vr = validator.validate_xml_for_processing(xml, record_id)
    if not vr.is_valid or not vr.can_process:
        return vr.app_id, "failed", f"validation: {vr.validation_errors}", {}
    try:
        root = parser.parse_xml_stream(xml)
        xml_data = parser.extract_elements(root)
    except Exception as e:  # noqa: BLE001 - the worker classifies by exception type; parsing is the only one here
        return vr.app_id, "failed", f"parsing: {e}", {}
    if root is None or not xml_data:
        return vr.app_id, "failed", "parsing: Failed to parse XML or extract elements", {}
    try:
        mapped = mapper.map_xml_to_database(xml_data, vr.app_id, vr.valid_contacts, root)
    except Exception as e:  # noqa: BLE001
        return vr.app_id, "failed", f"mapping: {e}", {}
    if not mapped:
        return vr.app_id, "failed", "mapping: No data mapped from XML", {}
    try:
        tables = replay_insert(mapped, contract_json, schema, enum_ids)
    except InsertError as e:
        return vr.app_id, "failed", f"insertion: {e}", {}
    if sum(len(r) for r in tables.values()) == 0:
        return vr.app_id, "failed", "insertion: No records were inserted into database", {}
    return vr.app_id, "success", None, tables


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", required=True, help="work tree of timothyjmorris/XmlConversion at commit 8103358")
    ap.add_argument("--seed", required=True, help="the shared seed folder (../shared/seed/original)")
    ap.add_argument("--out", required=True, help="output folder (fixtures/golden)")
    ap.add_argument("--only", help="only sample files whose name contains this")
    ap.add_argument(
        "--generated",
        nargs=3,
        metavar=("SHAPE", "SEED", "DIR"),
        help="instead of the samples: the real-shaped documents in DIR (cargo run -p fixtures --example "
        "realshape_dump -- SHAPE N SEED DIR), under SHAPE's contract only, into OUT/gen-SHAPE/",
    )
    args = ap.parse_args()

    repo = Path(args.repo).resolve()
    seed = Path(args.seed).resolve()
    out = Path(args.out)
    sys.path.insert(0, str(repo))
    logging.disable(logging.CRITICAL)
    from xml_extractor.mapping.data_mapper import DataMapper  # noqa: E402
    from xml_extractor.parsing.xml_parser import XMLParser  # noqa: E402
    from xml_extractor.validation.pre_processing_validator import PreProcessingValidator  # noqa: E402

    schema = parse_schema([seed / "schema/create_destination_tables.sql", seed / "schema/create_destination_tables_rl.sql"])
    enum_ids = parse_enum_ids(seed / "schema/insert_enum_values.sql")

    samples = sorted(p for p in (seed / "samples").glob("*.xml"))
    samples += sorted((seed / "samples/reclending").glob("*.xml"))
    if args.only:
        samples = [s for s in samples if args.only in s.name]

    if args.generated:
        run_generated(args, seed, out, schema, enum_ids, (DataMapper, XMLParser, PreProcessingValidator))
        return

    summary = {}
    for key, fname in CONTRACTS.items():
        cpath = seed / "contracts" / fname
        contract_json = json.loads(cpath.read_text(encoding="utf-8"))
        # One set of components per contract, reused across documents exactly as one worker process reuses them.
        components = (
            PreProcessingValidator(mapping_contract_path=str(cpath)),
            XMLParser(),
            DataMapper(mapping_contract_path=str(cpath), log_level="CRITICAL"),
        )
        (out / key).mkdir(parents=True, exist_ok=True)
        counts = {"success": 0, "failed": 0}
        for sample in samples:
            # The replaced system reads the document from a varchar column: no byte-order mark survives there.
            xml = sample.read_text(encoding="utf-8-sig")
            app_id, verdict, reason, tables = run_document(components, contract_json, schema, enum_ids, xml)
            counts[verdict] += 1
            rel = sample.relative_to(seed / "samples").as_posix()
            doc = {
                "source": f"samples/{rel}",
                "contract": f"contracts/{fname}",
                "app_id": int(app_id) if app_id is not None and str(app_id).lstrip("-").isdigit() else app_id,
                "verdict": verdict,
            }
            if reason is not None:
                doc["reason"] = reason
            doc["tables"] = tables
            target = out / key / (sample.name + ".json")
            target.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        summary[key] = counts
    print(json.dumps(summary))


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def run_generated(args, seed, out, schema, enum_ids, classes):
    """Goldens for generated documents: the test regenerates each from (shape, seed, app_id) and checks its bytes
    against `xml_bytes`/`xml_fnv1a64` first, so a changed generator is reported as such, not as a mapping diff."""
    DataMapper, XMLParser, PreProcessingValidator = classes
    shape, gen_seed, folder = args.generated
    cpath = seed / "contracts" / CONTRACTS[shape]
    contract_json = json.loads(cpath.read_text(encoding="utf-8"))
    components = (
        PreProcessingValidator(mapping_contract_path=str(cpath)),
        XMLParser(),
        DataMapper(mapping_contract_path=str(cpath), log_level="CRITICAL"),
    )
    target_dir = out / f"gen-{shape}"
    target_dir.mkdir(parents=True, exist_ok=True)
    counts = {"success": 0, "failed": 0}
    for f in sorted(Path(folder).glob("*.xml"), key=lambda p: int(p.stem)):
        raw = f.read_bytes()
        xml = raw.decode("utf-8-sig")
        app_id, verdict, reason, tables = run_document(components, contract_json, schema, enum_ids, xml)
        counts[verdict] += 1
        doc = {
            "source": f"generated:realshape:{shape}:seed={gen_seed}:app_id={int(f.stem)}",
            "contract": f"contracts/{CONTRACTS[shape]}",
            "app_id": int(app_id) if app_id is not None and str(app_id).lstrip("-").isdigit() else int(f.stem),
            "xml_bytes": len(raw),
            "xml_fnv1a64": fnv1a64(raw),
            "verdict": verdict,
        }
        if reason is not None:
            doc["reason"] = reason
        doc["tables"] = tables
        (target_dir / f"{int(f.stem):08}.json").write_text(
            json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    print(json.dumps({f"gen-{shape}": counts}))


if __name__ == "__main__":
    main()
