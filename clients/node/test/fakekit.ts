/**
 * A stand-in for backtest-kit's adapter registry: captures the Ctor each
 * `usePersistXAdapter` receives, and calls instances the way backtest-kit
 * does (one instance per context, built with `Reflect.construct(Ctor, args)`,
 * `waitForInit(true)` before the first call of a context, `waitForInit(false)`
 * before every later one).
 */
import type { PersistAdapters } from "../src/types.js";

export const DOMAINS = [
  "Signal", "Schedule", "Strategy", "Risk", "Partial", "Breakeven", "Candle", "Storage", "Notification",
  "Log", "Measure", "Interval", "Memory", "Recent", "State", "Session", "Dictionary",
] as const;
export type Domain = (typeof DOMAINS)[number];

export class FakeKit {
  readonly ctors: Partial<Record<Domain, new (...args: any[]) => any>> = {};
  readonly adapters: PersistAdapters;
  private readonly instances = new Map<string, any>();
  /** Every waitForInit call: [domain, context, initial]. */
  readonly inits: [Domain, string, boolean][] = [];

  constructor() {
    const a: Record<string, unknown> = {};
    for (const d of DOMAINS) {
      a[`Persist${d}Adapter`] = {
        [`usePersist${d}Adapter`]: (Ctor: new (...args: any[]) => any) => {
          this.ctors[d] = Ctor;
          this.clear();
        },
      };
    }
    this.adapters = a as unknown as PersistAdapters;
  }

  /** Drops every instance (backtest-kit's recovery: the next call constructs anew). */
  clear(): void {
    this.instances.clear();
  }

  private async instance(domain: Domain, args: unknown[]): Promise<any> {
    const Ctor = this.ctors[domain];
    if (!Ctor) throw new Error(`no adapter registered for ${domain}`);
    const id = `${domain}:${JSON.stringify(args)}`;
    const initial = !this.instances.has(id);
    if (initial) this.instances.set(id, Reflect.construct(Ctor, args));
    const inst = this.instances.get(id);
    this.inits.push([domain, id, initial]);
    await inst.waitForInit(initial);
    return inst;
  }

  /** Calls `method` of the context's instance. */
  async call(domain: Domain, args: unknown[], method: string, ...margs: unknown[]): Promise<any> {
    const inst = await this.instance(domain, args);
    if (typeof inst[method] !== "function") throw new Error(`${domain} adapter has no method ${method}`);
    return inst[method](...margs);
  }

  /** Drains an AsyncGenerator method of the context's instance. */
  async list(domain: Domain, args: unknown[], method: string): Promise<any[]> {
    const inst = await this.instance(domain, args);
    const gen = inst[method]();
    if (typeof gen?.[Symbol.asyncIterator] !== "function" || typeof gen.next !== "function") {
      throw new Error(`${domain}.${method} did not return an AsyncGenerator`);
    }
    const out: any[] = [];
    for await (const x of gen) out.push(x);
    return out;
  }

  /** Calls a synchronous method (dispose) and returns its result as is. */
  async callSync(domain: Domain, args: unknown[], method: string): Promise<unknown> {
    const inst = await this.instance(domain, args);
    return inst[method]();
  }
}
