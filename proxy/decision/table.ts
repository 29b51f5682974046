// Renders the reason table as the README's Markdown table, so the docs are generated from
// the one table in reasons.ts and a test can compare the two.
// Usage: node proxy/decision/table.ts  (prints the table)

import { REASONS, type ReasonCode } from './reasons.ts';

export function reasonTableMarkdown(): string {
  const rows = (Object.keys(REASONS) as ReasonCode[]).map((code) => {
    const r = REASONS[code];
    return `| \`${code}\` | ${r.status} | ${r.title} | ${r.action.replace(/\|/g, '\\|')} |`;
  });
  return ['| reason | status | meaning | what the caller should do |', '| --- | --- | --- | --- |', ...rows].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) process.stdout.write(reasonTableMarkdown() + '\n');
