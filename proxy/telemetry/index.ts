// Decision telemetry: spans, metrics, decision log, recent decisions. (Issue 3.)

import type { Rules } from '../rules/types.ts';
import type { Feature, Log } from '../features.ts';

export async function telemetry(_rules: Rules, _log: Log): Promise<Feature> {
  return {};
}
