import { readFileSync, writeFileSync } from 'node:fs'
import type { Command } from 'commander'
import { CliError, EXIT, step } from '../errors.ts'

/** `keylime policy create measured-boot`. */
export function registerMeasuredBootPolicyCommands(_policy: Command, create: Command): void {
  create
    .command('measured-boot')
    .description('Create a measured-boot reference state (mb policy) from a binary UEFI event log')
    .requiredOption('-e, --eventlog-file <file>', 'binary event log (binary_bios_measurements)')
    .option('-i, --without-secureboot', 'allow a log whose Secure Boot is disabled')
    .option('-o, --output <file>', 'write the policy to this file instead of stdout')
    .action(async (opts: { eventlogFile: string; withoutSecureboot?: boolean; output?: string }) => {
      const bytes = await step(`reading ${opts.eventlogFile}`, () => readFileSync(opts.eventlogFile))
      const { createReferenceState, EventLogFormatError, parseEventLog, ReferenceStateError } = await import(
        '../../evidence/mb/index.ts'
      )
      let refstate: ReturnType<typeof createReferenceState>
      try {
        refstate = createReferenceState(parseEventLog(bytes), {
          allowSecureBootOff: opts.withoutSecureboot === true,
        })
      } catch (e) {
        if (e instanceof EventLogFormatError) {
          throw new CliError(`${opts.eventlogFile}: not a valid event log: ${e.message}`, EXIT.usage)
        }
        if (e instanceof ReferenceStateError) throw new CliError(e.message, EXIT.usage)
        throw e
      }
      const text = `${JSON.stringify(refstate, null, 2)}\n`
      if (opts.output) {
        const out = opts.output
        await step(`writing ${out}`, () => writeFileSync(out, text))
      } else process.stdout.write(text)
    })
}
