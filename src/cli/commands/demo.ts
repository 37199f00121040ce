import { type Command, Option } from 'commander'
import { seconds } from '../args.ts'

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description(
      'Local end-to-end demo: swtpm, registrar, verifier, agent and tenant; attestation passes, then tampering is detected and revoked',
    )
    .option(
      '--keep',
      'leave everything running at the end and print how to use the tenant against it (keeps the files)',
      false,
    )
    .option(
      '--dir <dir>',
      'new or empty work directory, kept afterwards (default: a temporary one, removed at the end)',
    )
    .addOption(
      new Option('--quote-interval <seconds>', 'seconds between quotes').argParser(seconds).default(1),
    )
    .addOption(
      new Option('--step-timeout <seconds>', 'give up on any step after this long')
        .argParser(seconds)
        .default(90),
    )
    .action(async (o: { keep: boolean; dir?: string; quoteInterval: number; stepTimeout: number }) => {
      const { runDemo } = await import('../../demo/demo.ts')
      process.exitCode = await runDemo({
        keep: o.keep,
        ...(o.dir === undefined ? {} : { dir: o.dir }),
        quoteInterval: o.quoteInterval,
        stepTimeout: o.stepTimeout,
      })
    })
}
