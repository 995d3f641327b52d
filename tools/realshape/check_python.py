#!/usr/bin/env python3
"""Runs the replaced system (XmlConversion 8103358) on a folder of generated documents and prints its verdicts:
the check that real-shaped documents are documents the replaced system itself processes.

python3 tools/realshape/check_python.py --repo /tmp/xmlconv --seed ../shared/seed/original cc|rl FOLDER
(FOLDER from `cargo run -p fixtures --example realshape_dump -- cc|rl N SEED FOLDER`; set-up as in tools/golden/README.md)
"""

import argparse
import collections
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "golden"))
import generate as g  # noqa: E402  (the golden generator's replay of the replaced system's insert)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--seed", required=True)
    ap.add_argument("contract", choices=sorted(g.CONTRACTS))
    ap.add_argument("folder")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.repo).resolve()))
    logging.disable(logging.CRITICAL)
    from xml_extractor.mapping.data_mapper import DataMapper
    from xml_extractor.parsing.xml_parser import XMLParser
    from xml_extractor.validation.pre_processing_validator import PreProcessingValidator

    seed = Path(args.seed)
    schema = g.parse_schema([seed / "schema/create_destination_tables.sql", seed / "schema/create_destination_tables_rl.sql"])
    enum_ids = g.parse_enum_ids(seed / "schema/insert_enum_values.sql")
    cpath = seed / "contracts" / g.CONTRACTS[args.contract]
    cj = json.loads(cpath.read_text(encoding="utf-8"))
    comp = (
        PreProcessingValidator(mapping_contract_path=str(cpath)),
        XMLParser(),
        DataMapper(mapping_contract_path=str(cpath), log_level="CRITICAL"),
    )
    verdicts = collections.Counter()
    rows = collections.Counter()
    for f in sorted(Path(args.folder).glob("*.xml")):
        _, verdict, reason, tables = g.run_document(comp, cj, schema, enum_ids, f.read_text(encoding="utf-8-sig"))
        verdicts[(verdict, (reason or "")[:160])] += 1
        for t, r in tables.items():
            rows[t] += len(r)
    for (verdict, reason), n in verdicts.most_common():
        print(f"{n:6} {verdict} {reason}")
    print("rows:", json.dumps(dict(rows)))


if __name__ == "__main__":
    main()
