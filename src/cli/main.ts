/**
 * `keylime`: the command tree. Registering a command defines its flags only; each action imports its own modules when
 * it runs, so `keylime --help` or a tenant command never loads the verifier. Failures of every command go through
 * `reportFailure` (one line, one exit status table).
 */
import { readFileSync } from 'node:fs'
import { Command, CommanderError } from 'commander'
import { registerAgentCommands } from './commands/agent.ts'
import { registerCaCommands } from './commands/ca.ts'
import { registerConfigCommands } from './commands/config.ts'
import { registerDbCommands } from './commands/db.ts'
import { registerDemoCommand } from './commands/demo.ts'
import { registerDevtoolsCommands } from './commands/devtools.ts'
import { registerEventlogCommand } from './commands/eventlog.ts'
import { registerImaCommands } from './commands/ima.ts'
import { registerPolicyCommands } from './commands/policy.ts'
import { registerRegistrarCommand } from './commands/registrar.ts'
import { normalizeTenantArgv, registerTenantCommands } from './commands/tenant.ts'
import { registerTpmCommands } from './commands/tpm.ts'
import { registerVerifierCommand } from './commands/verifier.ts'
import { EXIT, EXIT_STATUS_HELP, reportFailure } from './errors.ts'

/** The package version (package.json sits two folders up from both src/cli and dist/cli). */
function packageVersion(): string {
  const json = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string
  }
  return json.version
}

export function buildProgram(): Command {
  const program = new Command('keylime')
    .description('Keylime TS: TPM-based remote attestation (agent, registrar, verifier, tenant, tools)')
    .version(packageVersion())
    // Usage errors are thrown, not printed: `run` prints them as one line with the command's name.
    .exitOverride()
    .configureOutput({ outputError: () => {} })
    // Options of a command apply only before its subcommand (`agent --tpm X` vs `agent ima-emulate --tpm Y`).
    .enablePositionalOptions()
    .addHelpText(
      'after',
      `
Anywhere on the command line:
  --debug                    print the stack of a failure (also KEYLIME_DEBUG=1)
  --log-format json|pretty   service logs as JSON lines (default) or readable lines (also KEYLIME_LOG_FORMAT)
KEYLIME_LOG_LEVEL sets the log level: trace, debug, info (default), warn, error, fatal, silent.

${EXIT_STATUS_HELP}`,
    )
  registerAgentCommands(program)
  registerRegistrarCommand(program)
  registerVerifierCommand(program)
  registerTenantCommands(program)
  registerCaCommands(program)
  registerPolicyCommands(program)
  registerTpmCommands(program)
  registerImaCommands(program)
  registerEventlogCommand(program)
  registerConfigCommands(program)
  registerDbCommands(program)
  registerDemoCommand(program)
  registerDevtoolsCommands(program)
  return program
}

/** The subcommand names at the start of `args` (`policy create runtime`), for messages. */
function commandPath(program: Command, args: readonly string[]): string {
  const names: string[] = []
  let current = program
  for (const arg of args) {
    const sub = current.commands.find((c) => c.name() === arg || c.aliases().includes(arg))
    if (sub === undefined) break
    names.push(sub.name())
    current = sub
  }
  return names.join(' ') || 'keylime'
}

/** Runs the command line `argv` (node, script, args...) and sets process.exitCode; never throws. */
export async function run(argv: readonly string[]): Promise<void> {
  let args = argv.slice(2)
  if (args.includes('--debug')) {
    args = args.filter((a) => a !== '--debug')
    process.env.KEYLIME_DEBUG = '1'
  }
  const formatAt = args.findIndex((a) => a === '--log-format' || a.startsWith('--log-format='))
  if (formatAt !== -1) {
    const arg = args[formatAt] as string
    const value = arg.includes('=') ? arg.slice(arg.indexOf('=') + 1) : args[formatAt + 1]
    args = [...args.slice(0, formatAt), ...args.slice(formatAt + (arg.includes('=') ? 1 : 2))]
    if (value !== 'json' && value !== 'pretty') {
      process.stderr.write(
        `keylime: --log-format ${value ?? ''}: expected json or pretty (see keylime --help)\n`,
      )
      process.exitCode = EXIT.usage
      return
    }
    // The environment carries it to the logger, and to the processes `keylime demo` starts.
    process.env.KEYLIME_LOG_FORMAT = value
  }
  if (args[0] === 'tenant') args = ['tenant', ...normalizeTenantArgv(args.slice(1))]
  const program = buildProgram()
  const command = commandPath(program, args).replace(/^keylime$/, '')
  try {
    await program.parseAsync(args, { from: 'user' })
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.exitCode === 0) return
      // commander.help: a command group run without its subcommand; the help is already on stderr.
      if (err.code !== 'commander.help') {
        const name = command === '' ? '' : ` ${command}`
        process.stderr.write(
          `keylime${name}: ${err.message.replace(/^error: /, '')} (see keylime${name} --help)\n`,
        )
      }
      process.exitCode = EXIT.usage
      return
    }
    reportFailure(command || 'keylime', err)
  }
}
