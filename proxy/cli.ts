#!/usr/bin/env node
// driftguard's command line: run, check, demo, token, inject. Exit codes: 0 ok,
// 1 invalid rules or failed start, 2 usage error.

import { parseArgs, type ParseArgsConfig } from 'node:util';
import { MAX_GRACE_MS, parseDuration } from './rules/durations.ts';
import { OVERRIDE_KEYS, type Overrides } from './rules/overrides.ts';
// The rules loader (ajv, yaml) and jose are imported by the commands that use them, so that
// --help and usage errors answer at once.

const USAGE: Record<string, string> = {
  main: `driftguard — the enforcement sidecar for APIs consumed by machines

Usage: driftguard <command> [options]

Commands:
  run     --config FILE     run the sidecar with a rules file
  check   FILE              validate a rules file (exit 0, or 1 with every problem)
  demo                      run the embedded default (rules/demo.yaml) with a demo API
  token   --key FILE ...    mint a signed test token for trying rules by hand
  inject  --tls-cert ...    serve the Kubernetes sidecar-injection webhook

Run 'driftguard <command> --help' for a command's options.`,
  run: `Usage: driftguard run --config FILE [--listen HOST:PORT] [--upstream URL] [--admin HOST:PORT]
                             [--probes HOST:PORT] [--grace DURATION] [--drain-delay DURATION]

Runs the sidecar. --listen, --upstream, --admin and --probes (or DRIFTGUARD_LISTEN,
DRIFTGUARD_UPSTREAM, DRIFTGUARD_ADMIN, DRIFTGUARD_PROBES) override proxy.listen, proxy.upstream,
proxy.admin and proxy.probes from the rules file.
The rules are reloaded on SIGHUP, on POST /reload to the admin listener, and when the file
(or the Kubernetes ConfigMap symlink it is mounted through) changes; an invalid file keeps
the last good rules. SIGTERM stops accepting, lets in-flight requests finish within --grace
(default 20s, or DRIFTGUARD_GRACE), flushes telemetry and exits 0. With --drain-delay (or
DRIFTGUARD_DRAIN_DELAY; default 0s) it first goes on taking requests for that long, not ready
and closing each connection after its answer, while the pod's endpoints are withdrawn.
Exit: 1 when the rules are invalid or a listener cannot start.`,
  check: `Usage: driftguard check FILE [--listen HOST:PORT] [--upstream URL] [--admin HOST:PORT] [--probes HOST:PORT]

Validates FILE against rules/schema.json and the cross-field rules, as run takes it: --listen,
--upstream, --admin and --probes (or DRIFTGUARD_LISTEN, DRIFTGUARD_UPSTREAM, DRIFTGUARD_ADMIN,
DRIFTGUARD_PROBES, which the injector sets in the pod) override the file's, each named on the
valid line. Prints every problem as FILE:LINE:COLUMN: FIELD: MESSAGE. Exit 0 when valid, 1
otherwise.`,
  demo: `Usage: driftguard demo [--rules FILE]

Starts a demo API and a JWKS on loopback, then driftguard with rules/demo.yaml in front of
them, and prints curl lines (with freshly minted tokens) for an allow, a warn and each deny.
--rules runs a copy of rules/demo.yaml instead (e.g. with other ports when 15080, 15081,
15090 or 15021 are taken).`,
  token: `Usage: driftguard token --key FILE --sub SUBJECT [--iss ISSUER] [--aud AUDIENCE]
                        [--scope 'a b'] [--contract VERSION] [--ttl 15m] [--claim name=value]...

Mints a JWT signed with the private JWK in FILE (the demo writes one to .demo/signing-key.json,
or under the temporary directory where it cannot write there: it prints where).
--iss and --aud default to the demo's issuer and audience. Prints the token on stdout.`,
};

/** A write to stdout failed with other than EPIPE (a full disk): the command's answer was lost. */
let stdoutFailed = false;
let stdoutGuarded = false;

/**
 * What check, token and --help print: its reader may be gone (`driftguard check f | true`,
 * `| head -1`), and with no listener the EPIPE was an unhandled 'error' with Node's stack and
 * exit 1, for a valid file. EPIPE is ignored (nobody is left to read; the exit code is the
 * command's); any other write error is said in one line, exit 1. run and demo do not print
 * through here: run.ts has its own listeners, and the decision log on stdout its own.
 */
function print(text: string): void {
  if (!stdoutGuarded) {
    stdoutGuarded = true;
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE' || stdoutFailed) return;
      stdoutFailed = true;
      process.stderr.write(`driftguard: cannot write to stdout: ${err.code ?? err.message}\n`);
      process.exitCode = 1;
    });
  }
  process.stdout.write(text);
}

/**
 * A stop duration from its flag, else its DRIFTGUARD_* variable (an empty one is unset, as for
 * the other DRIFTGUARD_* variables), else the default; or the exit code of its refusal. Blamed
 * on where the value came from: a bad flag is a usage error (2, with the usage); a bad variable
 * is invalid configuration (1), and a manifest author must be told it is the variable, not a
 * flag the pod spec lacks.
 */
function stopDuration(flag: string | undefined, name: 'grace' | 'drain-delay', fallback: string): number | { ms: number; text: string; source: string; bad(message: string): number } {
  const variableName = `DRIFTGUARD_${name.toUpperCase().replace('-', '_')}`;
  const variable = process.env[variableName] || undefined;
  const text = flag ?? variable ?? fallback;
  const source = flag === undefined && variable !== undefined ? variableName : `--${name}`;
  const bad = (message: string): number => {
    if (source.startsWith('--')) return usageError(message, 'run');
    process.stderr.write(`driftguard: invalid configuration\n${message}\n`);
    return 1;
  };
  let ms: number;
  try { ms = parseDuration(text); } catch (err) { return bad(`${source}: ${(err as Error).message}`); }
  if (ms > MAX_GRACE_MS) return bad(`${source} ${text}: must be at most 24d`);
  return { ms, text, source, bad };
}

function usageError(message: string, command: string): number {
  process.stderr.write(`driftguard: ${message}\n\n${USAGE[command] ?? USAGE.main}\n`);
  return 2;
}

type Values = Record<string, string | boolean | string[] | undefined>;

/** --listen, --upstream, --admin, --probes: run's and check's. */
const OVERRIDE_FLAGS = Object.fromEntries(OVERRIDE_KEYS.map((key) => [key, { type: 'string' as const }]));

/**
 * The overrides of proxy.listen, upstream, admin and probes: the flag, else the variable; an
 * empty variable is unset (a manifest's `value: ""`), not an override to refuse. A problem with
 * one of these names the flag or the variable, not the file's line.
 */
function overridesOf(values: Values): Overrides {
  const overrides: { -readonly [K in keyof Overrides]: Overrides[K] } = {};
  const from: Record<string, string> = {};
  for (const key of OVERRIDE_KEYS) {
    const variable = `DRIFTGUARD_${key.toUpperCase()}`;
    const flag = values[key] as string | undefined;
    const value = flag ?? (process.env[variable] || undefined);
    if (value === undefined) continue;
    overrides[key] = value;
    from[key] = flag !== undefined ? `--${key}` : variable;
  }
  overrides.from = from;
  return overrides;
}

function parse(argv: string[], options: ParseArgsConfig['options'], allowPositionals = false): { values: Values; positionals: string[] } {
  const { values, positionals } = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals, strict: true });
  return { values: values as Values, positionals };
}

function reportRulesError(err: unknown): number {
  if ((err as { code?: unknown } | null)?.code === 'ERR_RULES_INVALID') {
    process.stderr.write(`driftguard: invalid rules\n${(err as Error).message}\n`);
    return 1;
  }
  // A listener that could not bind (StartError): the message names the port and its field.
  if ((err as { code?: unknown } | null)?.code === 'ERR_START_FAILED') {
    process.stderr.write(`driftguard: cannot start\n${(err as Error).message}\n`);
    return 1;
  }
  // The environment's settings (OTEL_* variables): named in the message, not in the rules file.
  if ((err as { code?: unknown } | null)?.code === 'ERR_CONFIG_INVALID') {
    process.stderr.write(`driftguard: invalid configuration\n${(err as Error).message}\n`);
    return 1;
  }
  throw err;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    print(USAGE.main + '\n');
    return command ? 0 : 2;
  }
  try {
    switch (command) {
      case 'check': {
        const { values, positionals } = parse(rest, OVERRIDE_FLAGS, true);
        if (values.help) { print(USAGE.check + '\n'); return 0; }
        if (positionals.length !== 1) return usageError('check takes exactly one FILE', 'check');
        const { loadRules } = await import('./rules/load.ts');
        // The feature modules' own checks too, as `run` has them: without them `check` passed
        // files that `run` refused (a delegation subject not in the registry, say).
        await import('./lifecycle/config.ts');
        await import('./telemetry/config.ts');
        try {
          // As `run` takes it in the pod: the injector sets every DRIFTGUARD_* override, and a
          // file shared by many deployments may leave proxy.upstream to it.
          const overrides = overridesOf(values);
          const rules = loadRules(positionals[0]!, overrides, { pipe: true });
          // What start-up reads beside the rules: the revocation list file and journal.
          const { checkLifecycleFiles } = await import('./lifecycle/index.ts');
          checkLifecycleFiles(rules, Date.now());
          // Said, so that a variable left in a CI job's environment cannot pass a file unnoticed.
          const taken = Object.entries(overrides.from ?? {}).map(([key, from]) => `proxy.${key} from ${from}`);
          print(`${rules.source}: valid (rules ${rules.hash}, ${rules.contract.operations.length} operations, ${rules.consumers.registry.size} consumers, contract version ${rules.contract.current}${taken.length ? `; ${taken.join(', ')}` : ''})\n`);
          return 0;
        } catch (err) { return reportRulesError(err); }
      }
      case 'run': {
        const { values } = parse(rest, {
          config: { type: 'string', short: 'c' }, ...OVERRIDE_FLAGS, grace: { type: 'string' }, 'drain-delay': { type: 'string' },
        });
        if (values.help) { print(USAGE.run + '\n'); return 0; }
        if (!values.config) return usageError('run needs --config FILE', 'run');
        const overrides = overridesOf(values);
        const grace = stopDuration(values.grace as string | undefined, 'grace', '20s');
        if (typeof grace === 'number') return grace;
        const delay = stopDuration(values['drain-delay'] as string | undefined, 'drain-delay', '0s');
        if (typeof delay === 'number') return delay;
        // One stop deadline covers both (a Node.js timer, at most about 24.8 days).
        if (grace.ms + delay.ms > MAX_GRACE_MS) return delay.bad(`${delay.source} ${delay.text} and ${grace.source} ${grace.text}: together must be at most 24d`);
        const { run } = await import('./run.ts');
        try { return await run(values.config as string, overrides, { graceMs: grace.ms, drainDelayMs: delay.ms }); } catch (err) { return reportRulesError(err); }
      }
      case 'demo': {
        const { values } = parse(rest, { rules: { type: 'string' } });
        if (values.help) { print(USAGE.demo + '\n'); return 0; }
        if (values.rules) process.env.DRIFTGUARD_DEMO_RULES = values.rules as string;
        const { demo } = await import('./run.ts');
        try { return await demo(); } catch (err) { return reportRulesError(err); }
      }
      case 'token': {
        const { values } = parse(rest, {
          key: { type: 'string' }, sub: { type: 'string' }, iss: { type: 'string' }, aud: { type: 'string' },
          scope: { type: 'string' }, contract: { type: 'string' }, ttl: { type: 'string' }, claim: { type: 'string', multiple: true },
        });
        if (values.help) { print(USAGE.token + '\n'); return 0; }
        if (!values.key || !values.sub) return usageError('token needs --key FILE and --sub SUBJECT', 'token');
        let lifetimeSeconds: number;
        try { lifetimeSeconds = Math.round(parseDuration((values.ttl as string | undefined) ?? '15m') / 1000); } catch (err) { return usageError((err as Error).message, 'token'); }
        const claims: Record<string, unknown> = {};
        for (const c of (values.claim as string[] | undefined) ?? []) {
          const eq = c.indexOf('=');
          if (eq < 1) return usageError(`--claim ${c}: use name=value`, 'token');
          const v = c.slice(eq + 1);
          try { claims[c.slice(0, eq)] = JSON.parse(v); } catch { claims[c.slice(0, eq)] = v; }
        }
        const { readPrivateJwk, mint } = await import('./identity/mint.ts');
        let key;
        try { key = readPrivateJwk(values.key as string); } catch (err) { process.stderr.write(`driftguard: ${(err as Error).message}\n`); return 1; }
        let token: string;
        try {
          token = await mint({
            key, subject: values.sub as string,
            issuer: (values.iss as string | undefined) ?? 'https://issuer.demo.local',
            audience: (values.aud as string | undefined) ?? 'driftguard-demo',
            scopes: ((values.scope as string | undefined) ?? '').split(' ').filter(Boolean),
            ...(values.contract ? { contract: values.contract as string } : {}),
            lifetimeSeconds, claims,
          });
        } catch (err) {
          // A key WebCrypto refuses for its algorithm (a P-384 key without alg, say): named, no stack.
          process.stderr.write(`driftguard: cannot sign with the key in ${values.key as string}: ${(err as Error).message}\n`);
          return 1;
        }
        print(token + '\n');
        return 0;
      }
      case 'inject': {
        // Loaded only here, like every command's modules: the sidecar never loads the webhook.
        const { main: inject } = await import('./inject/cli.ts');
        return await inject(rest);
      }
      default:
        return usageError(`unknown command "${command}"`, 'main');
    }
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) return usageError((err as Error).message, command);
    throw err;
  }
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = stdoutFailed ? 1 : code; },
  (err: Error) => { process.stderr.write(`driftguard: ${err.stack ?? err.message}\n`); process.exitCode = 1; },
);
