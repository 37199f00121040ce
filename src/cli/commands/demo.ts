import { type Command, Option } from 'commander'

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description(
      'Local end-to-end demo: swtpm, registrar, verifier, agent and tenant; attestation passes, then tampering is detected and revoked',
    )
    .option('--keep', 'leave everything running at the end and print how to use the tenant against it', false)
    .option('--dir <dir>', 'work directory (default: a new temporary directory)')
    .addOption(new Option('--quote-interval <seconds>', 'seconds between quotes').default('1'))
    .addOption(new Option('--step-timeout <seconds>', 'give up on any step after this long').default('90'))
    .action(async (o: { keep: boolean; dir?: string; quoteInterval: string; stepTimeout: string }) => {
      const { runDemo } = await import('../../demo/demo.ts')
      process.exitCode = await runDemo({
        keep: o.keep,
        ...(o.dir === undefined ? {} : { dir: o.dir }),
        quoteInterval: Number(o.quoteInterval),
        stepTimeout: Number(o.stepTimeout),
      })
    })
}
