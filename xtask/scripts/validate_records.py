#!/usr/bin/env python3
"""Validates ifsock's JSON records against docs/schema/ (JSON Schema 2020-12).

    validate_records.py SCHEMA_DIR --check-schemas
        every SCHEMA_DIR/*.json is a valid 2020-12 schema and its $refs resolve.
    validate_records.py SCHEMA_DIR LOG [--require-coverage]
        every line of LOG ({"command": "watch", "record": {...}}, written by the tests'
        record_json hook, tests/src/lib.rs) validates against its command's schema. With
        --require-coverage (a full run), a schema file that no record exercised fails unless
        ALLOWLIST names it; record types never seen are listed either way.

Needs the `jsonschema` package (PyPI; .ci/run installs it in $IFSOCK_PY_VENV). Exit status 1 on
any failure, with the record, the schema path and the error.
"""
import json
import pathlib
import sys
import urllib.parse

try:
    import jsonschema
    import referencing
    import referencing.jsonschema
except ImportError as e:
    sys.exit(f"validate_records.py: {e} (fix: $IFSOCK_PY_VENV/bin/pip install jsonschema, as .ci/run does)")

# Which schema file covers the records of each command tag (tests/src/lib.rs command_of).
SCHEMA_OF = {
    "sockets": "sockets.json",
    "watch": "watch.json",
    "hung": "hung.json",
    "abort": "abort.json",
    "teardown": "teardown.json",
    "tun": "tun.json",
    "doctor": "doctor.json",
    "journal": "journal.json",
    "agent-journal": "journal.json",
}

# Record types (schema file, branch) the privileged tests cannot produce, with the reason; they
# are listed as never seen, and never fail the coverage check. (file, None): the whole file.
ALLOWLIST = {
    ("journal.json", "receiver_stranded"): "journaled only by `agent --receivers` when a change strands a blocked receiver; "
    "the agent tests run no such agent (watch's receiver_stranded is covered by tests/tests/stranded.rs)",
    ("journal.json", "socket_error"): "journaled when an agent's sock_errors probe sees an error on a socket; no agent test "
    "provokes one on purpose (an agent journals one when another test's socket error happens while it runs; watch's "
    "socket_error is covered by tests/tests/sock_errors.rs)",
}

VALIDATOR = jsonschema.Draft202012Validator
MAX_SHOWN = 20


def registry_of(docs):
    """A registry holding each {uri: schema} under its URI."""
    spec = referencing.jsonschema.DRAFT202012
    return referencing.Registry().with_resources([(u, referencing.Resource.from_contents(s, default_specification=spec)) for u, s in docs.items()])


def load(schema_dir):
    """{file name: (path, schema)} of every *.json in schema_dir, and a registry holding them under their file URIs."""
    schemas = {}
    for path in sorted(pathlib.Path(schema_dir).glob("*.json")):
        schemas[path.name] = (path, json.loads(path.read_text()))
    return schemas, registry_of({p.resolve().as_uri(): s for p, s in schemas.values()})


def compiled(schemas):
    """The same schemas with each field set merged into the record that `allOf`/`$ref`s it, so
    that `unevaluatedProperties: false` becomes `additionalProperties: false`: the same
    verdicts (validate() compares both on a sample of each record type), ~10 times faster
    (jsonschema re-walks every $ref to find the evaluated properties)."""
    docs = {p.resolve().as_uri(): s for p, s in schemas.values()}

    def absolute(node, base):
        if isinstance(node, dict):
            return {k: (urllib.parse.urljoin(base, v) if k == "$ref" and isinstance(v, str) else absolute(v, base)) for k, v in node.items()}
        if isinstance(node, list):
            return [absolute(v, base) for v in node]
        return node

    absolute_docs = {u: absolute(s, u) for u, s in docs.items()}

    def target(ref):
        uri, _, pointer = ref.partition("#")
        node = absolute_docs[uri]
        for part in [p for p in pointer.split("/") if p]:
            node = node[part]
        return node

    def fields_ref(item):
        """The field set an allOf item or a $ref names: a `*_fields` definition."""
        return isinstance(item, dict) and set(item) <= {"$ref", "description"} and item.get("$ref", "").rsplit("/", 1)[-1].endswith("_fields")

    def merge(node):
        if isinstance(node, list):
            return [merge(v) for v in node]
        if not isinstance(node, dict):
            return node
        node = dict(node)
        bases = []
        if "$ref" in node and node["$ref"].rsplit("/", 1)[-1].endswith("_fields"):
            bases.append(node.pop("$ref"))
        if "allOf" in node and all(fields_ref(i) for i in node["allOf"]):
            bases += [i["$ref"] for i in node.pop("allOf")]
        node = {k: merge(v) for k, v in node.items()}
        for ref in bases:
            base = merge(target(ref))
            node["properties"] = {**base.get("properties", {}), **node.get("properties", {})}
            node["required"] = base.get("required", []) + [r for r in node.get("required", []) if r not in base.get("required", [])]
            node.setdefault("type", "object")
        if node.get("unevaluatedProperties") is False and not ({"allOf", "anyOf", "oneOf", "$ref", "if"} & set(node)):
            del node["unevaluatedProperties"]
            node["additionalProperties"] = False
        return node

    return registry_of({u: merge(s) for u, s in absolute_docs.items()})


def validator_for(schemas, registry, name):
    path = schemas[name][0]
    return VALIDATOR({"$ref": path.resolve().as_uri()}, registry=registry, format_checker=VALIDATOR.FORMAT_CHECKER)


def check_schemas(schemas, registry):
    """Fails on a schema that is not valid 2020-12, or a $ref that does not resolve."""
    bad = 0
    for name, (path, schema) in schemas.items():
        try:
            if schema.get("$schema") != "https://json-schema.org/draft/2020-12/schema":
                raise jsonschema.SchemaError(f"$schema is {schema.get('$schema')!r}, not 2020-12")
            VALIDATOR.check_schema(schema)
            # Resolves every $ref: validating a value walks each reachable subschema's refs.
            resolver = registry.resolver(base_uri=path.resolve().as_uri())
            for ref in refs(schema):
                resolver.lookup(ref)
        except (jsonschema.SchemaError, referencing.exceptions.Unresolvable) as e:
            bad += 1
            print(f"schema: {path}: not a valid 2020-12 schema: {e}")
    return bad


def refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def branches(schema):
    """The record types of a schema: each top-level allOf if/then (and else) target's $defs name,
    else the top-level $ref's; with the `if` that selects it."""
    out = []
    for b in schema.get("allOf", []):
        if "if" in b:
            out.append((b["if"], b["then"]["$ref"].rsplit("/", 1)[-1], True))
            if "else" in b:
                out.append((b["if"], b["else"]["$ref"].rsplit("/", 1)[-1], False))
    if not out and "$ref" in schema:
        out.append((True, schema["$ref"].rsplit("/", 1)[-1], True))
    return out


CONDITIONS = {}


def branch_of(schema, record):
    """(record type, the $ref of its schema) of a record, or (None, None) when no branch selects it."""
    for b in schema.get("allOf", []):
        if "if" in b:
            cond = CONDITIONS.setdefault(json.dumps(b["if"], sort_keys=True), VALIDATOR(b["if"]))
            target = b["then"] if cond.is_valid(record) else b.get("else")
            if target is not None:
                return target["$ref"].rsplit("/", 1)[-1], target["$ref"]
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1], schema["$ref"]
    return None, None


def parse_log(text):
    """[(line number, command, record)] of a record log; raises ValueError on a line that is not one whole entry."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
            out.append((n, entry["command"], entry["record"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"line {n} of the record log is not one {{\"command\", \"record\"}} entry ({e}): {line[:200]!r}") from e
    return out


SAMPLE = 5


def validate(schemas, registry, log_path, require_coverage):
    entries = parse_log(pathlib.Path(log_path).read_text())
    fast = compiled(schemas)
    validators = {}
    originals = {}
    sampled = {}
    seen = {name: set() for name in schemas if name != "common.json"}
    failed = 0
    for n, command, record in entries:
        name = SCHEMA_OF.get(command)
        if name is None or name not in schemas:
            failed += 1
            if failed <= MAX_SHOWN:
                print(f"schema: line {n}: no schema for command {command!r} (add it to SCHEMA_OF in {__file__} and docs/schema/README.md): {json.dumps(record)[:500]}")
            continue
        v = validators.setdefault(name, validator_for(schemas, fast, name))
        errors = list(v.iter_errors(record))
        branch, target = branch_of(schemas[name][1], record)
        # The first records of each type, and every failing one, also against the schemas as
        # written: a failure is reported as they say it, and the faster form is held to them.
        if errors or sampled.get((name, branch), 0) < SAMPLE:
            sampled[(name, branch)] = sampled.get((name, branch), 0) + 1
            slow = list(originals.setdefault(name, validator_for(schemas, registry, name)).iter_errors(record))
            if bool(slow) != bool(errors):
                print(f"schema: FAIL line {n} ({command}): validate_records.py's merged schemas say {'invalid' if errors else 'valid'}, docs/schema says {'invalid' if slow else 'valid'} (fix compiled() in {__file__})")
                failed += 1
                continue
            errors = slow
        # A failed subschema keeps none of its properties as evaluated, so unevaluatedProperties
        # then lists every field: the other error (a missing field) is the one to show.
        error = jsonschema.exceptions.best_match([e for e in errors if e.validator != "unevaluatedProperties"] or errors)
        if error is not None:
            failed += 1
            if failed <= MAX_SHOWN:
                where = "/".join(str(p) for p in error.absolute_path) or "(the record)"
                schema_path = "/".join(str(p) for p in error.absolute_schema_path)
                print(f"schema: FAIL line {n} ({command}): {schemas[name][0]}: at {where}: {error.message}")
                print(f"  schema: {target or '(no record type matched)'} in {name}, keyword path {schema_path}")
                print(f"  record: {json.dumps(record)[:2000]}")
            continue
        seen[name].add(branch)
    if failed > MAX_SHOWN:
        print(f"schema: ... and {failed - MAX_SHOWN} more failures")
    print(f"schema: {len(entries)} records validated against {len(seen)} schemas ({failed} failed)")
    if not require_coverage:
        print("schema: coverage of the schema files not checked (a filtered run)")
        return failed
    uncovered = 0
    for name, got in sorted(seen.items()):
        never = [b for _, b, _ in branches(schemas[name][1]) if b not in got]
        if not got:
            why = ALLOWLIST.get((name, None))
            if why:
                print(f"schema: {name}: no record (allowed: {why})")
            else:
                uncovered += 1
                print(f"schema: FAIL {name}: no test produced a record of it (a test that reads its command's --json output through tests/src/lib.rs, or an ALLOWLIST entry with the reason)")
            continue
        for b in never:
            why = ALLOWLIST.get((name, b))
            print(f"schema: {name}: record type {b} never seen" + (f" (allowed: {why})" if why else " (not in ALLOWLIST: a test of it is missing, or add the reason)"))
    return failed + uncovered


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    schemas, registry = load(argv[1])
    if not schemas:
        sys.exit(f"validate_records.py: no *.json in {argv[1]}")
    bad = check_schemas(schemas, registry)
    if argv[2:] == ["--check-schemas"]:
        print(f"schema: {len(schemas)} schema files are valid 2020-12" if not bad else f"schema: {bad} invalid schema files")
        return 1 if bad else 0
    if bad:
        return 1
    try:
        return 1 if validate(schemas, registry, argv[2], "--require-coverage" in argv[3:]) else 0
    except ValueError as e:
        print(f"schema: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
