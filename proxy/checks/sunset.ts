// A sunset operation is gone for everybody, human or automation, with or without a
// credential: 410 before any identity work is spent on the request.

import type { Check } from '../pipeline/types.ts';

export function sunset(): Check {
  return {
    name: 'sunset',
    run(ctx) {
      const d = ctx.operation?.deprecated;
      if (d?.sunsetMs !== undefined && d.sunsetMs <= ctx.now) {
        return {
          reason: 'operation-sunset',
          detail: `${ctx.operation!.id} was sunset on ${new Date(d.sunsetMs).toISOString()}`,
          sunset: new Date(d.sunsetMs).toISOString(),
          // Its replacement comes with the refusal's problem (server.ts denial, movingOn): not
          // one whose own deprecation would refuse the caller.
        };
      }
      return undefined;
    },
  };
}
