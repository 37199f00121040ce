import { Command } from 'commander'
import { registerAgentCommands } from './commands/agent.ts'
import { registerCaCommands } from './commands/ca.ts'
import { registerDemoCommand } from './commands/demo.ts'
import { registerDevtoolsCommands } from './commands/devtools.ts'
import { registerEventlogCommand } from './commands/eventlog.ts'
import { registerImaCommands } from './commands/ima.ts'
import { registerPolicyCommands } from './commands/policy.ts'
import { registerRegistrarCommand } from './commands/registrar.ts'
import { normalizeTenantArgv, registerTenantCommands } from './commands/tenant.ts'
import { registerTpmCommands } from './commands/tpm.ts'
import { registerVerifierCommand } from './commands/verifier.ts'

export function buildProgram(): Command {
  const program = new Command('keylime')
    .description('Keylime TS: TPM-based remote attestation (agent, registrar, verifier, tenant, tools)')
    .version('0.1.0')
    .showHelpAfterError()
    // Options of a command apply only before its subcommand (`agent --tpm X` vs `agent ima-emulate --tpm Y`).
    .enablePositionalOptions()
  registerAgentCommands(program)
  registerRegistrarCommand(program)
  registerVerifierCommand(program)
  registerTenantCommands(program)
  registerCaCommands(program)
  registerPolicyCommands(program)
  registerTpmCommands(program)
  registerImaCommands(program)
  registerEventlogCommand(program)
  registerDemoCommand(program)
  registerDevtoolsCommands(program)
  return program
}

const argv =
  process.argv[2] === 'tenant'
    ? [...process.argv.slice(0, 3), ...normalizeTenantArgv(process.argv.slice(3))]
    : process.argv
await buildProgram().parseAsync(argv)
