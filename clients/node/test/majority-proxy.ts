/**
 * A MongoDB wire proxy that models a replica set whose majority lags its
 * primary, in front of a one-node server (SecantusDB has no replicas).
 *
 * It forwards bytes both ways. Each client→server message is parsed (16-byte
 * header: int32 LE messageLength, requestID, responseTo, opCode); an OP_MSG
 * (opCode 2013: uint32 flagBits, then sections; kind 0 = one BSON document,
 * kind 1 = int32 size, cstring identifier, BSON documents) that is a `find`
 * at `readConcern.level` "majority" whose filter mentions `marker` anywhere
 * (equality, `$in`, `$or`, ...) is, while lagging, not forwarded: the proxy
 * answers it itself with an empty first batch, as a majority that has not
 * caught up with the primary would. A driver's findOne is a `find` with
 * limit 1. Everything else passes through unchanged, in order.
 * {@link MajorityProxy.catchUp} stops the lag; {@link MajorityProxy.hidden}
 * counts the reads it answered.
 */
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { deserialize, Long, serialize, type Document } from "bson";

const OP_MSG = 2013;
/** OP_MSG flagBits: a CRC-32C follows the sections. */
const CHECKSUM_PRESENT = 1;

export class MajorityProxy {
  /** Majority `find`s of the marker answered empty by the proxy. */
  hidden = 0;
  private lagging = true;
  private nextRequestId = 0x5a000000;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    /** A mongodb:// URI of the proxy (directConnection, as the harness's). */
    readonly uri: string,
    private readonly marker: string,
  ) {}

  /**
   * Listens on a free loopback port in front of the single host of
   * `targetUri`; hides majority reads whose filter mentions `marker`.
   */
  static async start(targetUri: string, marker: string): Promise<MajorityProxy> {
    const target = new URL(targetUri);
    const host = target.hostname;
    const port = Number(target.port || 27017);
    let proxy: MajorityProxy | undefined;
    const server = createServer((down) => proxy!.serve(down, host, port));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const { port: own } = server.address() as AddressInfo;
    proxy = new MajorityProxy(server, `mongodb://127.0.0.1:${own}/?directConnection=true&retryWrites=false`, marker);
    return proxy;
  }

  /** `find`s of the marker held (neither forwarded nor answered) while stalled. */
  held = 0;
  private stalled = false;

  /** From now on a `find` of the marker, at any read concern, is held for good: a server that stopped answering. */
  stall(): void {
    this.stalled = true;
  }

  /** The majority has caught up: every read passes through from now on. */
  catchUp(): void {
    this.lagging = false;
  }

  /** Stops listening and drops every connection. */
  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }

  private serve(down: Socket, host: string, port: number): void {
    const up = connect(port, host);
    this.sockets.add(down).add(up);
    let buf: Buffer = Buffer.alloc(0);
    down.on("data", (d: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      // Whole messages only: one may span chunks, and one chunk may hold several.
      while (buf.length >= 4) {
        const len = buf.readInt32LE(0);
        if (len < 16) {
          // Not the MongoDB wire protocol: give up parsing, pass the rest on.
          up.write(buf);
          buf = Buffer.alloc(0);
          return;
        }
        if (buf.length < len) break;
        const msg = buf.subarray(0, len);
        buf = buf.subarray(len);
        if (this.stalled && this.findsMarker(msg)) {
          this.held++;
          continue;
        }
        const reply = this.lagging ? this.answer(msg) : undefined;
        if (reply) {
          this.hidden++;
          down.write(reply);
        } else {
          up.write(msg);
        }
      }
    });
    up.on("data", (d: Buffer) => down.write(d));
    const close = () => {
      down.destroy();
      up.destroy();
      this.sockets.delete(down);
      this.sockets.delete(up);
    };
    down.on("error", close).on("close", close);
    up.on("error", close).on("close", close);
  }

  /** Whether `msg` is a `find` whose filter mentions the marker. */
  private findsMarker(msg: Buffer): boolean {
    const body = commandOf(msg);
    return !!body && typeof body.find === "string" && mentions(body.filter, this.marker);
  }

  /** The proxy's own reply to `msg` if it is a majority find of the marker, else undefined. */
  private answer(msg: Buffer): Buffer | undefined {
    const body = commandOf(msg);
    if (!body) return undefined;
    const requestId = msg.readInt32LE(4);
    if (typeof body.find !== "string") return undefined;
    if (body.readConcern?.level !== "majority" || !mentions(body.filter, this.marker)) return undefined;
    const reply = serialize({ cursor: { firstBatch: [], id: Long.fromNumber(0), ns: `${body.$db}.${body.find}` }, ok: 1 });
    const header = Buffer.alloc(21);
    header.writeInt32LE(16 + 4 + 1 + reply.length, 0);
    header.writeInt32LE(this.nextRequestId++, 4);
    header.writeInt32LE(requestId, 8);
    header.writeInt32LE(OP_MSG, 12);
    header.writeUInt32LE(0, 16); // flagBits
    header.writeUInt8(0, 20); // section kind 0
    return Buffer.concat([header, reply]);
  }
}

/** The command document of an OP_MSG, else undefined. */
function commandOf(msg: Buffer): Document | undefined {
  if (msg.readInt32LE(12) !== OP_MSG) return undefined;
  const flags = msg.readUInt32LE(16);
  const end = msg.length - (flags & CHECKSUM_PRESENT ? 4 : 0);
  let body: Document | undefined;
  for (let at = 20; at < end; ) {
    const kind = msg[at++];
    if (kind === 0) {
      const size = msg.readInt32LE(at);
      body = deserialize(msg.subarray(at, at + size));
      at += size;
    } else if (kind === 1) {
      at += msg.readInt32LE(at); // the size counts itself, the identifier and the documents
    } else {
      return undefined; // a section kind this proxy does not know: pass it on
    }
  }
  return body;
}

/** Whether `value` (a filter) holds a string containing `marker`, at any depth. */
function mentions(value: unknown, marker: string): boolean {
  if (typeof value === "string") return value.includes(marker);
  if (Array.isArray(value)) return value.some((v) => mentions(v, marker));
  if (value && typeof value === "object") return Object.values(value).some((v) => mentions(v, marker));
  return false;
}
