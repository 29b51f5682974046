// proxy.* values given outside the rules file: command-line flags and DRIFTGUARD_* variables.
// Apart from the loader so that the command line can name them without loading it.

/** The proxy fields a flag (--listen) or a variable (DRIFTGUARD_LISTEN) may set. */
export const OVERRIDE_KEYS = ['listen', 'upstream', 'admin', 'probes'] as const;
export type OverrideKey = (typeof OVERRIDE_KEYS)[number];

export type Overrides = { readonly [K in OverrideKey]?: string } & {
  /** Where each came from (`--listen`, `DRIFTGUARD_LISTEN`): a problem with it names that, not a line of the file. */
  readonly from?: { readonly [K in OverrideKey]?: string };
};
