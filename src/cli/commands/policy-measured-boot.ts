import { readFileSync, writeFileSync } from 'node:fs'
import type { Command } from 'commander'
import {
  createReferenceState,
  EventLogFormatError,
  parseEventLog,
  ReferenceStateError,
} from '../../evidence/mb/index.ts'

/** `keylime policy create measured-boot`. */
export function registerMeasuredBootPolicyCommands(_policy: Command, create: Command): void {
  create
    .command('measured-boot')
    .description('Create a measured-boot reference state (mb policy) from a binary UEFI event log')
    .requiredOption('-e, --eventlog-file <file>', 'binary event log (binary_bios_measurements)')
    .option('-i, --without-secureboot', 'allow a log whose Secure Boot is disabled')
    .option('-o, --output <file>', 'write the policy to this file instead of stdout')
    .action((opts: { eventlogFile: string; withoutSecureboot?: boolean; output?: string }) => {
      try {
        const log = parseEventLog(readFileSync(opts.eventlogFile))
        const refstate = createReferenceState(log, { allowSecureBootOff: opts.withoutSecureboot === true })
        const text = `${JSON.stringify(refstate, null, 2)}\n`
        if (opts.output) writeFileSync(opts.output, text)
        else process.stdout.write(text)
      } catch (e) {
        if (e instanceof EventLogFormatError || e instanceof ReferenceStateError) {
          process.stderr.write(`keylime policy create measured-boot: ${e.message}\n`)
          process.exitCode = 2
          return
        }
        if (
          (e as NodeJS.ErrnoException).code === 'ENOENT' ||
          (e as NodeJS.ErrnoException).code === 'EACCES'
        ) {
          process.stderr.write(`keylime policy create measured-boot: ${(e as Error).message}\n`)
          process.exitCode = 1
          return
        }
        throw e
      }
    })
}
