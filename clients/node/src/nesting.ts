// How deep a BSON document nests objects and arrays. The daemon refuses a
// key or payload nested more than MongoDB's 100 levels (docs/protocol.md,
// reason `payload`); the client measures the bytes it is about to send, so
// such a write fails at once with WritKeyError instead of being dead-lettered.

/** The deepest nesting of objects and arrays below a document's top level that writ accepts (MongoDB's limit). */
export const MAX_NESTING = 100;

/**
 * Levels of objects and arrays (and code-with-scope scopes) below the top level of the BSON
 * document `buf`, counted no further than `limit + 1`. `buf` must be well-formed BSON, as the
 * `bson` package's `serialize` writes it.
 */
export function bsonNesting(buf: Uint8Array, limit = MAX_NESTING): number {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const int32 = (at: number) => view.getInt32(at, true);
  const cstringEnd = (at: number) => {
    while (buf[at] !== 0) at++;
    return at + 1;
  };
  // The deepest level under the document at byte `at`, which sits at `level`.
  const doc = (at: number, level: number): number => {
    const last = at + int32(at) - 1; // its terminating NUL
    let deepest = level;
    let i = at + 4;
    while (i < last && deepest <= limit) {
      const type = buf[i];
      i = cstringEnd(i + 1);
      switch (type) {
        case 0x03: // document
        case 0x04: // array
          deepest = Math.max(deepest, level + 1 > limit ? level + 1 : doc(i, level + 1));
          i += int32(i);
          break;
        case 0x0f: // code with scope: total length, code string, scope document
          deepest = Math.max(deepest, level + 1 > limit ? level + 1 : doc(i + 8 + int32(i + 4), level + 1));
          i += int32(i);
          break;
        case 0x01: // double
        case 0x09: // datetime
        case 0x11: // timestamp
        case 0x12: // int64
          i += 8;
          break;
        case 0x02: // string
        case 0x0d: // code
        case 0x0e: // symbol
          i += 4 + int32(i);
          break;
        case 0x05: // binary: length, subtype, bytes
          i += 5 + int32(i);
          break;
        case 0x07: // ObjectId
          i += 12;
          break;
        case 0x08: // boolean
          i += 1;
          break;
        case 0x0b: // regex: pattern, options
          i = cstringEnd(cstringEnd(i));
          break;
        case 0x0c: // DBPointer: string, ObjectId
          i += 4 + int32(i) + 12;
          break;
        case 0x10: // int32
          i += 4;
          break;
        case 0x13: // decimal128
          i += 16;
          break;
        case 0x06: // undefined
        case 0x0a: // null
        case 0x7f: // max key
        case 0xff: // min key
          break;
        default:
          throw new Error(`not BSON: element type 0x${type.toString(16)} at byte ${i}`);
      }
    }
    return deepest;
  };
  return doc(0, 0);
}
