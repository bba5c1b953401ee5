/**
 * Stand-ins for the two imports of the published `@backtest-kit/mongo` build
 * (test/vendor/backtest-kit-mongo-20.1.0) that cannot be installed here (see
 * its NOTICE.md): `backtest-kit` and `di-factory`. `test/official-package.ts`
 * maps both specifiers to this module.
 *
 * - `backtest-kit`: the adapter registry, as a {@link FakeKit} whose
 *   `usePersistXAdapter` captures the official classes (and which then calls
 *   them as backtest-kit does), and `intervalStepMs`.
 * - `di-factory`: `factory(Class)(...args)`, a subclass whose constructor
 *   passes `args` on (the build's `BaseMap("signal_cache", -1)`,
 *   `BaseCRUD(SignalModel)`).
 */
import { DOMAINS, FakeKit } from "./fakekit.js";

/** The official package's adapter classes, once its `setup()` ran. */
export const officialKit = new FakeKit();

const registry = officialKit.adapters as unknown as Record<string, unknown>;
for (const d of DOMAINS) {
  if (!registry[`Persist${d}Adapter`]) throw new Error(`FakeKit has no Persist${d}Adapter`);
}
export const PersistSignalAdapter = registry.PersistSignalAdapter;
export const PersistScheduleAdapter = registry.PersistScheduleAdapter;
export const PersistStrategyAdapter = registry.PersistStrategyAdapter;
export const PersistRiskAdapter = registry.PersistRiskAdapter;
export const PersistPartialAdapter = registry.PersistPartialAdapter;
export const PersistBreakevenAdapter = registry.PersistBreakevenAdapter;
export const PersistCandleAdapter = registry.PersistCandleAdapter;
export const PersistStorageAdapter = registry.PersistStorageAdapter;
export const PersistNotificationAdapter = registry.PersistNotificationAdapter;
export const PersistLogAdapter = registry.PersistLogAdapter;
export const PersistMeasureAdapter = registry.PersistMeasureAdapter;
export const PersistIntervalAdapter = registry.PersistIntervalAdapter;
export const PersistMemoryAdapter = registry.PersistMemoryAdapter;
export const PersistRecentAdapter = registry.PersistRecentAdapter;
export const PersistStateAdapter = registry.PersistStateAdapter;
export const PersistSessionAdapter = registry.PersistSessionAdapter;
export const PersistDictionaryAdapter = registry.PersistDictionaryAdapter;

const STEP_MS: Record<string, number> = {
  "1m": 60_000,
  "3m": 180_000,
  "5m": 300_000,
  "15m": 900_000,
  "30m": 1_800_000,
  "1h": 3_600_000,
  "2h": 7_200_000,
  "4h": 14_400_000,
  "6h": 21_600_000,
  "8h": 28_800_000,
};

/** backtest-kit's candle interval in milliseconds. */
export function intervalStepMs(interval: string): number {
  const ms = STEP_MS[interval];
  if (ms === undefined) throw new Error(`official-stubs: no step for interval ${interval}`);
  return ms;
}

/** di-factory's `factory`: binds a class's constructor arguments. */
export function factory<T extends new (...args: any[]) => object>(Base: T): (...bound: unknown[]) => T {
  return (...bound: unknown[]) =>
    class extends Base {
      constructor(..._ignored: any[]) {
        super(...bound);
      }
    };
}
