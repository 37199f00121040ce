import { readFileSync } from 'node:fs'
import type { Command } from 'commander'
import { CliError, EXIT, EXIT_STATUS_HELP, step } from '../errors.ts'

/** Text rendering close to `tpm2_eventlog`: one block per event, then the replayed PCRs. */
function printText(doc: Record<string, unknown>): string {
  const lines: string[] = [`format: ${String(doc.format)}`, `events: ${String(doc.events)}`]
  for (const ev of doc.events_detail as Record<string, unknown>[]) {
    lines.push(`- EventNum: ${String(ev.EventNum)}`)
    lines.push(`  PCRIndex: ${String(ev.PCRIndex)}`)
    lines.push(`  EventType: ${String(ev.EventType)}`)
    if (Array.isArray(ev.Digests)) {
      lines.push('  Digests:')
      for (const d of ev.Digests as { AlgorithmId: string; Digest: string }[]) {
        lines.push(`    - ${d.AlgorithmId}: ${d.Digest}`)
      }
    }
    lines.push(`  EventSize: ${String(ev.EventSize)}`)
    const payload = ev.SpecID ?? ev.Event
    const text = typeof payload === 'string' ? JSON.stringify(payload) : JSON.stringify(payload, null, 2)
    lines.push(`  ${ev.SpecID ? 'SpecID' : 'Event'}: ${text.replace(/\n/g, '\n  ')}`)
  }
  lines.push('pcrs:')
  for (const [bank, values] of Object.entries(doc.pcrs as Record<string, Record<string, string>>)) {
    lines.push(`  ${bank}:`)
    for (const [pcr, hex] of Object.entries(values)) lines.push(`    ${pcr.padStart(2)} : 0x${hex}`)
  }
  return `${lines.join('\n')}\n`
}

export function registerEventlogCommand(program: Command): void {
  program
    .command('eventlog')
    .description('Parse a binary UEFI/TCG boot event log, print its events and the replayed PCR values')
    .argument('<log>', 'binary event log, e.g. /sys/kernel/security/tpm0/binary_bios_measurements')
    .option('--json', 'print one JSON object {format, events, pcrs, boot_aggregates, events_detail}')
    .addHelpText('after', `\n${EXIT_STATUS_HELP}`)
    .action(async (file: string, opts: { json?: boolean }) => {
      const bytes = await step(`reading ${file}`, () => readFileSync(file))
      const { EventLogFormatError, eventLogToJson, parseEventLog } = await import(
        '../../evidence/mb/index.ts'
      )
      try {
        const doc = eventLogToJson(parseEventLog(bytes))
        process.stdout.write(opts.json ? `${JSON.stringify(doc)}\n` : printText(doc))
      } catch (e) {
        if (!(e instanceof EventLogFormatError)) throw e
        throw new CliError(
          `${file}: not a valid event log: ${e.message}`,
          EXIT.usage,
          'give a binary UEFI event log',
        )
      }
    })
}
