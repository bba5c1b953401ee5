/**
 * `setup()`: one {@link WritClient} for the process, and every backtest-kit
 * persistence adapter registered to use it.
 */
import { createRequire } from "node:module";
import { join } from "node:path";

import { createAdapters } from "./adapters.js";
import { WritClient } from "./client.js";
import type { WritConfig } from "./config.js";
import { WritConfigError } from "./errors.js";
import type { AdapterClasses, PersistAdapters } from "./types.js";

let current: WritClient | undefined;

function loadBacktestKit(): PersistAdapters {
  const hint =
    "install backtest-kit (an optional peer dependency of this package), or pass its adapters: " +
    "setup(config, { PersistSignalAdapter, PersistScheduleAdapter, ... }) with the objects imported from backtest-kit";
  let mod: any;
  try {
    mod = createRequire(join(process.cwd(), "__writ_setup__.js"))("backtest-kit");
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "MODULE_NOT_FOUND") throw new WritConfigError(`backtest-kit was not found from ${process.cwd()}; ${hint}`);
    throw new WritConfigError(`backtest-kit could not be loaded (${(e as Error).message}); ${hint}`);
  }
  if (!mod || typeof mod.PersistSignalAdapter?.usePersistSignalAdapter !== "function") {
    throw new WritConfigError(`the backtest-kit module found has no PersistSignalAdapter; ${hint}`);
  }
  return mod as PersistAdapters;
}

/** Registers each adapter class with backtest-kit's `PersistXAdapter.usePersistXAdapter`. */
export function registerAdapters(adapters: PersistAdapters, classes: AdapterClasses): void {
  const need = <K extends keyof PersistAdapters>(name: K): NonNullable<PersistAdapters[K]> => {
    const a = adapters[name];
    if (!a) throw new WritConfigError(`setup(): adapters.${String(name)} is missing; pass every Persist*Adapter of backtest-kit`);
    return a as NonNullable<PersistAdapters[K]>;
  };
  need("PersistSignalAdapter").usePersistSignalAdapter(classes.Signal);
  need("PersistScheduleAdapter").usePersistScheduleAdapter(classes.Schedule);
  need("PersistStrategyAdapter").usePersistStrategyAdapter(classes.Strategy);
  need("PersistRiskAdapter").usePersistRiskAdapter(classes.Risk);
  need("PersistPartialAdapter").usePersistPartialAdapter(classes.Partial);
  need("PersistBreakevenAdapter").usePersistBreakevenAdapter(classes.Breakeven);
  need("PersistCandleAdapter").usePersistCandleAdapter(classes.Candle);
  need("PersistStorageAdapter").usePersistStorageAdapter(classes.Storage);
  need("PersistNotificationAdapter").usePersistNotificationAdapter(classes.Notification);
  need("PersistLogAdapter").usePersistLogAdapter(classes.Log);
  need("PersistMeasureAdapter").usePersistMeasureAdapter(classes.Measure);
  need("PersistIntervalAdapter").usePersistIntervalAdapter(classes.Interval);
  need("PersistMemoryAdapter").usePersistMemoryAdapter(classes.Memory);
  need("PersistRecentAdapter").usePersistRecentAdapter(classes.Recent);
  need("PersistStateAdapter").usePersistStateAdapter(classes.State);
  need("PersistSessionAdapter").usePersistSessionAdapter(classes.Session);
  // Dictionary arrived in backtest-kit 20.x.
  adapters.PersistDictionaryAdapter?.usePersistDictionaryAdapter(classes.Dictionary);
}

/**
 * Creates the process's writ client from `config` (or the `WRIT_*`
 * environment) and registers the 17 adapters with backtest-kit. `adapters`
 * defaults to `require("backtest-kit")` resolved from the working directory.
 * Returns the client (close it with {@link dispose}).
 */
export function setup(config: Partial<WritConfig> = {}, adapters?: PersistAdapters): WritClient {
  const target = adapters ?? loadBacktestKit();
  const client = new WritClient(config);
  registerAdapters(target, createAdapters(client));
  current = client;
  return client;
}

/**
 * Connects the client of the last {@link setup} and waits until the daemon
 * has applied every write made before this process started.
 */
export async function waitForInit(): Promise<void> {
  if (!current) throw new WritConfigError("call setup() before waitForInit()");
  await current.ready();
  await current.sync({ once: true });
}

/** Closes the client of the last {@link setup}. */
export async function dispose(): Promise<void> {
  const c = current;
  current = undefined;
  await c?.close();
}
