import { Argument, type Command } from 'commander'
import { EXIT_STATUS_HELP } from '../errors.ts'

const COMPONENTS = ['verifier', 'registrar', 'tenant', 'ca', 'agent'] as const

export function registerConfigCommands(program: Command): void {
  const config = program
    .command('config')
    .description(
      'Sample configuration files and the configuration reference, generated from the option schemas',
    )
    .addHelpText('after', `\n${EXIT_STATUS_HELP}`)
  config
    .command('sample')
    .description('print a complete configuration file with every option at its default')
    .addArgument(new Argument('<component>', 'which file').choices(COMPONENTS))
    .action(async (component: (typeof COMPONENTS)[number]) => {
      const { renderSampleConfig } = await import('../config-docs.ts')
      process.stdout.write(renderSampleConfig(component))
    })
  config
    .command('reference')
    .description('print the configuration reference (Markdown)')
    .action(async () => {
      const { renderConfigReference } = await import('../config-docs.ts')
      process.stdout.write(renderConfigReference())
    })
}
