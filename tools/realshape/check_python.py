import sys, json, logging, collections
from pathlib import Path
sys.path.insert(0, '/work/wt/golden/tools/golden')
import generate as g
sys.path.insert(0, '/tmp/xmlconv'); logging.disable(logging.CRITICAL)
from xml_extractor.mapping.data_mapper import DataMapper
from xml_extractor.parsing.xml_parser import XMLParser
from xml_extractor.validation.pre_processing_validator import PreProcessingValidator
seed = Path('/work/shared/seed/original')
schema = g.parse_schema([seed/'schema/create_destination_tables.sql', seed/'schema/create_destination_tables_rl.sql'])
enum_ids = g.parse_enum_ids(seed/'schema/insert_enum_values.sql')
key, folder = sys.argv[1], sys.argv[2]
cpath = seed/'contracts'/g.CONTRACTS[key]
cj = json.loads(cpath.read_text())
comp = (PreProcessingValidator(mapping_contract_path=str(cpath)), XMLParser(), DataMapper(mapping_contract_path=str(cpath), log_level='CRITICAL'))
res = collections.Counter(); tables = collections.Counter()
for f in sorted(Path(folder).glob('*.xml')):
    x = f.read_text(encoding='utf-8-sig')
    app_id, verdict, reason, t = g.run_document(comp, cj, schema, enum_ids, x)
    res[(verdict, (reason or '')[:140])] += 1
    for k, v in t.items(): tables[k] += len(v)
for k, v in res.most_common(): print(v, k)
print(dict(tables))
