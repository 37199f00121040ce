import { Argument, type Command } from 'commander'
import { CliError, EXIT, EXIT_STATUS_HELP } from '../errors.ts'

const COMPONENTS = ['verifier', 'registrar', 'tenant', 'ca', 'agent'] as const
const UPGRADABLE = ['verifier', 'registrar', 'tenant', 'ca'] as const

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
    .command('upgrade')
    .description(
      "bring an upstream Keylime configuration file (keylime.conf of 6.x, or a 2.x file) to today's options; " +
        'reports renamed options and the ones Keylime TS does not read',
    )
    .addArgument(new Argument('<component>', 'which file').choices(UPGRADABLE))
    .option('--input <file>', 'the file to upgrade (default: /etc/keylime/<component>.conf)')
    .option('--output <file>', 'where to write the upgraded file (default: standard output)')
    .action(async (component: (typeof UPGRADABLE)[number], opts: { input?: string; output?: string }) => {
      const { readFileSync, writeFileSync } = await import('node:fs')
      const { upgradeConfigText, CURRENT_CONFIG_VERSION } = await import('../../config/upgrade.ts')
      const { renderUpgradedConfig } = await import('../config-docs.ts')
      const schemas = {
        verifier: (await import('../../config/verifier.ts')).verifierSchema,
        registrar: (await import('../../config/registrar.ts')).registrarSchema,
        tenant: (await import('../../config/tenant.ts')).tenantSchema,
        ca: (await import('../../config/ca.ts')).caSchema,
      }
      const input = opts.input ?? `/etc/keylime/${component}.conf`
      let text: string
      try {
        text = readFileSync(input, 'utf8')
      } catch (err) {
        throw new CliError(`cannot read ${input}: ${(err as Error).message}`, EXIT.usage)
      }
      const up = upgradeConfigText(component, schemas[component], text, input)
      const out = renderUpgradedConfig(
        component,
        up.sections,
        [
          `# ${component}.conf for Keylime TS, upgraded by \`keylime config upgrade\` from ${input} (version ${up.fromVersion}).`,
        ],
        CURRENT_CONFIG_VERSION,
      )
      if (opts.output) writeFileSync(opts.output, out, { mode: 0o600 })
      else process.stdout.write(out)
      const report = [`${input}: version ${up.fromVersion} → ${CURRENT_CONFIG_VERSION}`]
      for (const r of up.renamed) report.push(`renamed: ${r}`)
      for (const u of up.unknown) report.push(`not read by Keylime TS (left out): ${u}`)
      process.stderr.write(`${report.join('\n')}\n`)
    })
  config
    .command('reference')
    .description('print the configuration reference (Markdown)')
    .action(async () => {
      const { renderConfigReference } = await import('../config-docs.ts')
      process.stdout.write(renderConfigReference())
    })
}
