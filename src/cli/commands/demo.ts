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
      '--push',
      'push mode (API 3.0): the verifier in mode push and a push agent that opens no port',
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
    .action(
      async (o: {
        keep: boolean
        push: boolean
        dir?: string
        quoteInterval: number
        stepTimeout: number
      }) => {
        const run = o.push
          ? (await import('../../demo/push-demo.ts')).runPushDemo
          : (await import('../../demo/demo.ts')).runDemo
        process.exitCode = await run({
          keep: o.keep,
          ...(o.dir === undefined ? {} : { dir: o.dir }),
          quoteInterval: o.quoteInterval,
          stepTimeout: o.stepTimeout,
        })
      },
    )
}
