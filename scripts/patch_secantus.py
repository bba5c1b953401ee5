"""Apply writ's test-only speed fix to a SecantusDB 0.7.0b3 install.

SecantusDB's findAndModify builds its write filter as {"_id": id, "$and": [query]}.
`_try_index_id_keys` refuses every filter with a top-level `$` key, so that write
falls back to a full collection scan (2 ms/op at 100 docs, 29 ms at 3000).
This patch lets it use the `_id` point lookup when `_id` sits beside `$`
operators. `matches()` still applies the whole filter to the candidates
afterwards, so query semantics are unchanged. Idempotent; refuses other versions.
"""
import importlib.metadata
import pathlib
import sys

PINNED = "0.7.0b3"
MARK = "# writ-patch: _id beside $and"
OLD = """        if any(f.startswith("$") for f in filter):
            return None
        # Fast path: equality on _id alone"""
NEW = """        if any(f.startswith("$") for f in filter):
            """ + MARK + """
            if "_id" in filter and not self._is_timeseries(db, coll):
                id_keys = _id_point_lookup_keys(filter["_id"])
                if id_keys is not None:
                    rids = [self._doc_recordid(db, coll, k) for k in id_keys]
                    return [r for r in rids if r is not None]
            return None
        # Fast path: equality on _id alone"""


def main() -> int:
    version = importlib.metadata.version("secantusdb")
    if version != PINNED:
        print(f"patch_secantus: secantusdb {version} is not the pinned {PINNED}; not patching", file=sys.stderr)
        return 1
    import secantus.storage as storage

    path = pathlib.Path(storage.__file__)
    text = path.read_text()
    if MARK in text:
        return 0
    if text.count(OLD) != 1:
        print(f"patch_secantus: anchor not found in {path}; not patching", file=sys.stderr)
        return 1
    path.write_text(text.replace(OLD, NEW))
    for cached in path.parent.glob("__pycache__/storage.*.pyc"):
        cached.unlink()
    print(f"patch_secantus: patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
