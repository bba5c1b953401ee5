"""Generates protocol_v1.json: an independent (Python) implementation of the
canonical key, FNV-1a 64 and the Redis key names of docs/protocol.md. The Rust
test tests/protocol_vectors.rs checks the library against these vectors.
Run: python3 tests/vectors/gen.py > tests/vectors/protocol_v1.json"""
import json

def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) % (1 << 64)
    return h

CASES = [
    ("signal", ["symbol", "strategyName", "exchangeName"], {"symbol": "BTCUSDT", "strategyName": "trend", "exchangeName": "binance"}, 8),
    ("signal", ["symbol", "strategyName", "exchangeName"], {"exchangeName": "binance", "strategyName": "trend", "symbol": "ETHUSDT"}, 8),
    ("candle", ["symbol", "interval", "timestamp"], {"symbol": "BTCUSDT", "interval": "1m", "timestamp": 1700000000000}, 8),
    ("risk", ["riskName", "exchangeName"], {"riskName": "conservative", "exchangeName": "bybit"}, 16),
    ("measure", ["bucket", "entryKey"], {"bucket": "pnl \"daily\"", "entryKey": "ünï/código"}, 4),
    ("measure", ["bucket", "entryKey"], {"bucket": "b", "entryKey": -42}, 1),
    # Boolean key fields (backtest-kit's `backtest` flag): JSON true/false.
    ("storage-items", ["backtest", "signalId"], {"backtest": True, "signalId": "sig-1"}, 8),
    ("notification-items", ["backtest", "notificationId"], {"backtest": False, "notificationId": "n-7"}, 8),
    ("recent-items", ["symbol", "strategyName", "exchangeName", "frameName", "backtest"],
     {"symbol": "BTCUSDT", "strategyName": "trend", "exchangeName": "binance", "frameName": "1d", "backtest": False}, 8),
    # Escaping: only '"', '\\' and U+0000-U+001F are escaped (short forms for
    # \b \f \n \r \t, else lowercase \u00xx); '<', '/', U+007F and non-ASCII
    # stay as they are.
    ("measure-items", ["bucket", "entryKey"], {"bucket": "tab\tnl\ncr\rbs\\q\"", "entryKey": "ctl\u0001\u001f</x>\u007f\u2028é"}, 8),
    ("candle-items", ["exchangeName", "symbol", "interval", "timestamp"],
     {"exchangeName": "binance", "symbol": "BTCUSDT", "interval": "1m", "timestamp": 1700000040000}, 8),
    # Number rules: an integral value in any JSON spelling (2.0, 1e3, -0.0) is
    # that integer, written in plain decimal; the edges of the range both
    # clients accept exactly (|n| <= 2^53 - 1).
    ("measure-items", ["bucket", "entryKey"], {"bucket": "num", "entryKey": 2}, 8, '{"bucket": "num", "entryKey": 2.0}'),
    ("measure-items", ["bucket", "entryKey"], {"bucket": "num", "entryKey": 1000}, 8, '{"bucket": "num", "entryKey": 1e3}'),
    ("measure-items", ["bucket", "entryKey"], {"bucket": "num", "entryKey": 0}, 8, '{"bucket": "num", "entryKey": -0.0}'),
    ("measure-items", ["bucket", "entryKey"], {"bucket": "num", "entryKey": 9007199254740991}, 8),
    ("measure-items", ["bucket", "entryKey"], {"bucket": "num", "entryKey": -9007199254740991}, 8),
]

out = []
for case in CASES:
    coll, fields, key, parts = case[:4]
    raw = case[4] if len(case) > 4 else None
    canonical = json.dumps([key[f] for f in fields], separators=(",", ":"), ensure_ascii=False)
    h = fnv1a64(coll.encode() + b"\x00" + canonical.encode())
    p = h % parts
    out.append({
        "collection": coll,
        "key_fields": fields,
        "key_json": raw if raw is not None else json.dumps(key, ensure_ascii=False),
        "canonical": canonical,
        "fnv1a64": f"{h:016x}",
        "partitions": parts,
        "partition": p,
        "stream": f"writ:{{p{p}}}:in",
        "cache_key": f"writ:{{p{p}}}:c:{coll}:{canonical}",
    })
print(json.dumps(out, indent=2, ensure_ascii=False))
